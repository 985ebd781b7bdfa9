"""Booting Prefect's temporary server while ``dae`` imports torch, MLflow and the flows.

With no API URL configured, Prefect starts a temporary server the first time a flow needs
its API, i.e. after every import: its ~3 s of boot sit on the critical path of each
``dae run``. Started here first, the server's subprocess boots on the other core while
this process imports (docs/benchmarks.md, section 3). Prefect keeps one such server per
process (``SubprocessASGIServer`` is a per-port singleton whose ``start`` is idempotent),
so the flow's client finds it running, and Prefect stops it at exit as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


def start_temporary_server() -> contextlib.AbstractContextManager[None]:
    """Start booting the temporary server if Prefect would use one. Returns the context to
    run flows in: it waits until the server answers (raising what its start raised)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return contextlib.nullcontext()
    # Imported here, not in the thread: two threads importing Prefect's circular modules
    # at once can see them half-initialised.
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.server.api.server import SubprocessASGIServer

    ensure_logging_setup()  # so that Prefect's "Starting temporary server" line is shown as before
    server = SubprocessASGIServer()
    failures: list[BaseException] = []

    def boot() -> None:
        try:
            server.start()
        except BaseException as error:  # handed to the main thread below
            failures.append(error)

    thread = threading.Thread(target=boot, name="dae-prefect-server-boot", daemon=True)
    thread.start()
    return _flows_on(thread, failures)


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
