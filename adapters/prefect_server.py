"""Prefect's temporary server, booted while ``dae`` imports torch, MLflow and the flows.

With no API URL configured, Prefect starts a temporary server the first time a flow needs
its API, i.e. after every import: its ~3 s of boot sit on the critical path of each
``dae run``. Started here first, the server's subprocess boots on the other core while
this process imports (docs/benchmarks.md, section 3). That start uses Prefect's private
``SubprocessASGIServer`` (a per-port singleton whose ``start`` is idempotent, so the
flow's client finds it running, and Prefect stops it at exit). pyproject.toml pins
Prefect's minor version for it, and where a release lacks that API the early start is
skipped: Prefect then starts its server itself, as it would without ``dae``.

Each temporary server migrates its SQLite database when it starts, and two servers that
migrate one new database at once break it ("duplicate column name", then a server that
never answers). Boots on one database therefore take turns under a file lock beside it:
an uncontended lock costs nothing; ``dae`` commands started together wait for each
other's boot, a few seconds each.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from adapters.state_folders import exclusive_file_lock

# The private API of the early start, as (module, attribute).
EARLY_START_API = ("prefect.server.api.server", "SubprocessASGIServer")

log = logging.getLogger(__name__)


# Prefect gives a temporary server 20 s to answer; a busy 2-core machine, or commands
# booting one after another under the lock below, took longer ("Timed out while attempting
# to connect to ephemeral Prefect API server" with the CI's tests beside a tuning run).
STARTUP_TIMEOUT_S = 90


@contextlib.contextmanager
def server_settings() -> Iterator[None]:
    """Prefect settings for a temporary server started in this block: no analytics (offline,
    it would try to phone home and log the failure), and time to start on a busy machine
    (a larger value set by the user is kept)."""
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), STARTUP_TIMEOUT_S)
    with temporary_settings(updates={PREFECT_SERVER_ANALYTICS_ENABLED: False,
                                     PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout}):
        yield


def start_temporary_server() -> contextlib.AbstractContextManager[None]:
    """Start booting the temporary server if Prefect would use one. Returns the context to
    run flows in: it waits until the server answers (raising what its start raised)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return contextlib.nullcontext()
    # Resolved here, not in the thread: two threads importing Prefect's circular modules
    # at once can see them half-initialised.
    module, name = EARLY_START_API
    try:
        server_class = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        log.debug("%s.%s is not in this Prefect: no early start of the temporary server", module, name)
        return contextlib.nullcontext()
    server = server_class()
    failures: list[BaseException] = []
    lock_path = migration_lock_path()

    def boot() -> None:
        try:
            with exclusive_file_lock(lock_path) if lock_path else contextlib.nullcontext():
                server.start()
        except BaseException as error:  # handed to the main thread below
            failures.append(error)

    # In a copy of this context: the server's environment comes from the current settings.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(boot,), name="dae-prefect-server-boot", daemon=True)
    thread.start()
    return _flows_on(thread, failures)


def migration_lock_path() -> Path | None:
    """``<database>.lock`` beside the temporary server's SQLite database; None for another
    database (a server of its own migrates once)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    scheme, _, path = url.partition(":///")
    return Path(f"{path}.lock") if scheme.startswith("sqlite") and path and path != ":memory:" else None


@contextlib.contextmanager
def _flows_on(boot: threading.Thread, failures: list[BaseException]) -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    boot.join()
    if failures:
        raise failures[0]
    # Heartbeats let a long-lived server mark crashed runs; this one ends with the process.
    # Prefect 3.9 also ends every flow run by joining its heartbeat thread, which sleeps in
    # 1 s steps: up to 1 s (0.5 s on average) per run (docs/benchmarks.md, section 3).
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
