"""The fronts of issue 36 for docs/comparison.md, "The trade-off itself": one figure of every
recipe's front with its points trained over seeds, and the tables of those points.

    python results/tuned-fronts/fronts.py

reads the tuning's summary here (``tuning.json``: each recipe's front on the validation
split) and the comparisons' (``comparison-<point>.json``, one per named point, each over the
same recipes and seeds), writes ``docs/images/comparison-fronts.png`` and prints the tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dae_core.figures import fronts_with_seed_bands
from dae_core.pareto import FrontPoint, choose

HERE = Path(__file__).resolve().parent
FIGURE = HERE.parents[1] / "docs" / "images" / "comparison-fronts.png"
OBJECTIVES = ("accuracy", "noisy-accuracy")
POINTS = ("best-accuracy", "knee", "best-noisy-accuracy")


def _ci(row: dict) -> str:
    return f"{row['mean']:.2f} ({row['ci_low']:.2f} to {row['ci_high']:.2f})"


def _difference(row: dict) -> str:
    if math.isnan(row["diff_mean"]):
        return ""
    return f"{row['diff_mean']:+.2f} ({row['diff_ci_low']:+.2f} to {row['diff_ci_high']:+.2f})"


def main() -> None:
    tuning = json.loads((HERE / "tuning.json").read_text())
    fronts = {cell: [FrontPoint.model_validate(point) for point in result["front"]]
              for cell, result in tuning["cells"].items()}
    validation = {cell: ([p.values["accuracy"] for p in front], [p.values["noisy-accuracy"] for p in front])
                  for cell, front in fronts.items()}
    seeded: dict[str, list] = {}
    points = ["| recipe | point | trial | parameters | validation clean / noisy | test clean (95% CI) | "
              "test noisy (95% CI) |", "|---|---|---|---|---|---|---|"]
    pairs = ["| point | recipe | against | clean difference (95% CI) | noisy difference (95% CI) | seeds |",
             "|---|---|---|---|---|---|"]
    for name in POINTS:
        path = HERE / f"comparison-{name}.json"
        if not path.exists():
            continue
        rows = {(row["cell"], row["metric"]): row for row in json.loads(path.read_text())["rows"]}
        for cell, front in fronts.items():
            if (cell, "final_accuracy") not in rows:
                continue
            chosen = choose(front, OBJECTIVES, name)
            clean, noisy = rows[(cell, "final_accuracy")], rows[(cell, "noisy_accuracy")]
            seeded.setdefault(cell, []).append((name, (clean["mean"], clean["ci_low"], clean["ci_high"]),
                                                (noisy["mean"], noisy["ci_low"], noisy["ci_high"])))
            params = ", ".join(f"`{key}` = {value:.3g}" for key, value in chosen.params.items())
            points.append(f"| {cell} | {name} | {chosen.trial} | {params} | {chosen.values['accuracy']:.2f} / "
                          f"{chosen.values['noisy-accuracy']:.2f} | {_ci(clean)} | {_ci(noisy)} |")
            if clean["reference"] != cell:
                pairs.append(f"| {name} | {cell} | {clean['reference']} | {_difference(clean)} | "
                             f"{_difference(noisy)} | {clean['n']} |")
    fronts_with_seed_bands(validation, seeded, FIGURE,
                           "Clean against noisy accuracy: validation fronts, test points over seeds")
    print("\n".join(points))
    print()
    print("\n".join(pairs))
    print(f"\nfigure: {FIGURE.relative_to(HERE.parents[1])}")


if __name__ == "__main__":
    main()
