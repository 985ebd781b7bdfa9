"""`dae run` against running servers: a Prefect server and an MLflow server (both on fresh
PostgreSQL databases at 127.0.0.1:5432), started and stopped by this script.

Prints the wall time, the training time from the run's summary and their difference
(orchestration overhead, target <= 3 s), and the latency of one per-epoch `log_batch`
request to the MLflow server, from which MLflow's share of a lecture run follows.

    python benchmarks/remote_overhead.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import stack

BIN = Path(sys.executable).parent


def timed_run(env: dict[str, str], data_dir: Path, folder: Path, tag: str) -> tuple[float, float]:
    summary = folder / f"{tag}.json"
    started = time.perf_counter()
    subprocess.run([str(BIN / "dae"), "run", "--data-dir", str(data_dir), "--no-download", "--set",
                    "pretrain.epochs=3", "--set", "classifier.epochs=2", "--summary-json", str(summary),
                    "--work-dir", str(folder / "work")], env=env, cwd=folder, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    timing = json.loads(summary.read_text())["timing"]
    return wall, timing["pretrain_s"] + timing["classifier_s"]


def log_batch_latency_ms(uri: str, requests: int = 50) -> float:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment(f"latency-{time.time_ns()}"))
    samples = []
    for step in range(requests):
        began = time.perf_counter()
        client.log_batch(run.info.run_id, metrics=[Metric("pretrain/mse", 0.1, 0, step),
                                                   Metric("pretrain/loss", 0.1, 0, step)])
        samples.append(time.perf_counter() - began)
    return 1000 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dae-remote-"))
    base = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_HOME": str(folder / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    base.pop("PREFECT_API_URL", None)
    with stack.servers(folder, base, str(folder / "artifacts")) as (prefect_api, mlflow_uri):
        env = {**base, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": mlflow_uri}
        for tag in ("first", "second"):
            wall, training = timed_run(env, args.data_dir.resolve(), folder, tag)
            print(f"{tag} run: wall {wall:.1f} s, training {training:.1f} s, overhead {wall - training:.1f} s")
        latency = log_batch_latency_ms(env["MLFLOW_TRACKING_URI"])
        print(f"log_batch median latency {latency:.1f} ms; a lecture run makes 30 per-epoch requests: "
              f"{30 * latency / 1000:.2f} s, {100 * 30 * latency / 1000 / 55:.2f}% of its ~55 s of training")


if __name__ == "__main__":
    main()
