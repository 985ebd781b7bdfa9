"""Faults of whole processes, with real processes: a SIGKILLed run resumed to the
uninterrupted numbers, a killed run's state met by another store, a SIGKILLed comparison
run again, eight runs at once on one fresh store, temporary Prefect servers booting
together, two identical runs at once. (A SIGKILLed tuning: tests/test_tuning.py; a killed
worker container: tests/test_compose_stack.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from dae_core.config import build_config
from tests.conftest import TINY, make_dataset
from tests.gate import Gate, after_epochs

pytestmark = pytest.mark.slow  # processes started, killed and raced; minutes

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SLOW = ["data.batch_size=100", "data.train_limit=null", "data.test_limit=null", "pretrain.epochs=10",
        "classifier.epochs=2", "runtime.threads=1", "seed=3"]



def _dae_run(env, data_root, work_dir, experiment, summary, overrides, held: tuple[Gate, int] | None = None):
    """``dae run`` in its own session; ``held=(gate, N)``: held at ``gate`` once it has saved N epochs."""
    arguments = ["run", "--preset", "smoke", "--data-dir", str(data_root), "--no-download",
                 "--work-dir", str(work_dir), "--experiment", experiment, "--summary-json", str(summary)]
    for item in overrides:
        arguments += ["--set", item]
    command = [str(BIN / "dae"), *arguments]
    if held:
        gate, epochs = held
        command = after_epochs(gate, epochs, *arguments)
    return subprocess.Popen(command, env=env, cwd=work_dir.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _epochs_saved(work_dir: Path) -> int:
    (state,) = work_dir.glob("state/*/pretrain.state.pt")
    return len(torch.load(state, weights_only=True)["history"]["mse"])


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
    gate = Gate(tmp_path / "gate")
    victim = _dae_run(env, data_root, killed_dir, experiment, tmp_path / "unused.json", overrides, held=(gate, 3))
    gate.wait_reached(victim, 240, "the run to save its third epoch")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert _epochs_saved(killed_dir) == 3

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


BOOT = """
from adapters.prefect_server import server_settings, start_temporary_server
from prefect import flow

@flow
def hello() -> int:
    return 1

with server_settings(), start_temporary_server():
    assert hello() == 1
