"""Prefect's temporary server, booted while ``dae`` imports torch, MLflow and the flows.

With no API URL configured, Prefect starts a temporary server the first time a flow needs
its API, i.e. after every import, and imports its server module (~2 s) in the client to do
so. ``dae`` starts the same server itself, first: Prefect's app factory under uvicorn, with
the environment Prefect gives it, as a subprocess that boots on the other core while this
process imports; the flows then talk to it through ``PREFECT_API_URL``, set for their block
only, so this process never imports the server's code (docs/benchmarks.md, section 3). The
factory's import path is Prefect's, pinned by pyproject.toml's Prefect range; where a
release lacks it the server exits at once and Prefect starts its own, as without ``dae``.

Each temporary server migrates its SQLite database when it starts, and two servers that
migrate one new database at once break it ("duplicate column name", then a server that
never answers). Boots on one database therefore take turns under a file lock beside it:
an uncontended lock costs nothing; ``dae`` commands started together wait for each
other's boot, a few seconds each.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from adapters.lifeline import Lifeline
from adapters.state_folders import exclusive_file_lock
from dae_core.errors import EXIT_SERVER, DaeError

# What Prefect's own temporary server runs (prefect.server.api.server.SubprocessASGIServer).
SERVER_APP = "prefect.server.api.server:create_app"
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# uvicorn's exit status when it cannot start: its port is taken, or the app did not load.
_STARTUP_FAILED = 3

log = logging.getLogger(__name__)


# Prefect gives a temporary server 20 s to answer; a busy 2-core machine, or commands
# booting one after another under the lock below, took longer ("Timed out while attempting
# to connect to ephemeral Prefect API server" with the CI's tests beside a tuning run).
STARTUP_TIMEOUT_S = 90


class ServerExited(RuntimeError):
    """The temporary server exited before it answered (e.g. a Prefect release without its
    app factory): Prefect's own start then runs."""


class ServerTimedOut(DaeError):
    """The temporary server did not answer in time."""

    exit_code = EXIT_SERVER
    fix = ("on a busy machine, set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or point "
           "PREFECT_API_URL at a running Prefect server")


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


class TemporaryServer:
    """One uvicorn subprocess serving Prefect's API on a free local port until this process
    exits (flow-run logs and events are still sent after the flow returns)."""

    def __init__(self, environment: dict[str, str], timeout_s: float, log_path: Path) -> None:
        self._environment, self._timeout_s, self.log_path = environment, timeout_s, log_path
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._lifeline: Lifeline | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def boot(self) -> None:
        """Start the subprocess and wait until it answers."""
        import httpx

        atexit.register(self.stop)
        deadline = time.monotonic() + self._timeout_s
        self._launch()
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                status = self._process.poll()
                if status == _STARTUP_FAILED and not _port_free(self.port):  # lost the port to another process
                    self._launch()
                    continue
                if status is not None:
                    raise ServerExited(f"the temporary Prefect server exited with status {status} "
                                       f"(its output: {self.log_path})")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                time.sleep(0.1)
        self.stop()
        raise ServerTimedOut(f"the temporary Prefect server did not answer within {self._timeout_s:.0f} s")

    def _launch(self) -> None:
        self.port = _free_port()
        log.info("Starting temporary server on http://127.0.0.1:%d", self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Its errors go to a file, not the terminal: a server that cannot start is replaced by
        # Prefect's own (below), and the user needs no line about it.
        # It ends with this process however this one ends (a SIGKILL too): adapters/lifeline.py.
        if self._lifeline is not None:  # a launch that lost its port: that process has exited
            self._lifeline.cut()
        self._lifeline = Lifeline()
        with open(self.log_path, "ab") as output:
            self._process = subprocess.Popen(
                self._lifeline.command("uvicorn", "--factory", SERVER_APP, "--host", "127.0.0.1",
                                       "--port", str(self.port), "--log-level", "error", "--lifespan", "on"),
                env=self._environment, stdout=output, stderr=subprocess.STDOUT, pass_fds=(self._lifeline.fd,))
        self._lifeline.handed_over()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        log.info("Stopping temporary server on http://127.0.0.1:%d", self.port)
        if self._lifeline is not None:
            self._lifeline.cut()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    # As Prefect does: a random port of 8000-8999 that binds now (uvicorn may still lose
    # it to another process: a new port is tried then).
    for _ in range(50):
        port = random.randrange(8000, 9000)
        if _port_free(port):
            return port
    raise ServerTimedOut("no free port in 8000-8999 for the temporary Prefect server")


def start_temporary_server() -> contextlib.AbstractContextManager[None]:
    """Start booting the temporary server if Prefect would use one. Returns the context to
    run flows in: it waits until the server answers, and points Prefect at it."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return contextlib.nullcontext()
    settings = get_current_settings()
    environment = {**os.environ, **SERVER_ENV, **settings.to_environment_variables(exclude_unset=True)}
    server = TemporaryServer(environment, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(),
                             Path(settings.home) / "dae-temporary-server.log")
    failures: list[BaseException] = []
    lock_path = migration_lock_path()

    def boot() -> None:
        try:
            with exclusive_file_lock(lock_path) if lock_path else contextlib.nullcontext():
                server.boot()
        except BaseException as error:  # handed to the main thread below
            failures.append(error)

    thread = threading.Thread(target=boot, name="dae-prefect-server-boot", daemon=True)
    thread.start()
    return _flows_on(server, thread, failures)


def migration_lock_path() -> Path | None:
    """``<database>.lock`` beside the temporary server's SQLite database; None for another
    database (a server of its own migrates once)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    scheme, _, path = url.partition(":///")
    return Path(f"{path}.lock") if scheme.startswith("sqlite") and path and path != ":memory:" else None


@contextlib.contextmanager
def _flows_on(server: TemporaryServer, boot: threading.Thread, failures: list[BaseException]) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    boot.join()
    if failures and isinstance(failures[0], ServerExited):
        log.debug("%s: Prefect starts its own", failures[0])
        yield
        return
    if failures:
        raise failures[0]
    # Heartbeats let a long-lived server mark crashed runs; this one ends with the process.
    # Prefect 3.9 also ends every flow run by joining its heartbeat thread, which sleeps in
    # 1 s steps: up to 1 s (0.5 s on average) per run (docs/benchmarks.md, section 3).
    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
