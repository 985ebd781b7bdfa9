"""Paired differences between two cells of the per-cell comparison that its table does not
pair (it pairs each cell with ``adam-noise`` or its noisy twin), for docs/comparison.md.

    python results/tuned-per-cell/paired.py sgd-noise no-pretraining

reads the cells' runs from the comparisons' summaries here (``comparison.json``, and the
rerun of no-pretraining at its stable rate, ``comparison-no-pretraining-stable.json``,
whose no-pretraining runs replace the main grid's) and their metrics from ``mlflow.db``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

from dae_core.comparison import interval

HERE = Path(__file__).resolve().parent
METRICS = {"final_accuracy": "test/accuracy", "noisy_accuracy": "test/noisy_accuracy"}


def runs_by_cell() -> dict[str, dict[int, str]]:
    runs: dict[str, dict[int, str]] = {}
    for summary in ("comparison.json", "comparison-no-pretraining-stable.json"):
        report = json.loads((HERE / summary).read_text())
        for run in report["runs"]:
            if summary == "comparison.json" or run["cell"] == "no-pretraining":
                runs.setdefault(run["cell"], {})[run["seed"]] = run["mlflow_run_id"]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell")
    parser.add_argument("reference")
    args = parser.parse_args()
    runs = runs_by_cell()
    store = sqlite3.connect(f"file:{HERE / 'mlflow.db'}?mode=ro", uri=True)

    def value(run_id: str, key: str) -> float:
        (found,) = store.execute("SELECT value FROM latest_metrics WHERE run_uuid = ? AND key = ?",
                                 (run_id, key)).fetchone()
        return float(found)

    seeds = sorted(set(runs[args.cell]) & set(runs[args.reference]))
    for metric, key in METRICS.items():
        difference = interval([value(runs[args.cell][seed], key) - value(runs[args.reference][seed], key)
                               for seed in seeds])
        print(f"{args.cell} minus {args.reference}, {metric}: {difference.mean:+.4g} "
              f"(95% CI {difference.ci_low:+.4g} to {difference.ci_high:+.4g}, n={difference.n})")


if __name__ == "__main__":
    main()
