"""The lecture's comparison: pretraining optimizer x input noise, plus a baseline with
no pretraining, each over several seeds; summary statistics and the verdicts.

Intervals are two-sided 95% Student-t intervals over seeds; differences against the
lecture's cell (adam + noise) are paired by seed, which removes the seed-to-seed
variance that the cells share.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from dae_core.config import ExperimentConfig, deep_merge
from dae_core.summary import RunSummary

LECTURE_CELL = "adam-noise"
# Vanilla SGD needs a far larger step than Adam to move at all in 20 epochs: at 0.1 or 1
# its MSE stays near the blank-image level; at 10, the fixed grid's rate, it ends at ~0.024
# and still falls. Tuned within the config's bound of 1000 it goes below 0.01 (0.0081 at
# lr 111): the fixed grid keeps 10, docs/comparison.md ("Tuned") has both.
SGD_PRETRAIN_LR = 10.0
CellName = Literal["adam-noise", "adam-clean", "sgd-noise", "sgd-clean", "no-pretraining",
                   "adam-noise-frozen", "adam-clean-frozen", "adam-noise-noisytune", "adam-clean-noisytune"]
_FROZEN = {"classifier": {"freeze_encoder": True}}
_NOISY_TUNING = {"classifier": {"train_noise": {"enabled": True}}}
_CLEAN_PRETRAINING = {"pretrain": {"noise": {"enabled": False}}}
CELLS: dict[CellName, dict[str, Any]] = {
    "adam-noise": {},
    "adam-clean": _CLEAN_PRETRAINING,
    "sgd-noise": {"pretrain": {"optimizer": "sgd"}},
    "sgd-clean": {"pretrain": {"optimizer": "sgd", "noise": {"enabled": False}}},
    "no-pretraining": {"pretrain": {"epochs": 0}},
    # The robustness question (docs/comparison.md): what noise in pretraining gives when
    # fine-tuning cannot change the encoder (a linear probe of its features), and when
    # fine-tuning itself sees noisy images.
    "adam-noise-frozen": _FROZEN,
    "adam-clean-frozen": {**_CLEAN_PRETRAINING, **_FROZEN},
    "adam-noise-noisytune": _NOISY_TUNING,
    "adam-clean-noisytune": {**_CLEAN_PRETRAINING, **_NOISY_TUNING},
}
# `dae compare` without --cells: the lecture's grid and its baseline.
# The largest grid, tuning (trials per cell) and the most cells or trials at once, for the
# flows' signatures and the command's flags alike.
MAX_SEEDS, MAX_TRIALS, MAX_PARALLEL = 50, 1000, 64
DEFAULT_CELLS: list[CellName] = ["adam-noise", "adam-clean", "sgd-noise", "sgd-clean", "no-pretraining"]
# What a cell is paired with (same seeds) in the table: the lecture's cell, except where a
# claim compares two protocols that differ from it in the same way.
REFERENCES: dict[str, str] = {"adam-clean-frozen": "adam-noise-frozen", "adam-clean-noisytune": "adam-noise-noisytune"}

METRICS: dict[str, Callable[[RunSummary], float]] = {
    "final_accuracy": lambda s: s.test.accuracy,
    "epoch1_accuracy": lambda s: s.classifier.test_accuracy[0],
    "noisy_accuracy": lambda s: s.test.noisy_accuracy,
    "final_mse": lambda s: s.pretrain.mse[-1] if s.pretrain.mse else math.nan,
}


@dataclass(frozen=True)
class CellRun:
    """One grid cell trained at one seed."""

    cell: str
    seed: int
    summary: RunSummary


class CellRunRef(BaseModel):
    cell: str
    seed: int
    mlflow_run_id: str


class DivergedRun(BaseModel):
    """A cell run whose training diverged at its settings: recorded, left out of the statistics."""

    cell: str
    seed: int
    detail: str  # the divergence check's message (which stage and epoch, the loss)


def diverged_names(runs: Sequence[DivergedRun]) -> str:
    """``"no-pretraining seed 5, no-pretraining seed 7"``: as the terminal and the parent run's tag name them."""
    return ", ".join(f"{run.cell} seed {run.seed}" for run in runs)


# NaN marks what was not measured (one seed: no interval); JSON keeps it as NaN, not null.
_NAN_AS_NAN = ConfigDict(ser_json_inf_nan="constants")


class Interval(BaseModel):
    """Mean, sample std and two-sided 95% Student-t interval over ``n`` values; NaN where
    fewer than two."""

    model_config = _NAN_AS_NAN

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int


