"""Failure modes inside one process: refused settings, unreachable tracking, numerical
faults, and secrets in the repository. Faults of whole processes (SIGKILL, races) are
tests/test_processes.py."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from dae_core.config import ConfigError, build_config
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_batch_larger_than_the_data_is_refused():
    with pytest.raises(ConfigError, match=r"data: .*batch_size=500 is larger than train_limit=100"):
        build_config("smoke", ["data.train_limit=100", "data.batch_size=500"])


@pytest.mark.usefixtures("prefect_server", "mlflow_store")
def test_an_unreachable_tracking_server_fails_fast_naming_the_uri(data_root, tmp_path, track_at):
    from adapters.mlflow_store import TrackingUnavailable
    from flows.experiment import dae_experiment

    uri = f"http://127.0.0.1:{_free_port()}"
    track_at(uri)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=re.escape(uri)):
        dae_experiment(config=build_config("smoke", TINY), data_dir=str(data_root), download=False,
                       work_dir=str(tmp_path / "work"))
    assert time.monotonic() - started < 10
    assert not (tmp_path / "work").exists(), "nothing may be trained or written"


@pytest.mark.usefixtures("prefect_server", "mlflow_store")
def test_a_nan_loss_fails_the_mlflow_run(data_root, tmp_path, monkeypatch):
    from adapters import mlflow_runs
    from dae_core import noise, pretrain_step, train
    from flows.experiment import dae_experiment

    def poisoned(clean, config, generator, out=None):
        return torch.full_like(clean, float("nan"))

    monkeypatch.setattr(pretrain_step, "corrupt", poisoned)
    experiment = f"nan-{os.getpid()}-{time.time_ns()}"
    with pytest.raises(train.TrainingDiverged, match=r"pretrain epoch 1 step 1: loss is nan"):
        dae_experiment(config=build_config("smoke", TINY), data_dir=str(data_root), download=False,
                       experiment_name=experiment, work_dir=str(tmp_path))
    (run,) = MlflowClient().search_runs([mlflow_runs.experiment_id(experiment)])
    assert run.info.status == "FAILED"
    assert noise.corrupt is not poisoned  # only training saw the poison


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"AKIA[0-9A-Z]{16}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "credential in a URL": re.compile(r"://[^/\s:@${}]+:[^/\s@${}]+@"),
    "assigned secret": re.compile(
        r"(?i)(password|secret|token)[\"']?\s*[:=]\s*[\"']?(?!change-me|\$\{)[A-Za-z0-9/+]{12,}"),
}


def test_no_credentials_are_tracked():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in tracked:
        path = REPO / name
        if not path.is_file() or path.suffix in {".png", ".pt", ".db"}:
            continue
        text = path.read_text(errors="ignore")
        found += [f"{name}: {kind}" for kind, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    assert found == []


def test_the_secret_scan_would_catch_a_leak():
    # The samples are assembled at run time so that this file itself passes the scan.
    assert SECRET_PATTERNS["AWS access key id"].search("key = " + "AKIA" + "IOSFODNN7EXAMPLE")
    assert SECRET_PATTERNS["credential in a URL"].search("postgresql://dae:" + "hunter2secret" + "@db:5432/x")
    assert not SECRET_PATTERNS["credential in a URL"].search("postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres")
    assert SECRET_PATTERNS["assigned secret"].search("POSTGRES_PASSWORD" + "=" + "Sup3rSecretValue99")
    assert not SECRET_PATTERNS["assigned secret"].search("POSTGRES_PASSWORD=change-me-postgres")
