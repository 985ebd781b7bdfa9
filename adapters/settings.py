"""The process's settings from its environment, read once where the process starts (a flow
run, on a worker or under ``dae``: dae_cli/main.py) and passed down as one typed value: tasks and the
science read none of them themselves."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    data_dir: Path  # DAE_DATA_DIR, default ./data: <Dataset>/raw/ below it
    work_dir: Path  # DAE_WORK_DIR, default ./dae-work: run outputs and resumable state
    tuning_storage: str | None  # DAE_TUNING_STORAGE: the studies' database, shared by workers
    worker_name: str  # DAE_WORKER_NAME (one per worker), default the host's name: which machine trains
    notify_webhook_url: str | None  # DAE_NOTIFY_WEBHOOK_URL: where `dae setup` has failed retrains posted
    user: str  # MLFLOW_TRACKING_USERNAME (the MLflow identity in use), else the login name: who acts by hand

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(data_dir=Path(env.get("DAE_DATA_DIR") or "data").resolve(),
                   work_dir=Path(env.get("DAE_WORK_DIR") or "dae-work").resolve(),
                   tuning_storage=env.get("DAE_TUNING_STORAGE") or None,
                   worker_name=env.get("DAE_WORKER_NAME") or socket.gethostname(),
                   notify_webhook_url=env.get("DAE_NOTIFY_WEBHOOK_URL") or None,
                   user=env.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser())
