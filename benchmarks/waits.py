"""What a person waits for (docs/benchmarks.md, section 7): ``dae run --preset smoke`` and
``dae predict`` on one picture and on the 10,000 test images, each a fresh process timed
from outside, this checkout against a baseline commit side by side (rounds interleaved, so
that a slow spell of the machine hits both), beside the bare imports they are measured
against.

    python benchmarks/waits.py --data-dir ../shared/data [--baseline a9b8dfd] [--rounds 3]

The baseline is checked out into a temporary git worktree and run with this venv (its
modules first on the path). Both ways share one MLflow store and one Prefect home per way,
warmed by a first run that is not counted. ``--parts`` picks ``imports``, ``smoke``,
``predict`` (default: all three) and ``lecture`` (the full lecture once each way, ~1 min
each: its wall against its epoch loops).
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
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENTRY = "import sys; sys.path.insert(0, sys.argv.pop(1)); from dae_cli.main import entrypoint; entrypoint()"


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def dae(code: Path, *args: str) -> list[str]:
    """``dae ARGS`` from the checkout at ``code``, with this venv."""
    return [PYTHON, "-c", ENTRY, str(code), *args]


def interleaved(ways: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, measure in ways.items():
            times[name].append(measure())
    return times


def report(what: str, times: dict[str, list[float]]) -> dict[str, float]:
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"| {what} | {name} | **{medians[name]:.2f} s** | {', '.join(f'{v:.2f}' for v in values)} |",
              flush=True)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--baseline", default="a9b8dfd", help="commit to compare with (default: before issue 24)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", default=["imports", "smoke", "predict"],
                        choices=["imports", "smoke", "predict", "lecture"])
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="dae-waits-") as scratch_name:
        scratch = Path(scratch_name)
        baseline = scratch / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline],
                       check=True, capture_output=True)
        try:
            codes = {f"baseline {args.baseline}": baseline, "this checkout": REPO}
            folders = {name: scratch / f"way{index}" for index, name in enumerate(codes)}
            envs = {}
            for name, folder in folders.items():
                folder.mkdir()
                env = {key: value for key, value in os.environ.items()
                       if key not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
                envs[name] = {**env, "PREFECT_HOME": str(folder / "prefect"), "DAE_MODEL_CACHE": str(folder / "cache")}
            print("| what | way | median | runs |\n|---|---|---|---|", flush=True)
            if "imports" in args.parts:
                env = envs["this checkout"]
                results["imports"] = report("bare imports", interleaved({
                    "python -c 'import torch'": lambda: timed([PYTHON, "-c", "import torch"], scratch, env),
                    "python -c 'import torch, prefect, mlflow'": lambda: timed(
                        [PYTHON, "-c", "import torch, prefect, mlflow"], scratch, env),
                }, args.rounds))
            smoke = ["run", "--preset", "smoke", "--data-dir", str(data_dir), "--no-download"]
            for name, code in codes.items():  # warm-up: each way's stores migrate, a champion exists
                timed(dae(code, *smoke), folders[name], envs[name])
            if "smoke" in args.parts:
                results["smoke"] = report("`dae run --preset smoke`", interleaved(
                    {name: lambda name=name, code=code: timed(dae(code, *smoke), folders[name], envs[name])
                     for name, code in codes.items()}, args.rounds))
            if "predict" in args.parts:
                picture = REPO / "docs" / "images" / "mlflow-run.png"
                test_images = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
                for name, code in codes.items():  # the first call loads through MLflow (and keeps the weights)
                    timed(dae(code, "predict", str(picture)), folders[name], envs[name])
                results["predict one"] = report("`dae predict` one picture", interleaved(
                    {name: lambda name=name, code=code: timed(dae(code, "predict", str(picture)), folders[name],
                                                              envs[name]) for name, code in codes.items()},
                    args.rounds))
                results["predict 10k"] = report("`dae predict` 10,000 test images", interleaved(
                    {name: lambda name=name, code=code: timed(dae(code, "predict", str(test_images)),
                                                              folders[name], envs[name])
                     for name, code in codes.items()}, args.rounds))
            if "lecture" in args.parts:
                for name, code in codes.items():
                    summary = folders[name] / "lecture.json"
                    wall = timed(dae(code, "run", "--preset", "lecture", "--data-dir", str(data_dir),
                                     "--no-download", "--summary-json", str(summary)), folders[name], envs[name])
                    timing = json.loads(summary.read_text())["timing"]
                    loops = timing["pretrain_loop_s"] + timing["classifier_loop_s"]
                    print(f"| lecture | {name} | wall **{wall:.1f} s** | loops {loops:.1f} s, "
                          f"around them {wall - loops:.1f} s |", flush=True)
                    results[f"lecture {name}"] = {"wall": wall, "loops": loops}
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)],
                           capture_output=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
