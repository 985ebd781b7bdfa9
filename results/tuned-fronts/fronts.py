"""The fronts of issue 36 for docs/comparison.md, "The trade-off itself": one figure of every
recipe's front with its points trained over seeds, and the tables of those points.

    python results/tuned-fronts/fronts.py          # the four recipes
    python results/tuned-fronts/fronts.py frozen   # the frozen pair (a linear probe)

reads a tuning's summary here (``tuning.json``, ``tuning-frozen.json``: each recipe's front
on the validation split), its comparisons' (``comparison-<point>.json``,
``comparison-frozen-<point>.json``: one per named point, each over the same recipes and
seeds) and their runs' test metrics (``mlflow.db``), writes the figure
(``docs/images/comparison-fronts.png``, ``comparison-fronts-frozen.png``) and prints the
tables, with the differences the lecture's claims are about paired by seed.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from dae_core.comparison import interval
from dae_core.figures import fronts_with_seed_bands
from dae_core.pareto import FrontPoint, choose

HERE = Path(__file__).resolve().parent
IMAGES = HERE.parents[1] / "docs" / "images"
OBJECTIVES = ("accuracy", "noisy-accuracy")
POINTS = ("best-accuracy", "knee", "best-noisy-accuracy")
METRICS = {"clean": "test/accuracy", "noisy": "test/noisy_accuracy"}


@dataclass(frozen=True)
class Mapping:
    """One tuning's fronts and the seeded comparisons of their points, by the files' suffix."""

    suffix: str
    # The claims' pairs: (recipe, against it).
    pairs: tuple[tuple[str, str], ...]
    title: str
    # Clean validation accuracies at which the fronts are compared: the best noisy accuracy
    # each recipe reaches while keeping at least that much clean accuracy.
    levels: tuple[float, ...]
    # Points of two recipes' fronts that reach the same clean accuracy though they are named
    # differently: (recipe, its point, against it, that one's point).
    crossed: tuple[tuple[str, str, str, str], ...] = ()


MAPPINGS = {
    "recipes": Mapping("", (("adam-clean", "adam-noise"), ("sgd-clean", "sgd-noise"), ("sgd-noise", "adam-noise"),
                            ("sgd-clean", "adam-clean")),
                       "Clean against noisy accuracy: each recipe's front (validation) and its points over seeds "
                       "(test)", (92.0, 93.0, 94.0, 95.0, 96.0)),
    "frozen": Mapping("-frozen", (("adam-clean-frozen", "adam-noise-frozen"),),
                      "A frozen encoder (a linear probe): each recipe's front (validation) and its points over "
                      "seeds (test)", (90.5, 90.6, 90.75, 90.9),
                      (("adam-clean-frozen", "best-noisy-accuracy", "adam-noise-frozen", "knee"),)),
}


def _ci(row: dict) -> str:
    return f"{row['mean']:.2f} ({row['ci_low']:.2f} to {row['ci_high']:.2f})"


def _test_metrics(summary: dict) -> dict[tuple[str, int], dict[str, float]]:
    """Each run's clean and noisy test accuracy, by (cell, seed)."""
    store = sqlite3.connect(f"file:{HERE / 'mlflow.db'}?mode=ro", uri=True)
    found = {}
    for run in summary["runs"]:
        rows = dict(store.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?",
                                  (run["mlflow_run_id"],)).fetchall())
        found[(run["cell"], run["seed"])] = {name: rows[key] for name, key in METRICS.items()}
    return found


def _paired(metrics: dict[tuple[str, int], dict[str, float]], cell: str, reference: str, name: str,
            reference_metrics: dict[tuple[str, int], dict[str, float]] | None = None) -> str:
    against = metrics if reference_metrics is None else reference_metrics
    seeds = sorted(seed for (c, seed) in metrics if c == cell and (reference, seed) in against)
    difference = interval([metrics[(cell, seed)][name] - against[(reference, seed)][name] for seed in seeds])
    return f"{difference.mean:+.2f} ({difference.ci_low:+.2f} to {difference.ci_high:+.2f})"


