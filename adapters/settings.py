"""The process's settings from its environment, read once where the process starts (a flow
run, on a worker or under ``dae``: dae_cli/main.py) and passed down as one typed value: tasks and the
science read none of them themselves."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    data_dir: Path  # DAE_DATA_DIR, default ./data: <Dataset>/raw/ below it
    work_dir: Path  # DAE_WORK_DIR, default ./dae-work: run outputs and resumable state
    tuning_storage: str | None  # DAE_TUNING_STORAGE: the studies' database, shared by workers
    worker_name: str  # DAE_WORKER_NAME (one per worker), default the host's name: which machine trains
    notify_webhook_url: str | None  # DAE_NOTIFY_WEBHOOK_URL: where `dae setup` has failed retrains posted
    user: str  # MLFLOW_TRACKING_USERNAME (the MLflow identity in use), else the login name: who acts by hand
    # What MLflow itself reads, read here too by `dae predict`, which resolves the champion
    # without importing MLflow (adapters/model_registry.py).
    tracking_uri: str | None  # MLFLOW_TRACKING_URI (None: MLflow's default)
    tracking_username: str | None  # MLFLOW_TRACKING_USERNAME
    tracking_password: SecretStr | None  # MLFLOW_TRACKING_PASSWORD
    tracking_token: SecretStr | None  # MLFLOW_TRACKING_TOKEN
    model_cache_dir: Path  # DAE_MODEL_CACHE, default $XDG_CACHE_HOME/dae/models (~/.cache/dae/models)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(data_dir=Path(env.get("DAE_DATA_DIR") or "data").resolve(),
                   work_dir=Path(env.get("DAE_WORK_DIR") or "dae-work").resolve(),
                   tuning_storage=env.get("DAE_TUNING_STORAGE") or None,
                   worker_name=env.get("DAE_WORKER_NAME") or socket.gethostname(),
                   notify_webhook_url=env.get("DAE_NOTIFY_WEBHOOK_URL") or None,
                   user=env.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser(),
                   tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
                   tracking_username=env.get("MLFLOW_TRACKING_USERNAME") or None,
                   tracking_password=env.get("MLFLOW_TRACKING_PASSWORD") or None,
                   tracking_token=env.get("MLFLOW_TRACKING_TOKEN") or None,
                   model_cache_dir=Path(env.get("DAE_MODEL_CACHE") or _user_cache(env) / "dae" / "models"))


def _user_cache(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
