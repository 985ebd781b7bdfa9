"""Where tracking lives: the store's URI, its identity, its health, and MLflow's client.

MLflow itself is imported inside the functions that need it: ``dae predict`` asks for the
store's identity on its fast path, which must not pay MLflow's import.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from adapters.mlflow_client import client
from adapters.settings import Settings
from adapters.state_folders import exclusive_file_lock
from dae_core.errors import EXIT_SERVER, DaeError


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else MLflow's own default (``sqlite:///mlflow.db``)."""
    import mlflow

    return mlflow.get_tracking_uri()


def store_identity() -> str:
    """The tracking store this process writes to, as one string: the URI, with a SQLite
    file's path made absolute (``sqlite:///mlflow.db`` means a different file in each
    working directory)."""
    return store_identity_of(tracking_uri(), Path.cwd())


def store_identity_of(uri: str, cwd: Path) -> str:
    """A tracking store as one string: the URI, with a SQLite file's path made absolute
    (``sqlite:///mlflow.db`` means a different file in each working directory). The weights
    kept by MLflow's path and looked up without it meet under this name."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{(cwd / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def tracking_store(settings: Settings, cwd: Path) -> str | None:
    """The store MLflow would use here, as dae can read it without MLflow: the URI set, or
    MLflow's default SQLite file unless ./mlruns holds a file store (MLflow's default then);
    a SQLite path made absolute. None where only MLflow knows."""
    uri = settings.tracking_uri
    if uri is None:
        if any((entry / "meta.yaml").exists() for entry in (cwd / "mlruns").glob("[0-9]*")):
            return None
        uri = "sqlite:///mlflow.db"
    return store_identity_of(uri, cwd) if uri.startswith(("sqlite:///", "http://", "https://")) else None


class TrackingUnavailable(DaeError, RuntimeError):
    """The tracking store cannot be reached; raised before any training starts."""

    exit_code = EXIT_SERVER
    fix = "start the tracking server, or unset MLFLOW_TRACKING_URI to track into ./mlflow.db"


class TrackingRefused(TrackingUnavailable):
    """The tracking server answers but refuses these credentials (or none)."""

    fix = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server "
           "(on the team stack: your own, or DAE_WORKER_* of its .env)")


class StoreMissing(DaeError):
    """A command that only reads found no tracking store where it looked (and made none)."""

    exit_code = EXIT_SERVER
    fix = ("run `dae run` first (it creates the store and registers a model), or point MLFLOW_TRACKING_URI at "
           "the store that has the model")


def check_store(timeout_s: float = 5.0, create: bool = True) -> str:
    """Fail fast, naming the URI, when a tracking server is unreachable (MLflow's own
    client would retry for minutes) or the URI is no store MLflow can open; create a local
    SQLite store once, under a file lock, because processes that start on a new file race
    on its schema migration. ``create=False`` (commands that only read): a missing SQLite
    store is refused, not made."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    uri = tracking_uri()
    try:
        _check_store(uri, timeout_s, create)
    except (MlflowException, SQLAlchemyError, OSError, ValueError, ImportError) as error:
        raise TrackingUnavailable(
            f"{uri} is not a tracking store MLflow can open ({_first_sentence(error)})",
            "point MLFLOW_TRACKING_URI at an MLflow server (http://HOST:5000) or an SQLite file "
            "(sqlite:///path/mlflow.db), or unset it for ./mlflow.db") from None
    return uri


def _first_sentence(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0][:300]


def _check_store(uri: str, timeout_s: float, create: bool) -> None:
    from mlflow.exceptions import MlflowException

    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                pass
        except (OSError, ValueError) as error:
            raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({error}); "
                                      "nothing was trained") from None
        # /health answers everyone; an authenticating server refuses the API itself.
        try:
            client().search_experiments(max_results=1)
        except MlflowException as error:
            if error.get_http_status_code() in (401, 403):
                raise TrackingRefused(f"MLflow tracking server {uri} refused the credentials "
                                      f"(HTTP {error.get_http_status_code()}); nothing was trained") from None
            raise
    elif uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if not create and not database.is_file():
            raise StoreMissing(f"no tracking store at {uri}: nothing was tracked there")
        with exclusive_file_lock(Path(f"{database}.lock")):
            client().search_experiments(max_results=1)
    else:
        client().search_experiments(max_results=1)
