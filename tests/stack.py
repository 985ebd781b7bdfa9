"""The real stack as the real-stack test starts it: PostgreSQL databases, a Prefect
server, an MLflow server with artifacts proxied to an S3-compatible store, and process
workers, behind the stack's credentials. The command lines here are the ones
docker-compose.yml runs (a test holds the two together)."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL = "dae-pool"
# The servers' entry point in docker-compose.yml: the exposure guard, MLflow's auth settings.
START_SERVER = ["/bin/sh", str(REPO / "docker" / "start-server.sh")]
PREFECT_SERVER = ["prefect", "server", "start"]
MLFLOW_SERVER = ["mlflow", "server"]
MLFLOW_SERVER_FLAGS = {"--host", "--port", "--serve-artifacts", "--artifacts-destination", "--allowed-hosts",
                       "--app-name"}
WORKER = ["prefect", "worker", "start", "--pool", POOL, "--type", "process"]
MODEL_SERVER = ["dae", "serve"]
CHAMPION = "models:/dae-mnist-classifier@champion"
# The serving device is pinned: a CPU-exported pt2 program refuses to load on CUDA, which
# MLflow would pick on a GPU host.
MODEL_SERVER_ENV = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_DEFAULT_PREDICTION_DEVICE": "cpu"}
# Clients authenticate through the standard variables, never through URLs or files.
CLIENT_CREDENTIALS_ENV = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
WORKER_ENV = {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI", "DAE_DATA_DIR", "DAE_WORK_DIR",
              *CLIENT_CREDENTIALS_ENV}
# The backend store is MLFLOW_BACKEND_STORE_URI: start-server.sh runs `mlflow db upgrade` on it first.
MLFLOW_SERVER_ENV = {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "MLFLOW_AUTH_DATABASE_URI", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                     "MLFLOW_FLASK_SERVER_SECRET_KEY"}
PREFECT_SERVER_ENV = {"PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_SERVER_API_AUTH_STRING"}
USERS = ["dae", "users"]
PG_HOST, PG_PORT = "127.0.0.1", 5432


def _secret() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Credentials:
    """The secrets of a stack, as .env gives them to docker-compose.yml; fresh ones each time."""

    prefect_auth_string: str = field(default_factory=_secret)
    admin: tuple[str, str] = field(default_factory=lambda: ("admin", _secret()))
    worker: tuple[str, str] = field(default_factory=lambda: ("dae-worker", _secret()))
    serving: tuple[str, str] = field(default_factory=lambda: ("dae-serving", _secret()))
    mlflow_secret_key: str = field(default_factory=_secret)

    def secrets(self) -> dict[str, str]:
        return {"PREFECT_API_AUTH_STRING": self.prefect_auth_string, "MLFLOW_ADMIN_PASSWORD": self.admin[1],
                "DAE_WORKER_PASSWORD": self.worker[1], "DAE_SERVING_PASSWORD": self.serving[1],
                "MLFLOW_SECRET_KEY": self.mlflow_secret_key}

    def prefect_headers(self) -> dict[str, str]:
        """What Prefect's client sends for PREFECT_API_AUTH_STRING."""
        return {"Authorization": f"Basic {base64.b64encode(self.prefect_auth_string.encode()).decode()}"}

    def client_env(self, identity: tuple[str, str]) -> dict[str, str]:
        """A client's environment: Prefect's auth string and one MLflow identity."""
        return {"PREFECT_API_AUTH_STRING": self.prefect_auth_string,
                "MLFLOW_TRACKING_USERNAME": identity[0], "MLFLOW_TRACKING_PASSWORD": identity[1]}

    def users_env(self) -> dict[str, str]:
        """The environment of the `mlflow-users` service: the admin's login and the identities'."""
        return {**self.client_env(self.admin), "DAE_WORKER_USERNAME": self.worker[0],
                "DAE_WORKER_PASSWORD": self.worker[1], "DAE_SERVING_USERNAME": self.serving[0],
                "DAE_SERVING_PASSWORD": self.serving[1]}


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


def mlflow_server_command(port: int, destination: str, login: bool = True) -> list[str]:
    """``login``: MLflow's basic-auth app, as in docker-compose.yml (it needs the settings
    that ``servers`` gives it). The backend store comes from MLFLOW_BACKEND_STORE_URI."""
    hosts = f"127.0.0.1,127.0.0.1:{port},localhost,localhost:{port}"
    return [*MLFLOW_SERVER, *(["--app-name", "basic-auth"] if login else []), "--host", "127.0.0.1",
            "--port", str(port), "--serve-artifacts", "--artifacts-destination", destination, "--allowed-hosts", hosts,
            "--workers", "1"]


def model_server_command(port: int, host: str = "127.0.0.1") -> list[str]:
    # Workers: one per core of the container (dae serve's default).
    return [*MODEL_SERVER, "--model", CHAMPION, "--host", host, "--port", str(port)]


def worker_command(name: str) -> list[str]:
    # One flow run at a time per worker, so that a grid spreads over the workers.
    return [*WORKER, "--name", name, "--limit", "1"]


@contextlib.contextmanager
def servers(root: Path, env: dict[str, str], artifacts_destination: str, credentials: Credentials,
            mlflow_env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Fresh PostgreSQL databases with a Prefect server and an MLflow server on them, both
    asking for ``credentials``, started through the compose file's entry point; yields
    (Prefect API URL, MLflow tracking URI). Everything is stopped and dropped after."""
    prefect_port, mlflow_port = free_port(), free_port()
    database = f"{PG_HOST}:{PG_PORT}"
    with contextlib.ExitStack() as started:
        prefect_db = started.enter_context(fresh_database("dae_prefect", ("pg_trgm",)))
        mlflow_db = started.enter_context(fresh_database("dae_mlflow"))
        auth_db = started.enter_context(fresh_database("dae_mlflow_auth"))
        started.enter_context(background(
            [*START_SERVER, *prefect_server_command(prefect_port)],
            {**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@{database}/{prefect_db}",
             "PREFECT_SERVER_API_AUTH_STRING": credentials.prefect_auth_string},
            root / "prefect-server.log", ready_url=f"http://127.0.0.1:{prefect_port}/api/health", timeout=180))
        started.enter_context(background(
            [*START_SERVER, *mlflow_server_command(mlflow_port, artifacts_destination)],
            {**env, **(mlflow_env or {}), "MLFLOW_BACKEND_STORE_URI": f"postgresql://postgres@{database}/{mlflow_db}",
             "MLFLOW_AUTH_DATABASE_URI": f"postgresql://postgres@{database}/{auth_db}",
             "MLFLOW_AUTH_CONFIG_DIR": str(root), "MLFLOW_AUTH_ADMIN_USERNAME": credentials.admin[0],
             "MLFLOW_AUTH_ADMIN_PASSWORD": credentials.admin[1],
             "MLFLOW_FLASK_SERVER_SECRET_KEY": credentials.mlflow_secret_key},
            root / "mlflow-server.log", ready_url=f"http://127.0.0.1:{mlflow_port}/health", timeout=120))
        yield f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
