"""Failure modes: unreachable tracking, a SIGKILLed training process, concurrent runs on
one fresh SQLite store, numerical faults, and secrets in the repository."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from dae_core.config import ConfigError, build_config
from tests.conftest import TINY, make_dataset

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
def test_an_unreachable_tracking_server_fails_fast_naming_the_uri(data_root, tmp_path, monkeypatch):
    from adapters.tracking import TrackingUnavailable
    from flows.experiment import dae_experiment

    uri, previous = f"http://127.0.0.1:{_free_port()}", mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    started = time.monotonic()
    try:
        with pytest.raises(TrackingUnavailable, match=re.escape(uri)):
            dae_experiment(config=build_config("smoke", TINY), data_dir=str(data_root), download=False,
                           work_dir=str(tmp_path / "work"))
    finally:
        mlflow.set_tracking_uri(previous)
    assert time.monotonic() - started < 10
    assert not (tmp_path / "work").exists(), "nothing may be trained or written"


@pytest.mark.usefixtures("prefect_server", "mlflow_store")
def test_a_nan_loss_fails_the_mlflow_run(data_root, tmp_path, monkeypatch):
    from adapters import tracking
    from dae_core import noise, pretrain_step, train
    from flows.experiment import dae_experiment

    def poisoned(clean, config, generator, out=None):
        return torch.full_like(clean, float("nan"))

    monkeypatch.setattr(pretrain_step, "corrupt", poisoned)
    experiment = f"nan-{os.getpid()}-{time.time_ns()}"
    with pytest.raises(train.TrainingDiverged, match=r"pretrain epoch 1 step 1: loss is nan"):
        dae_experiment(config=build_config("smoke", TINY), data_dir=str(data_root), download=False,
                       experiment_name=experiment, work_dir=str(tmp_path))
    (run,) = MlflowClient().search_runs([tracking.experiment_id(experiment)])
    assert run.info.status == "FAILED"
    assert noise.corrupt is not poisoned  # only training saw the poison


def _dae_run(env, data_root, work_dir, experiment, summary, overrides):
    command = [str(BIN / "dae"), "run", "--preset", "smoke", "--data-dir", str(data_root), "--no-download",
               "--work-dir", str(work_dir), "--experiment", experiment, "--summary-json", str(summary)]
    for item in overrides:
        command += ["--set", item]
    return subprocess.Popen(command, env=env, cwd=work_dir.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _epochs_saved(work_dir: Path) -> int:
    states = list(work_dir.glob("state/*/pretrain.state.pt"))
    if not states:
        return 0
    try:
        return len(torch.load(states[0], weights_only=True)["history"]["mse"])
    except Exception:  # being replaced right now: the rename is atomic, the read may race the open
        return 0


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_exactly_the_uninterrupted_numbers(
        tmp_path, prefect_api_url, mlflow_store):
    data_root = tmp_path / "data"
    make_dataset(data_root, train=3000, test=200)
    overrides = ["data.batch_size=100", "data.train_limit=null", "data.test_limit=null", "pretrain.epochs=12",
                 "classifier.epochs=2", "runtime.threads=1", "seed=7"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "MLFLOW_TRACKING_URI": mlflow_store}
    experiment = f"kill-{time.time_ns()}"
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    victim = _dae_run(env, data_root, killed_dir, experiment, tmp_path / "unused.json", overrides)
    deadline = time.monotonic() + 240
    while _epochs_saved(killed_dir) < 3:
        assert victim.poll() is None, victim.stdout.read()
        assert time.monotonic() < deadline, "training never reached epoch 3"
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    saved = _epochs_saved(killed_dir)
    assert 3 <= saved < 12

    resumed = _dae_run(env, data_root, killed_dir, experiment, tmp_path / "resumed.json", overrides)
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    assert resumed.wait(timeout=400) == 0, resumed.stdout.read()
    reference = _dae_run(env, data_root, reference_dir, f"{experiment}-ref", tmp_path / "reference.json", overrides)
    assert reference.wait(timeout=400) == 0, reference.stdout.read()

    after, before = (json.loads((tmp_path / name).read_text()) for name in ("resumed.json", "reference.json"))
    for section in ("pretrain", "classifier", "test"):
        assert after[section] == before[section], section
    client = MlflowClient()
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])}
    resumed_run = runs[after["mlflow_run_id"]]
    killed_run = runs[resumed_run.data.tags["dae.resumed_from"]]
    assert killed_run.info.status == "FAILED" and killed_run.data.tags["dae.killed"] == "true"
    history = client.get_metric_history(resumed_run.info.run_id, "pretrain/mse")
    assert sorted(m.step for m in history) == list(range(1, 13))
    assert not list(killed_dir.glob("dae-work/state/*")) and not list(killed_dir.glob("state/*")), \
        "a finished run leaves no resumable state behind"


@pytest.mark.slow
def test_eight_runs_at_once_on_one_fresh_sqlite_store(tmp_path, data_root, prefect_api_url):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "MLFLOW_TRACKING_URI": uri}
    config = build_config("smoke", {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 2, "hidden_units": 16},
                                    "classifier": {**TINY["classifier"], "epochs": 1}})
    script = (
        "import json, sys\n"
        "from dae_core.config import ExperimentConfig\n"
        "from flows.experiment import dae_experiment\n"
        "config = ExperimentConfig.model_validate_json(sys.argv[1]).model_copy(update={'seed': int(sys.argv[2])})\n"
        f"dae_experiment(config=config, data_dir={str(data_root)!r}, download=False, experiment_name='eight',\n"
        f"               work_dir={str(tmp_path / 'work')!r}, register_model=False)\n"
    )
    runs = [subprocess.Popen([sys.executable, "-c", script, config.model_dump_json(), str(seed)], env=env,
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for seed in range(8)]
    outputs = [(run.wait(timeout=600), run.stdout.read()) for run in runs]
    assert [code for code, _ in outputs] == [0] * 8, "\n".join(out[-2000:] for code, out in outputs if code)
    client = MlflowClient(tracking_uri=uri)
    finished = client.search_runs([client.get_experiment_by_name("eight").experiment_id])
    assert len(finished) == 8 and {r.info.status for r in finished} == {"FINISHED"}
    for run in finished:
        assert len(client.get_metric_history(run.info.run_id, "pretrain/mse")) == 2
        assert "test/accuracy" in run.data.metrics


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