def at_levels(fronts: dict[str, list[FrontPoint]], levels: tuple[float, ...]) -> str:
    """The best noisy validation accuracy of each front at or above each clean level."""
    lines = [f"| clean accuracy at least | {' | '.join(fronts)} |", "|---|" + "---|" * len(fronts)]
    for level in levels:
        cells = []
        for front in fronts.values():
            kept = [p.values["noisy-accuracy"] for p in front if p.values["accuracy"] >= level]
            cells.append(f"{max(kept):.2f}" if kept else "-")
        lines.append(f"| {level:g} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(mapping: Mapping) -> None:
    figure = IMAGES / f"comparison-fronts{mapping.suffix}.png"
    tuning = json.loads((HERE / f"tuning{mapping.suffix}.json").read_text())
    fronts = {cell: [FrontPoint.model_validate(point) for point in result["front"]]
              for cell, result in tuning["cells"].items()}
    print("| recipe | trials on the front / complete / diverged | front (clean / noisy, validation) |")
    print("|---|---|---|")
    for cell, front in fronts.items():
        result = tuning["cells"][cell]
        shown = ", ".join(f"{p.values['accuracy']:.2f} / {p.values['noisy-accuracy']:.2f}" for p in front)
        print(f"| {cell} | {len(front)} / {result['trials'] - result['pruned']} / {result['pruned']} | {shown} |")
    print()
    print(at_levels(fronts, mapping.levels))
    print()
    validation = {cell: ([p.values["accuracy"] for p in front], [p.values["noisy-accuracy"] for p in front])
                  for cell, front in fronts.items()}
    seeded: dict[str, list] = {}
    points = ["| recipe | point | trial | parameters | validation clean / noisy | test clean (95% CI) | "
              "test noisy (95% CI) |", "|---|---|---|---|---|---|---|"]
    pairs = ["| point | recipe | against | clean difference (95% CI) | noisy difference (95% CI) | seeds |",
             "|---|---|---|---|---|---|"]
    seeds_table = ["| recipe | point | clean accuracy by seed | noisy accuracy by seed |", "|---|---|---|---|"]
    measured: dict[str, dict[tuple[str, int], dict[str, float]]] = {}  # each point's runs, for the crossed pairs
    for name in POINTS:
        path = HERE / f"comparison{mapping.suffix}-{name}.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        rows = {(row["cell"], row["metric"]): row for row in summary["rows"]}
        metrics = measured[name] = _test_metrics(summary)
        for cell, front in fronts.items():
            if (cell, "final_accuracy") not in rows:
                continue
            chosen = choose(front, OBJECTIVES, name)
            clean, noisy = rows[(cell, "final_accuracy")], rows[(cell, "noisy_accuracy")]
            runs = [metrics[key] for key in sorted(key for key in metrics if key[0] == cell)]
            seeded.setdefault(cell, []).append((name, (clean["mean"], clean["ci_low"], clean["ci_high"]),
                                                (noisy["mean"], noisy["ci_low"], noisy["ci_high"]),
                                                [(run["clean"], run["noisy"]) for run in runs]))
            params = ", ".join(f"`{key}` = {value:.3g}" for key, value in chosen.params.items())
            points.append(f"| {cell} | {name} | {chosen.trial} | {params} | {chosen.values['accuracy']:.2f} / "
                          f"{chosen.values['noisy-accuracy']:.2f} | {_ci(clean)} | {_ci(noisy)} |")
            clean_by_seed = ", ".join(f"{values['clean']:.2f}" for values in runs)
            noisy_by_seed = ", ".join(f"{values['noisy']:.2f}" for values in runs)
            seeds_table.append(f"| {cell} | {name} | {clean_by_seed} | {noisy_by_seed} |")
        for cell, reference in mapping.pairs:
            if (cell, "final_accuracy") in rows and (reference, "final_accuracy") in rows:
                seeds = sum(1 for (c, _) in metrics if c == cell)
                pairs.append(f"| {name} | {cell} | {reference} | {_paired(metrics, cell, reference, 'clean')} | "
                             f"{_paired(metrics, cell, reference, 'noisy')} | {seeds} |")
    for cell, point, reference, its_point in mapping.crossed:
        if point in measured and its_point in measured:
            seeds = sum(1 for (c, seed) in measured[point] if c == cell and (reference, seed) in measured[its_point])
            differences = [_paired(measured[point], cell, reference, metric, measured[its_point])
                           for metric in ("clean", "noisy")]
            pairs.append(f"| {point} against {its_point} | {cell} | {reference} | {' | '.join(differences)} | "
                         f"{seeds} |")
    fronts_with_seed_bands(validation, seeded, figure, mapping.title)
    print("\n".join(points))
    print()
    print("\n".join(pairs))
    print()
    print("\n".join(seeds_table))
    print(f"\nfigure: {figure.relative_to(HERE.parents[1])}")


if __name__ == "__main__":
    main(MAPPINGS[sys.argv[1] if len(sys.argv) > 1 else "recipes"])