class ComparisonRow(BaseModel):
    """One cell and metric over seeds, and its paired difference against ``reference`` (the
    fields flat, as the summary JSON and comparison.csv have always had them)."""

    model_config = _NAN_AS_NAN

    cell: str
    metric: str
    reference: str  # the cell it is paired with by seed
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int
    diff_mean: float
    diff_std: float
    diff_ci_low: float
    diff_ci_high: float

    @classmethod
    def of(cls, cell: str, metric: str, reference: str, values: Interval, difference: Interval) -> ComparisonRow:
        return cls(cell=cell, metric=metric, reference=reference, **values.model_dump(),
                   **{f"diff_{key}": value for key, value in difference.model_dump(exclude={"n"}).items()})


class ComparisonReport(BaseModel):
    """The JSON of ``dae compare --summary-json`` and the dae-compare flow's return value."""

    rows: list[ComparisonRow]
    table_markdown: str
    findings_markdown: str
    mlflow_run_id: str  # the parent run
    runs: list[CellRunRef]
    reused: int = 0  # cell runs an interrupted run of this comparison had finished, not trained again
    diverged: list[DivergedRun] = []  # runs that diverged; the grid went on without them


def grid_key(grid: list[tuple[str, ExperimentConfig]], data_digest: str, where: str) -> str:
    """Identifies a comparison: its cells' configurations (seeds included), the data and
    where the cells run (``where``: in process, or the deployment they fan out to). A
    rerun with the same arguments has the same key and resumes."""
    identity = "".join(f"{cell}{config.model_dump_json()}" for cell, config in grid) + data_digest + where
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


def cell_config(base: ExperimentConfig, cell: str, seed: int, sgd_lr: float = SGD_PRETRAIN_LR,
                threads: int | None = None, tuned: dict[str, Any] | None = None) -> ExperimentConfig:
    """The base config with one cell's changes, a seed, (optionally) a thread count and
    the cell's tuned parameters (nested, e.g. ``{"pretrain": {"lr": 42.0}}``), which win."""
    if cell not in CELLS:
        raise ValueError(f"cell = {cell!r}: allowed cells are {list(CELLS)}")
    # Built fresh each call: writing into CELLS' nested dicts would change the grid itself.
    extra: dict[str, Any] = {"seed": seed}
    if CELLS[cell].get("pretrain", {}).get("optimizer") == "sgd":
        extra["pretrain"] = {"lr": sgd_lr}
    if threads is not None:
        extra["runtime"] = {"threads": threads}
    merged = deep_merge(deep_merge(base.model_dump(), CELLS[cell]), extra)
    return ExperimentConfig.model_validate(deep_merge(merged, tuned or {}))


def interval(values: list[float]) -> Interval:
    """Mean, sample std and 95% t-interval of the finite ``values``."""
    data = np.array([v for v in values if not math.isnan(v)], dtype=float)
    mean = float(data.mean()) if data.size else math.nan
    if data.size < 2:
        return Interval(mean=mean, std=math.nan, ci_low=math.nan, ci_high=math.nan, n=int(data.size))
    # Imported here: `dae run` imports this module for the CLI's choices, and scipy.stats
    # alone would add 0.4 s to every run's start.
    from scipy import stats

    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.975, data.size - 1)) * std / math.sqrt(data.size)
    return Interval(mean=mean, std=std, ci_low=mean - half, ci_high=mean + half, n=int(data.size))


def _by_cell(records: list[CellRun]) -> dict[str, dict[int, RunSummary]]:
    grouped: dict[str, dict[int, RunSummary]] = {}
    for record in records:
        grouped.setdefault(record.cell, {})[record.seed] = record.summary
    return grouped


def comparison_table(records: list[CellRun]) -> list[ComparisonRow]:
    """One row per cell and metric: mean, std, 95% CI, and the paired difference against
    the cell's reference (``REFERENCES``, else the lecture's cell) with its own 95% CI."""
    grouped = _by_cell(records)
    rows = []
    for cell, by_seed in grouped.items():
        reference_cell = REFERENCES.get(cell, LECTURE_CELL)
        reference = grouped.get(reference_cell, {})
        for metric, read in METRICS.items():
            paired = [read(by_seed[seed]) - read(reference[seed]) for seed in by_seed if seed in reference]
            rows.append(ComparisonRow.of(cell, metric, reference_cell, interval([read(s) for s in by_seed.values()]),
                                         interval(paired) if cell != LECTURE_CELL else interval([])))
    return rows


