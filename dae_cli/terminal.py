"""What ``dae`` lets Prefect and MLflow print: their INFO lines only with ``--verbose``.

Only the terminal is quieted: Prefect's loggers keep INFO, so flow and task logs still
reach the Prefect API (and UI); Prefect's flow and task engines, which log a failure
with its traceback, are left out of the terminal unless ``--verbose``, because ``dae``
ends with its own one-line error instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from types import TracebackType

# Prefect's run engines: a failure there is reported by ``dae`` itself.
_ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _WarningsOutsideRunEngines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not record.name.startswith(_ENGINE_LOGGERS)


@contextlib.contextmanager
def mlflow_warnings_only(verbose: bool) -> Iterator[None]:
    """MLflow's logger at WARNING for the block unless ``verbose`` (it logs, e.g., each new
    SQLite store's migration at INFO). Imports MLflow, which sets its logger up then."""
    import mlflow  # noqa: F401

    logger = logging.getLogger("mlflow")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class QuietTerminal:
    """Unless ``verbose``, for the block: Prefect's console handler limited to warnings from
    outside the run engines and, once MLflow is imported (``libraries_loaded``), MLflow's
    logger to warnings. ``restore=False`` keeps it so after the block, for a process that
    ends there (Prefect stops its temporary server at exit and says so at INFO)."""

    def __init__(self, verbose: bool, restore: bool = True) -> None:
        self.verbose, self.restore = verbose, restore
        self._filter = _WarningsOutsideRunEngines()
        self._consoles: list[logging.Handler] = []
        self._mlflow = contextlib.ExitStack()

    def __enter__(self) -> QuietTerminal:
        from prefect.logging.configuration import ensure_logging_setup
        from prefect.logging.handlers import PrefectConsoleHandler

        ensure_logging_setup()
        if not self.verbose:
            self._consoles = [handler for handler in logging.getLogger().handlers
                              if isinstance(handler, PrefectConsoleHandler)]
            for handler in self._consoles:
                handler.addFilter(self._filter)
        return self

    def libraries_loaded(self) -> None:
        """MLflow sets its logger up when it is imported: quiet it after that."""
        self._mlflow.enter_context(mlflow_warnings_only(self.verbose))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if not self.restore:
            return
        for handler in self._consoles:
            handler.removeFilter(self._filter)
        self._mlflow.close()
