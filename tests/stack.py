"""The real stack as the real-stack test starts it: PostgreSQL databases, a Prefect
server, an MLflow server with artifacts proxied to an S3-compatible store, and process
workers. The command lines here are the ones docker-compose.yml runs (a test holds
the two together)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

POOL = "dae-pool"
PREFECT_SERVER = ["prefect", "server", "start"]
MLFLOW_SERVER = ["mlflow", "server"]
MLFLOW_SERVER_FLAGS = {"--host", "--port", "--backend-store-uri", "--serve-artifacts", "--artifacts-destination",
                       "--allowed-hosts"}
WORKER = ["prefect", "worker", "start", "--pool", POOL, "--type", "process"]
MODEL_SERVER = ["mlflow", "models", "serve"]
CHAMPION = "models:/dae-mnist-classifier@champion"
# The serving device is pinned: a CPU-exported pt2 program refuses to load on CUDA, which
# MLflow would pick on a GPU host.
MODEL_SERVER_ENV = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}
WORKER_ENV = {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DAE_DATA_DIR", "DAE_WORK_DIR"}
MLFLOW_SERVER_ENV = {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
PREFECT_SERVER_ENV = {"PREFECT_SERVER_DATABASE_CONNECTION_URL"}
PG_HOST, PG_PORT = "127.0.0.1", 5432


def postgres_reachable() -> bool:
    with contextlib.suppress(OSError), socket.create_connection((PG_HOST, PG_PORT), timeout=2):
        return True
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres", "-d", database,
                    "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True, capture_output=True)


@contextlib.contextmanager
def fresh_database(prefix: str, extensions: tuple[str, ...] = ()) -> Iterator[str]:
    """A new database, dropped afterwards; yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    psql(f"CREATE DATABASE {name}")
    try:
        for extension in extensions:
            psql(f"CREATE EXTENSION IF NOT EXISTS {extension}", name)
        yield name
    finally:
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def wait_for_url(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{process.args[:3]} exited {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:] if log else ''}")


@contextlib.contextmanager
def background(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None,
               ready_url: str | None = None, timeout: float = 120) -> Iterator[subprocess.Popen]:
    """A process in its own session; on exit its whole group gets SIGTERM, then SIGKILL."""
    handle = open(log, "w")
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        if ready_url:
            wait_for_url(ready_url, timeout, process, log)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        handle.close()


def prefect_server_command(port: int) -> list[str]:
    return [*PREFECT_SERVER, "--host", "127.0.0.1", "--port", str(port)]


def mlflow_server_command(port: int, backend: str, destination: str) -> list[str]:
    hosts = f"127.0.0.1,127.0.0.1:{port},localhost,localhost:{port}"
    return [*MLFLOW_SERVER, "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", backend,
            "--serve-artifacts", "--artifacts-destination", destination, "--allowed-hosts", hosts,
            "--workers", "1"]


def model_server_command(port: int, host: str = "127.0.0.1") -> list[str]:
    # --env-manager local: the image already has the model's requirements (no rebuild at start).
    return [*MODEL_SERVER, "--model-uri", CHAMPION, "--env-manager", "local", "--host", host,
            "--port", str(port), "--workers", "1"]


def worker_command(name: str) -> list[str]:
    # One flow run at a time per worker, so that a grid spreads over the workers.
    return [*WORKER, "--name", name, "--limit", "1"]


@contextlib.contextmanager
def servers(root: Path, env: dict[str, str], artifacts_destination: str,
            mlflow_env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Fresh PostgreSQL databases with a Prefect server and an MLflow server on them;
    yields (Prefect API URL, MLflow tracking URI). Everything is stopped and dropped after."""
    prefect_port, mlflow_port = free_port(), free_port()
    database = f"{PG_HOST}:{PG_PORT}"
    with contextlib.ExitStack() as started:
        prefect_db = started.enter_context(fresh_database("dae_prefect", ("pg_trgm",)))
        mlflow_db = started.enter_context(fresh_database("dae_mlflow"))
        started.enter_context(background(
            prefect_server_command(prefect_port),
            {**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@{database}/{prefect_db}"},
            root / "prefect-server.log", ready_url=f"http://127.0.0.1:{prefect_port}/api/health", timeout=180))
        started.enter_context(background(
            mlflow_server_command(mlflow_port, f"postgresql://postgres@{database}/{mlflow_db}", artifacts_destination),
            {**env, **(mlflow_env or {})}, root / "mlflow-server.log",
            ready_url=f"http://127.0.0.1:{mlflow_port}/health", timeout=120))
        yield f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