# (claim, cell, metric, direction the claim predicts for cell minus the lecture's cell)
CLAIMS = [
    ("Adam pretraining reconstructs better than vanilla SGD (lower final MSE)", "sgd-noise", "final_mse", +1),
    ("Pretraining helps: the lecture's cell beats a random encoder after 10 epochs",
     "no-pretraining", "final_accuracy", -1),
    ("Pretraining speeds up learning: higher accuracy after epoch 1", "no-pretraining", "epoch1_accuracy", -1),
    ("Denoising buys robustness: noise during pretraining raises accuracy on noisy test digits",
     "adam-clean", "noisy_accuracy", -1),
    ("Noise during pretraining raises clean test accuracy", "adam-clean", "final_accuracy", -1),
    ("Under a frozen encoder (a linear probe), noise during pretraining raises accuracy on noisy test digits",
     "adam-clean-frozen", "noisy_accuracy", -1),
    ("Under a frozen encoder, noise during pretraining raises clean test accuracy",
     "adam-clean-frozen", "final_accuracy", -1),
    ("Fine-tuned on noisy digits, noise during pretraining still raises accuracy on noisy test digits",
     "adam-clean-noisytune", "noisy_accuracy", -1),
]


def findings(rows: list[ComparisonRow], diverged: Sequence[DivergedRun] = ()) -> list[str]:
    """A verdict per claim from the paired 95% interval: supported when it excludes zero in
    the claimed direction, contradicted when it excludes zero the other way, otherwise
    not shown by this data. A verdict whose cells lost seeds to divergence says which."""
    lookup = {(row.cell, row.metric): row for row in rows}
    lost: dict[str, list[int]] = {}
    for run in diverged:
        lost.setdefault(run.cell, []).append(run.seed)
    verdicts = []
    for claim, cell, metric, sign in CLAIMS:
        row = lookup.get((cell, metric))
        if row is None or math.isnan(row.diff_ci_low):
            verdicts.append(f"- {claim}: not testable here (needs the {cell} and "
                            f"{REFERENCES.get(cell, LECTURE_CELL)} cells and two or more seeds)")
            continue
        low, high = row.diff_ci_low, row.diff_ci_high
        if (sign > 0 and low > 0) or (sign < 0 and high < 0):
            verdict = "supported"
        elif (sign > 0 and high < 0) or (sign < 0 and low > 0):
            verdict = "contradicted"
        else:
            verdict = "not shown (the interval includes zero)"
        left_out = "".join(f"; {name} seed {', '.join(map(str, sorted(lost[name])))} diverged, left out"
                           for name in (cell, row.reference) if name in lost)
        verdicts.append(f"- {claim}: **{verdict}**; {cell} minus {row.reference} = "
                        f"{row.diff_mean:+.4g} (95% CI {low:+.4g} to {high:+.4g}, n={row.n}{left_out})")
    sgd = lookup.get(("sgd-noise", "final_mse"))
    if sgd is not None and not math.isnan(sgd.mean):
        spread = (f"95% CI {sgd.ci_low:.4f} to {sgd.ci_high:.4f}" if sgd.n > 1
                  else "one seed: two or more give an interval")
        verdicts.append(f"- Vanilla SGD pretraining's MSE stays near or above 0.01: final MSE "
                        f"{sgd.mean:.4f} ({spread})")
    verdicts.extend(f"- Diverged at its settings, left out of every statistic: {diverged_names([run])} "
                    f"({run.detail})" for run in diverged)
    return verdicts


def curve_bands(records: list[CellRun], read: Callable[[RunSummary], list[float]]
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per cell, the per-epoch mean and std over seeds of one curve (cells whose curve is
    empty, such as the no-pretraining baseline's MSE, are left out)."""
    bands = {}
    for cell, by_seed in _by_cell(records).items():
        curves = np.array([read(summary) for summary in by_seed.values()], dtype=float)
        if curves.size:
            std = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(curves.shape[1])
            bands[cell] = (curves.mean(axis=0), std)
    return bands


def markdown_table(rows: list[ComparisonRow]) -> str:
    header = ("| cell | metric | mean | std | 95% CI | paired diff vs its reference (95% CI) |\n"
              "|---|---|---|---|---|---|")

    def number(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.4g}"

    lines = [header]
    for row in rows:
        diff = ("-" if math.isnan(row.diff_mean) else
                f"{row.diff_mean:+.4g} ({number(row.diff_ci_low)} to {number(row.diff_ci_high)}) vs {row.reference}")
        lines.append(f"| {row.cell} | {row.metric} | {number(row.mean)} | {number(row.std)} | "
                     f"{number(row.ci_low)} to {number(row.ci_high)} | {diff} |")
    return "\n".join(lines)
