"""Orchestration overhead, scaling and memory of the real ``dae`` command (docs/benchmarks.md,
sections 3-5). Each ``dae`` is a fresh process, timed from outside.

Overhead = wall time - the bare training time, which the run's own summary reports
(``timing.*_loop_s``: the epoch loops, without data loading, checkpoints or tracking).

    python benchmarks/overhead.py --data-dir ../shared/data [--parts embedded servers compare lecture]

- ``embedded``: the default mode (temporary Prefect server, local SQLite MLflow store);
  a first run on a fresh PREFECT_HOME and store, then warm runs.
- ``servers``: against a Prefect server and an MLflow server, both on fresh PostgreSQL
  databases at 127.0.0.1:5432 (started and dropped here), plus the latency of one
  per-epoch ``log_batch`` and MLflow's share of a lecture run's training.
- ``compare``: ``dae compare`` with 2 cells x 2 seeds at ``--parallel`` 1 and 2.
- ``cells``: a grid's overhead per cell after the first: ``dae compare`` of one cell over
  several seeds, each cell's time from the previous cell's end to its own end, less its
  epoch loops (from the child runs in MLflow).
- ``lecture``: the full lecture preset once: wall, training, peak RSS and its numbers.
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
from unittest import mock

BIN = Path(sys.executable).parent
SHORT = ["--set", "pretrain.epochs=3", "--set", "classifier.epochs=2"]
LECTURE_EPOCHS = {"pretrain": 20, "classifier": 10}


def run_dae(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Runs ``dae ARGS``; returns (wall seconds, peak RSS in GB) of that process."""
    started = time.perf_counter()
    process = subprocess.Popen([str(BIN / "dae"), *args], env=env, cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"dae {' '.join(args)} failed:\n{process.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024**2


def timed_run(env: dict[str, str], data_dir: Path, folder: Path, tag: str,
              extra: list[str]) -> dict[str, float]:
    summary = folder / f"{tag}.json"
    wall, rss = run_dae(["run", "--data-dir", str(data_dir), "--no-download", *extra,
                         "--summary-json", str(summary), "--work-dir", str(folder / "work")], env, folder)
    result = json.loads(summary.read_text())
    timing = result["timing"]
    bare = timing["pretrain_loop_s"] + timing["classifier_loop_s"]
    stages = timing["pretrain_s"] + timing["classifier_s"]
    print(f"| {tag} | {wall:.1f} s | {bare:.1f} s | {stages:.1f} s | **{wall - bare:.1f} s** | {rss:.2f} GB |",
          flush=True)
    return {"wall": wall, "bare": bare, "stages": stages, "rss_gb": rss, **timing,
            "summary": result}


def table_head(title: str) -> None:
    print(f"\n{title}\n\n| run | wall | training (epoch loops) | training stages | overhead | peak RSS |\n"
          "|---|---|---|---|---|---|", flush=True)


def embedded(data_dir: Path, base: dict[str, str], warm_runs: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dae-embedded-"))
    env = {**base, "PREFECT_HOME": str(folder / "prefect")}
    table_head("Embedded default (temporary Prefect server, sqlite MLflow store), 3 + 2 epochs")
    timed_run(env, data_dir, folder, "first run (fresh PREFECT_HOME and store)", SHORT)
    overheads = [timed_run(env, data_dir, folder, f"warm run {k}", SHORT) for k in range(1, warm_runs + 1)]
    print(f"\nmedian warm overhead: {statistics.median(r['wall'] - r['bare'] for r in overheads):.1f} s")


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


def servers(data_dir: Path, base: dict[str, str], warm_runs: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the servers helper lives in tests/
    from tests import stack

    folder = Path(tempfile.mkdtemp(prefix="dae-servers-"))
    base = {**base, "PREFECT_HOME": str(folder / "prefect")}
    credentials = stack.Credentials()
    with stack.servers(folder, base, str(folder / "artifacts"), credentials) as (prefect_api, mlflow_uri):
        users = subprocess.run(stack.USERS, env={**base, "MLFLOW_TRACKING_URI": mlflow_uri, **credentials.users_env()},
                               capture_output=True, text=True)
        assert users.returncode == 0, users.stderr
        # As docker-compose.yml runs it: both servers ask for credentials; runs log as the worker.
        worker = credentials.client_env(credentials.worker)
        env = {**base, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": mlflow_uri, **worker}
        table_head("Against a Prefect server and an MLflow server (PostgreSQL), 3 + 2 epochs")
        timed_run(env, data_dir, folder, "first run", SHORT)
        runs = [timed_run(env, data_dir, folder, f"warm run {k}", SHORT) for k in range(1, warm_runs + 1)]
        print(f"\nmedian warm overhead: {statistics.median(r['wall'] - r['bare'] for r in runs):.1f} s")
        with mock.patch.dict(os.environ, worker):  # MLflow's client reads its credentials there
            latency = log_batch_latency_ms(mlflow_uri)
        last = runs[-1]
        # A lecture run's bare training, from this machine's per-epoch times above.
        lecture_training = (last["pretrain_loop_s"] / 3 * LECTURE_EPOCHS["pretrain"]
                            + last["classifier_loop_s"] / 2 * LECTURE_EPOCHS["classifier"])
        logging_s = sum(LECTURE_EPOCHS.values()) * latency / 1000
        print(f"\nlog_batch to the MLflow server: median {latency:.1f} ms; a lecture run sends one per epoch: "
              f"{logging_s:.2f} s = {100 * logging_s / lecture_training:.1f}% of its {lecture_training:.1f} s "
              "of training")


def compare(data_dir: Path, base: dict[str, str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dae-compare-"))
    env = {**base, "PREFECT_HOME": str(folder / "prefect")}
    print("\n`dae compare --cells adam-noise sgd-noise --seeds 2` (4 runs of 3 + 2 epochs)\n\n"
          "| --parallel | wall | speed-up |\n|---|---|---|", flush=True)
    # One short run first, so that neither k pays the fresh store's migrations.
    run_dae(["run", "--data-dir", str(data_dir), "--no-download", "--set", "pretrain.epochs=1", "--set",
             "classifier.epochs=1", "--work-dir", str(folder / "work")], env, folder)
    walls = {}
    for parallel in (1, 2):
        walls[parallel], _ = run_dae(["compare", "--data-dir", str(data_dir), "--no-download", *SHORT,
                                      "--seeds", "2", "--cells", "adam-noise", "sgd-noise", "--parallel",
                                      str(parallel), "--work-dir", str(folder / "work")], env, folder)
        print(f"| {parallel} | {walls[parallel]:.1f} s | {walls[1] / walls[parallel]:.2f} |", flush=True)


def cells(data_dir: Path, base: dict[str, str], seeds: int = 5) -> None:
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="dae-cells-"))
    store = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**base, "PREFECT_HOME": str(folder / "prefect"), "MLFLOW_TRACKING_URI": store}
    summary = folder / "grid.json"
    wall, _ = run_dae(["compare", "--data-dir", str(data_dir), "--no-download", *SHORT, "--seeds", str(seeds),
                       "--cells", "adam-noise", "--work-dir", str(folder / "work"), "--summary-json", str(summary)],
                      env, folder)
    client = MlflowClient(tracking_uri=store)
    runs = sorted((client.get_run(ref["mlflow_run_id"]) for ref in json.loads(summary.read_text())["runs"]),
                  key=lambda run: run.info.start_time)
    print(f"\n`dae compare --cells adam-noise --seeds {seeds}` (3 + 2 epochs each): wall {wall:.1f} s\n\n"
          "| cell | since the previous cell ended | epoch loops | overhead | of it, between runs |\n"
          "|---|---|---|---|---|", flush=True)
    overheads = []
    for previous, run in zip([None, *runs[:-1]], runs, strict=True):
        metrics = run.data.metrics
        loops = metrics["timing/pretrain_loop_s"] + metrics["timing/classifier_loop_s"]
        began = previous.info.end_time if previous else run.info.start_time
        span = (run.info.end_time - began) / 1000
        between = (run.info.start_time - previous.info.end_time) / 1000 if previous else 0.0
        print(f"| {run.info.run_name} | {span:.2f} s | {loops:.2f} s | **{span - loops:.2f} s** | {between:.2f} s |",
              flush=True)
        if previous:
            overheads.append(span - loops)
    print(f"\nmedian overhead per cell after the first: {statistics.median(overheads):.2f} s "
          "(the first cell's row counts from its own MLflow run's start)")


def lecture(data_dir: Path, base: dict[str, str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dae-lecture-"))
    env = {**base, "PREFECT_HOME": str(folder / "prefect")}
    table_head("The full lecture preset (`dae run --preset lecture`), fresh PREFECT_HOME and store")
    result = timed_run(env, data_dir, folder, "lecture", [])
    summary = result["summary"]
    mse, accuracy = summary["pretrain"]["mse"], summary["classifier"]["test_accuracy"]
    print(f"\nMSE by epoch: {', '.join(f'{v:.4f}' for v in mse)}\n"
          f"test accuracy by epoch: {', '.join(f'{v:.2f}' for v in accuracy)}\n"
          f"per class: {', '.join(f'{v:.1f}' for v in summary['test']['per_class_accuracy'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--parts", nargs="+", default=["embedded", "servers", "compare", "cells", "lecture"],
                        choices=["embedded", "servers", "compare", "cells", "lecture"])
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    base = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    base.pop("PREFECT_API_URL", None)
    base.pop("MLFLOW_TRACKING_URI", None)
    parts = {"embedded": lambda: embedded(data_dir, base, args.warm_runs),
             "servers": lambda: servers(data_dir, base, args.warm_runs),
             "compare": lambda: compare(data_dir, base),
             "cells": lambda: cells(data_dir, base),
             "lecture": lambda: lecture(data_dir, base)}
    for part in args.parts:
        parts[part]()


if __name__ == "__main__":
    main()
