"""The ``dae`` command: installed, in its default embedded mode (no Prefect API URL, no
tracking URI, a fresh PREFECT_HOME), and called in this process under the session's Prefect
test server and tracking store for its outputs and its failures."""

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dae_cli.main import main as dae_main
from tests.conftest import TINY, TRAIN_IMAGES, make_dataset, runs_of, unique_experiment

BIN = Path(sys.executable).parent
TINY_RUN = ["run", "--preset", "smoke", "--no-download", "--set", "data.train_limit=null",
            "--set", "data.test_limit=null", "--set", "data.batch_size=40"]


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    return env


@pytest.mark.slow
def test_dae_run_boots_one_temporary_server_early_and_stops_it(data_root, tmp_path):
    result = subprocess.run(
        [str(BIN / "dae"), *TINY_RUN, "--data-dir", str(data_root),
         "--summary-json", str(tmp_path / "summary.json"), "--verbose"],
        cwd=tmp_path, env={**_embedded_env(tmp_path), "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The server started before the imports is the one the flow used: Prefect started no other
    # (nor imported its server code to do so: 2-3.5 s), and the flow run's logs reached it.
    imported = re.findall(r"^import time:.*\|\s+(\S+)$", result.stderr, re.MULTILINE)
    assert "torch" in imported and "prefect.server.api.server" not in imported
    output = result.stdout + result.stderr
    servers = re.findall(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", output)
    assert len(servers) == 1, output[-3000:]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(servers[0]))) != 0, "the temporary server outlived dae"
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as database:
        messages = [row[0] for row in database.execute("SELECT message FROM log")]
    assert any(message.startswith("MLflow run ") for message in messages), messages

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0
    assert (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_without_prefects_server_app_where_dae_looks_dae_still_runs_and_stays_quiet(data_root, tmp_path):
    """A Prefect release whose server app lies elsewhere: the early server exits, Prefect's
    own path runs the flow. Without --verbose the terminal shows no INFO lines."""
    code = (
        "import sys\n"
        "import adapters.prefect_server as early\n"
        "early.SERVER_APP = 'prefect.server.api.server:no_such_app_in_this_release'\n"
        "from dae_cli.main import main\n"
        "sys.exit(main(sys.argv[1:], restore_terminal=False))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *TINY_RUN, "--data-dir", str(data_root),
         "--summary-json", str(tmp_path / "summary.json")],
        cwd=tmp_path, env=_embedded_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["test"]["accuracy"] > 0
    assert " | INFO " not in result.stderr, result.stderr[-3000:]
    assert result.stdout.startswith("test accuracy "), result.stdout


def test_offline_without_data_dae_says_how_to_point_at_local_data_in_two_lines(tmp_path):
    result = subprocess.run([str(BIN / "dae"), "run", "--preset", "smoke"], cwd=tmp_path, env=_embedded_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-2].startswith("dae: ") and "MNIST/raw" in lines[-2]
    assert lines[-1].startswith("  fix: pass --data-dir DIR (or set DAE_DATA_DIR)")
    assert "Traceback" not in result.stderr and " | INFO " not in result.stderr, result.stderr[-3000:]


def test_fan_out_without_a_prefect_server_is_refused_in_two_lines(tmp_path):
    for command in (["tune", "--fan-out", "dae-tune/optimizers"], ["compare", "--fan-out", "dae-experiment/lecture"]):
        result = subprocess.run([str(BIN / "dae"), *command, "--preset", "smoke"], cwd=tmp_path,
                                env=_embedded_env(tmp_path), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-3000:]
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == [f"dae: --fan-out {command[2]}: sends runs to a work pool, which needs a Prefect server",
                         lines[1]] and lines[1].startswith("  fix: set PREFECT_API_URL"), result.stderr
        assert not (tmp_path / "prefect" / "prefect.db").exists(), "refused before any server started"


@pytest.mark.slow
def test_a_tune_whose_trials_cannot_run_ends_in_the_cause_and_the_fix_without_optunas_traceback(data_root, tmp_path):
    result = subprocess.run(
        [str(BIN / "dae"), "tune", "--preset", "smoke", "--no-download", "--data-dir", str(data_root),
         "--set", "data.train_limit=1000", "--cells", "adam-noise", "--trials", "2"],
        cwd=tmp_path, env=_embedded_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-2:] == [f"dae: data.train_limit = 1000: the split has only {TRAIN_IMAGES} images",
                          f"  fix: --set data.train_limit={TRAIN_IMAGES} (or fewer), or pass --data-dir with the "
                          "full dataset"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "failed with" not in result.stderr, result.stderr[-3000:]


# In this process, under the session's Prefect test server and temporary tracking store.
IN_PROCESS = pytest.mark.usefixtures("prefect_server", "mlflow_store")


@IN_PROCESS
def test_cli_refuses_a_bad_override_naming_the_field(capsys):
    assert dae_main(["run", "--preset", "smoke", "--set", "pretrain.noise.std=3"]) == 2
    assert "pretrain.noise.std = 3" in capsys.readouterr().err

@IN_PROCESS
def test_cli_run_writes_the_summary_json(data_root, tmp_path):
    summary_path = tmp_path / "summary.json"
    overrides = [f"data.batch_size={TINY['data']['batch_size']}", "data.train_limit=null", "data.test_limit=null",
                 "pretrain.epochs=2", "pretrain.hidden_units=32", "classifier.epochs=1"]
    args = ["run", "--preset", "smoke", "--data-dir", str(data_root), "--no-download", "--seed", "4",
            "--summary-json", str(summary_path), "--experiment", unique_experiment(),
            "--work-dir", str(tmp_path / "w"), "--name", "my-first-run"]
    for item in overrides:
        args += ["--set", item]
    assert dae_main(args) == 0
    summary = json.loads(summary_path.read_text())
    assert len(summary["pretrain"]["mse"]) == 2 and len(summary["classifier"]["test_accuracy"]) == 1
    run = MlflowClient().get_run(summary["mlflow_run_id"])
    assert run.data.params["seed"] == "4"
    assert run.info.run_name == run.data.tags["prefect.flow_run_name"] == "my-first-run"
    # The quiet terminal does not silence the Prefect API: the flow run's INFO lines are there.
    messages = _flow_run_log_messages(run.data.tags["prefect.flow_run_id"])
    assert any(message.startswith("MLflow run ") for message in messages), messages

def _flow_run_log_messages(flow_run_id: str) -> list[str]:
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
    with get_client(sync_client=True) as client:
        for _ in range(30):  # Prefect sends logs in batches, every 2 s by default
            if messages := [log.message for log in client.read_logs(log_filter=log_filter)]:
                return messages
            time.sleep(0.5)
    return []

@IN_PROCESS
def test_cli_on_a_corrupt_data_file_says_cause_and_fix_and_creates_no_run(tmp_path, capsys):
    raw = make_dataset(tmp_path / "data")
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    name = unique_experiment()
    code = dae_main(["run", "--preset", "smoke", "--data-dir", str(tmp_path / "data"), "--no-download",
                     "--experiment", name, "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 3
    assert "train-images-idx3-ubyte: truncated" in err and "fix: delete the damaged file" in err
    assert "Traceback" not in err
    assert runs_of(name) == [], "bad data is refused before any MLflow run exists"


@IN_PROCESS
def test_cli_on_a_diverging_run_names_the_step_and_the_fix(data_root, tmp_path, capsys):
    code = dae_main(["run", "--preset", "smoke", "--data-dir", str(data_root), "--no-download",
                     "--set", "data.train_limit=null", "--set", "data.test_limit=null",
                     "--set", "data.batch_size=40", "--set", "classifier.lr=10", "--set", "pretrain.epochs=2",
                     "--experiment", unique_experiment(), "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 5, err[-2000:]
    assert re.search(r"dae: training diverged: classifier epoch 1: mean loss \S+ is over ten times that of "
                     r"guessing \(23\.0\); lower the learning rate", err), err[-2000:]
