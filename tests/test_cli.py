"""The installed ``dae`` command in its default embedded mode: no Prefect API URL, no
tracking URI, a fresh PREFECT_HOME."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_dae_run_boots_one_temporary_server_early_and_stops_it(data_root, tmp_path):
    # PREFECT_LOGGING_LEVEL too: an in-process `dae` call without --verbose (tests/test_flows.py)
    # sets it to WARNING in this process, which would hide the server's INFO line.
    env = {key: value for key, value in os.environ.items()
           if key not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_LOGGING_LEVEL")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    result = subprocess.run(
        [str(BIN / "dae"), "run", "--preset", "smoke", "--data-dir", str(data_root), "--no-download",
         "--set", "data.train_limit=null", "--set", "data.test_limit=null", "--set", "data.batch_size=40",
         "--summary-json", str(tmp_path / "summary.json"), "--verbose"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
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