"""


def test_temporary_servers_booting_together_on_a_fresh_home_all_start(tmp_path):
    """Before the lock, about two rounds in three logged "duplicate column name" or
    "table ... already exists", and one in three lost a server."""
    for trial in range(3):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"home{trial}"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        starts = []
        for _ in range(4):
            starts.append(subprocess.Popen([sys.executable, "-c", BOOT], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True))
            time.sleep(0.5)
        outputs = [(start.wait(timeout=300), start.stdout.read()) for start in starts]
        failed = [output[-2000:] for code, output in outputs if code != 0 or "OperationalError" in output]
        assert failed == [], f"round {trial}:\n" + "\n".join(failed)


def _mlflow_runs(uri: str, experiment: str) -> dict[str, object]:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return {run.info.run_id: run for run in client.search_runs([found.experiment_id])} if found else {}


def test_two_identical_runs_at_once_keep_their_own_state(tmp_path, prefect_api_url):
    data_root = tmp_path / "data"
    make_dataset(data_root, train=3000, test=200)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "MLFLOW_TRACKING_URI": store}
    work = tmp_path / "work"
    work.mkdir()
    # The first is held after its second epoch until the second has saved its first: both
    # hold state in the same work folder at once, whatever the machine's load.
    gates = Gate(tmp_path / "gate-first"), Gate(tmp_path / "gate-second")
    first = _dae_run(env, data_root, work, "twice", tmp_path / "first.json", SLOW, held=(gates[0], 2))
    gates[0].wait_reached(first, 240, "the first run to save its second epoch")
    second = _dae_run(env, data_root, work, "twice", tmp_path / "second.json", SLOW, held=(gates[1], 1))
    gates[1].wait_reached(second, 240, "the second run to save its first epoch")
    assert len(list((work / "state").iterdir())) == 2, "each run holds a state folder of its own"
    for gate in gates:
        gate.release()
    assert second.wait(timeout=400) == 0, second.stdout.read()
    assert first.wait(timeout=400) == 0, first.stdout.read()

    one, two = (json.loads((tmp_path / name).read_text()) for name in ("first.json", "second.json"))
    assert one["test"] == two["test"] and one["pretrain"] == two["pretrain"], "same config, same numbers"
    runs = _mlflow_runs(store, "twice")
    assert {run.info.status for run in runs.values()} == {"FINISHED"} and len(runs) == 2
    assert runs[two["mlflow_run_id"]].info.start_time < runs[one["mlflow_run_id"]].info.end_time, \
        "the second run must have started while the first was training"
    for run in runs.values():
        assert not {"dae.killed", "dae.resumed_from", "dae.resumed_by"} & set(run.data.tags), run.data.tags
    client = MlflowClient(tracking_uri=store)
    for summary in (one, two):
        steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "pretrain/mse")]
        assert sorted(steps) == list(range(1, 11)), "each run logged each epoch once"
    assert list((work / "state").iterdir()) == [], "both runs removed their own state"


def test_a_killed_runs_state_is_never_crossed_into_another_store(tmp_path, prefect_api_url):
    data_root = tmp_path / "data"
    make_dataset(data_root, train=3000, test=200)
    first_store, other_store = tmp_path / "first.db", tmp_path / "other.db"
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "MLFLOW_TRACKING_URI": f"sqlite:///{first_store}"}
    work = tmp_path / "work"
    work.mkdir()
    gate = Gate(tmp_path / "gate")
    victim = _dae_run(env, data_root, work, "stores", tmp_path / "unused.json", SLOW, held=(gate, 3))
    gate.wait_reached(victim, 240, "the run to save its third epoch")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()

    # Another store: it never saw the killed run, so this run starts afresh beside its state.
    other = _dae_run({**env, "MLFLOW_TRACKING_URI": f"sqlite:///{other_store}"}, data_root, work, "stores",
                     tmp_path / "other.json", SLOW)
    output = other.stdout.read()
    assert other.wait(timeout=400) == 0, output
    (run,) = _mlflow_runs(f"sqlite:///{other_store}", "stores").values()
    assert "dae.resumed_from" not in run.data.tags and "Traceback" not in output

    # The first store deleted and made again: the state's owner is gone. Noted, not a crash;
    # the state itself (same configuration, same data) is resumed.
    first_store.unlink()
    again = _dae_run(env, data_root, work, "stores", tmp_path / "again.json", SLOW)
    output = again.stdout.read()
    assert again.wait(timeout=400) == 0, output
    assert "Traceback" not in output
    (run,) = _mlflow_runs(f"sqlite:///{first_store}", "stores").values()
    assert run.data.tags.get("dae.resumed_from_missing"), run.data.tags
    steps = [m.step for m in MlflowClient(tracking_uri=f"sqlite:///{first_store}").get_metric_history(
        run.info.run_id, "pretrain/mse")]
    assert sorted(steps) == list(range(1, 11))
    fresh, resumed = (json.loads((tmp_path / name).read_text()) for name in ("other.json", "again.json"))
    assert fresh["test"] == resumed["test"], "a resumed run ends with the uninterrupted numbers"


def _compare(env: dict[str, str], data_root: Path, work: Path, summary: Path, *extra: str,
             held: tuple[Gate, int] | None = None) -> subprocess.Popen:
    """``dae compare`` of two cells over two seeds in its own session; ``held=(gate, N)``: held
    at ``gate`` once its cells have saved N epochs together (adam-noise saves 6 + 2 a seed)."""
    command = [str(BIN / "dae"), "compare", "--preset", "smoke", "--cells", "adam-noise", "no-pretraining",
               "--seeds", "2", "--data-dir", str(data_root), "--no-download", "--work-dir", str(work),
               "--experiment", "grid", "--summary-json", str(summary), *extra]
    for item in ("data.batch_size=40", "data.train_limit=null", "data.test_limit=null", "pretrain.epochs=6",
                 "pretrain.hidden_units=32", "classifier.epochs=2", "runtime.threads=1"):
        command += ["--set", item]
    if held:
        gate, epochs = held
        command = after_epochs(gate, epochs, *command[1:])
    return subprocess.Popen(command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_a_sigkilled_comparison_run_again_reuses_its_finished_cells(tmp_path, data_root, prefect_api_url):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "MLFLOW_TRACKING_URI": store}
    work = tmp_path / "work"
    work.mkdir()
    client = MlflowClient(tracking_uri=store)
    # Held in the second cell (adam-noise seed 1) after two epochs: the first cell is finished.
    gate = Gate(tmp_path / "gate")
    victim = _compare(env, data_root, work, tmp_path / "unused.json", held=(gate, 8 + 2))
    gate.wait_reached(victim, 300, "the second cell to save its second epoch")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    (parent,) = [r for r in _mlflow_runs(store, "grid").values() if r.data.tags.get("dae.role") == "comparison"]
    done_before = {r.info.run_id for r in _mlflow_runs(store, "grid").values()
                   if r.data.tags.get("mlflow.parentRunId") and r.info.status == "FINISHED"}
    assert len(done_before) == 1

    rerun = _compare(env, data_root, work, tmp_path / "resumed.json")
    output = rerun.stdout.read()
    assert rerun.wait(timeout=400) == 0, output
    assert f"continued the interrupted comparison {parent.info.run_id}" in output
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["reused"] == len(done_before)
    shown = [int(count) for count in re.findall(r" (\d+)/4 \[", output)]
    assert next(count for count in shown if count) == len(done_before), "the bar starts at the cells done before"
    assert resumed["mlflow_run_id"] == parent.info.run_id, "the interrupted parent run is continued"
    used = {ref["mlflow_run_id"] for ref in resumed["runs"]}
    assert len(used) == 4 and done_before <= used, "finished cells are reused, not trained again"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    children = [r for r in _mlflow_runs(store, "grid").values()
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sum(r.info.status == "FINISHED" for r in children) == 4
    assert [r.info.status for r in children if r.info.run_id not in used] == ["FAILED"], "the killed cell ended"

    fresh = _compare(env, data_root, work, tmp_path / "fresh.json", "--fresh")
    assert fresh.wait(timeout=400) == 0, fresh.stdout.read()
    renewed = json.loads((tmp_path / "fresh.json").read_text())
    assert renewed["reused"] == 0
    assert renewed["mlflow_run_id"] != parent.info.run_id and not used & {r["mlflow_run_id"] for r in renewed["runs"]}
    assert renewed["rows"] == resumed["rows"], "a resumed grid ends with the numbers of a fresh one"


def test_a_sigkilled_dae_leaves_no_temporary_server_behind(tmp_path, data_root):
    """`kill -9` of the dae process alone (not its group): the temporary Prefect server it
    started ends too, instead of living on under init with its port and memory."""
    import psutil

    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DAE_"))}
    env = {**inherited, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    work, gate = tmp_path / "work", Gate(tmp_path / "gate")
    victim = _dae_run(env, data_root, work, "orphans", tmp_path / "unused.json", SLOW, held=(gate, 1))
    gate.wait_reached(victim, 240, "the run to save its first epoch")
    servers = [child for child in psutil.Process(victim.pid).children(recursive=True)
               if "uvicorn" in child.cmdline()]
    assert servers, "dae started its temporary Prefect server"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    _, alive = psutil.wait_procs(servers, timeout=30)
    assert not alive, f"still running 30 s after their parent was killed: {[p.cmdline() for p in alive]}"
