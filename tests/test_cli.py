"""The installed ``dae`` command in its default embedded mode: no Prefect API URL, no
tracking URI, a fresh PREFECT_HOME."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TRAIN_IMAGES

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
        cwd=tmp_path, env=_embedded_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The server started before the imports is the one the flow used: Prefect started no other.
    output = result.stdout + result.stderr
    servers = re.findall(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", output)
    assert len(servers) == 1, output[-3000:]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(servers[0]))) != 0, "the temporary server outlived dae"

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0
    assert (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_without_prefects_private_server_api_dae_still_runs_and_stays_quiet(data_root, tmp_path):
    """A Prefect release without the API of the early start: Prefect's own path runs the flow.
    Without --verbose the terminal shows no INFO lines."""
    code = (
        "import sys\n"
        "import dae_cli.prefect_server as early\n"
        "early.EARLY_START_API = ('prefect.server.api.server', 'NoSuchServerInThisRelease')\n"
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
