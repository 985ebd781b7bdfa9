"""What ``dae`` lets Prefect and MLflow print: their INFO lines only with ``--verbose``.

Only the terminal is quieted: Prefect's loggers keep INFO, so flow and task logs still
reach the Prefect API (and UI); Prefect's flow and task engines, which log a failure
with its traceback, are left out of the terminal unless ``--verbose``, because ``dae``
ends with its own one-line error instead.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from types import TracebackType

# Prefect's run engines: a failure there is reported by ``dae`` itself.
_ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# dae's own module loggers, at INFO with ``--verbose`` (Python's default is WARNING).
_DAE_LOGGERS = ("adapters", "dae_core")


class _WarningsOutsideRunEngines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not record.name.startswith(_ENGINE_LOGGERS)


@contextlib.contextmanager
def _logger_at(name: str, level: int) -> Iterator[None]:
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def _library_logger_at(library: str, level: int, verbose: bool) -> Iterator[None]:
    """``library``'s logger at ``level`` for the block unless ``verbose``. Imports the
    library first: it sets its logger up (and its level) when imported."""
    importlib.import_module(library)
    with contextlib.nullcontext() if verbose else _logger_at(library, level):
        yield


def mlflow_warnings_only(verbose: bool) -> contextlib.AbstractContextManager[None]:
    """MLflow's logger at WARNING unless ``verbose`` (it logs, e.g., each new SQLite store's
    migration at INFO)."""
    return _library_logger_at("mlflow", logging.WARNING, verbose)


def optuna_errors_only(verbose: bool) -> contextlib.AbstractContextManager[None]:
    """Optuna's logger at ERROR unless ``verbose``: its INFO lines would break the progress
    bar, and its warnings in a tune are trial failures logged with their traceback, which
    end the tune and which ``dae`` reports as its own cause-and-fix lines."""
    return _library_logger_at("optuna", logging.ERROR, verbose)


class QuietTerminal:
    """Unless ``verbose``, for the block: Prefect's console handler limited to warnings from
    outside the run engines and, once the libraries are imported (``libraries_loaded``),
    MLflow's logger to warnings (and Optuna's to errors). ``restore=False`` keeps it so
    after the block, for a process that ends there (Prefect stops its temporary server at
    exit and says so at INFO)."""

    def __init__(self, verbose: bool, restore: bool = True) -> None:
        self.verbose, self.restore = verbose, restore
        self._filter = _WarningsOutsideRunEngines()
        self._consoles: list[logging.Handler] = []
        self._libraries = contextlib.ExitStack()

    def __enter__(self) -> QuietTerminal:
        from prefect.logging.configuration import ensure_logging_setup
        from prefect.logging.handlers import PrefectConsoleHandler

        ensure_logging_setup()
        if self.verbose:  # dae's own INFO lines (e.g. the temporary server's start and stop)
            for name in _DAE_LOGGERS:
                self._libraries.enter_context(_logger_at(name, logging.INFO))
        else:
            self._consoles = [handler for handler in logging.getLogger().handlers
                              if isinstance(handler, PrefectConsoleHandler)]
            for handler in self._consoles:
                handler.addFilter(self._filter)
        return self

    def libraries_loaded(self, tuning: bool = False) -> None:
        """MLflow (and Optuna, for ``tuning``) set their loggers up when imported: quiet
        them after that."""
        self._libraries.enter_context(mlflow_warnings_only(self.verbose))
        if tuning:
            self._libraries.enter_context(optuna_errors_only(self.verbose))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if not self.restore:
            return
        for handler in self._consoles:
            handler.removeFilter(self._filter)
        self._libraries.close()
