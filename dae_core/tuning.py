"""What ``dae tune`` searches and how one trial trains: search spaces over config fields,
and a trial's training on the training split minus a held-out validation split, which
reports the validation value after every epoch (so that hopeless trials can be pruned).

A trial never opens the test split: ``train_trial`` loads the training images only, and
the test set stays for the final comparison table (docs/comparison.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from dae_core.comparison import SGD_PRETRAIN_LR, CellName, cell_config
from dae_core.config import ConfigError, ExperimentConfig, deep_merge, nested_fields, parse_value
from dae_core.setup import TrainingSetup, fresh_classifier
from dae_core.train import TrainingDiverged, pretrain, train_classifier

Objective = Literal["mse", "accuracy"]
# The cells whose pretraining optimizer the lecture's verdict is about.
DEFAULT_TUNED_CELLS: list[CellName] = ["adam-noise", "sgd-noise"]
# Which way each objective improves (Optuna's study direction).
DIRECTIONS: dict[str, str] = {"mse": "minimize", "accuracy": "maximize"}
# "default": the range that suits each cell's optimizer (DEFAULT_SPACES), resolved per cell.
DimensionKind = Literal["log", "float", "int", "choice", "default"]

# Called after each epoch with (epoch, validation value); it may stop the trial by raising.
EpochReport = Callable[[int, float], None]


class TrialDiverged(RuntimeError):
    """A trial's training diverged: the search learns that this region is hopeless."""


@dataclass(frozen=True)
class Dimension:
    """One searched config field: ``log``/``float``/``int`` between ``low`` and ``high``,
    or one of ``choices``."""

    key: str  # a dotted config field, e.g. "pretrain.lr"
    kind: DimensionKind
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    def spec(self) -> str:
        """The ``KEY=SPEC`` text this dimension parses from."""
        if self.kind == "default":
            return f"{self.key}=default"
        if self.kind == "choice":
            return f"{self.key}=choice:{','.join(map(str, self.choices))}"
        return f"{self.key}={self.kind}:{self.low:g}:{self.high:g}"


def parse_dimension(text: str) -> Dimension:
    """``pretrain.lr=log:1e-4:0.1``, ``classifier.lr=float:0.01:1``, ``pretrain.hidden_units=int:100:800``,
    ``pretrain.noise.enabled=choice:true,false`` or ``pretrain.lr=default`` (each cell's optimizer's
    own range, so one search covers Adam and SGD cells); the field must exist in the config."""
    key, sep, spec = text.partition("=")
    if sep and spec == "default":
        if key not in DEFAULT_RANGES:
            raise ConfigError(f"--space {text!r}: only {', '.join(DEFAULT_RANGES)} has a default range")
        return Dimension(key, "default")
    kind, _, bounds = spec.partition(":")
    if not sep or kind not in ("log", "float", "int", "choice") or not bounds:
        raise ConfigError(f"--space {text!r}: expected KEY=log|float|int:LOW:HIGH, KEY=choice:A,B,... "
                          "or pretrain.lr=default")
    _check_field(key)
    if kind == "choice":
        return Dimension(key, "choice", choices=tuple(parse_value(item) for item in bounds.split(",")))
    try:
        low, high = (float(value) for value in bounds.split(":"))
    except ValueError:
        raise ConfigError(f"--space {text!r}: LOW:HIGH must be two numbers") from None
    if not low < high or (kind == "log" and low <= 0):
        raise ConfigError(f"--space {text!r}: needs LOW < HIGH{' and LOW > 0 (log scale)' if kind == 'log' else ''}")
    return Dimension(key, kind, low, high)


def _check_field(key: str) -> None:
    if key not in ExperimentConfig().flat():
        raise ConfigError(f"--space: {key!r} is not a config field (e.g. pretrain.lr, classifier.lr)")
    if key == "seed" or key.startswith(("data.", "runtime.", "evaluation.")):
        raise ConfigError(f"--space: {key!r} is not searched (the seed, the data and the runtime are fixed "
                          "so that trials differ in their training choices only)")


# The default search: the pretraining learning rate on a log scale wide enough to hold each
# optimizer's best rate. Vanilla SGD's reaches beyond the config's old cap of 10
# (docs/comparison.md): its range goes to 1000, with divergence as the guard.
DEFAULT_SPACES: dict[str, tuple[Dimension, ...]] = {
    "adam": (Dimension("pretrain.lr", "log", 1e-4, 1e-1),),
    "sgd": (Dimension("pretrain.lr", "log", 1e-1, 1e3),),
}
# The fields ``KEY=default`` may name: by optimizer, the range DEFAULT_SPACES gives it.
DEFAULT_RANGES: dict[str, dict[str, Dimension]] = {
    "pretrain.lr": {optimizer: space[0] for optimizer, space in DEFAULT_SPACES.items()},
}
NO_PRETRAINING_SPACE = (Dimension("classifier.lr", "log", 1e-2, 1.0),)


def search_space(config: ExperimentConfig, given: list[Dimension], objective: Objective = "mse"
                 ) -> tuple[Dimension, ...]:
    """The dimensions searched for a cell: ``given`` if any (``default`` ones resolved to the
    cell's optimizer's range), else its optimizer's default. A cell without pretraining
    searches only what is not pretraining's: those dimensions would change nothing it trains.
    Vanilla SGD stays vanilla: its momentum is never searched."""
    if config.pretrain.epochs == 0 and objective == "mse":
        raise ConfigError("a cell without pretraining has no reconstruction MSE to tune: use --objective accuracy "
                          "or leave the cell out")
    if config.pretrain.optimizer == "sgd" and any(d.key == "pretrain.momentum" for d in given):
        raise ConfigError("--space pretrain.momentum: the SGD cells are vanilla SGD (momentum 0); "
                          "search momentum in a cell of its own with --set pretrain.momentum")
    if config.pretrain.epochs == 0:
        return tuple(d for d in given if not d.key.startswith("pretrain.")) or NO_PRETRAINING_SPACE
    resolved = tuple(DEFAULT_RANGES[d.key][config.pretrain.optimizer] if d.kind == "default" else d for d in given)
    return resolved or DEFAULT_SPACES[config.pretrain.optimizer]


def with_params(config: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """``config`` with dotted fields set, validated as a whole."""
    try:
        return ExperimentConfig.model_validate(deep_merge(config.model_dump(), nested_fields(params)))
    except Exception as error:  # pydantic's ValidationError, named like --set's
        raise ConfigError(f"tuned parameters {params} refused: {error}") from None


def study_name(cell: str, config: ExperimentConfig, space: tuple[Dimension, ...], objective: Objective,
               data_digest: str, experiment: str) -> str:
    """A study's identity: a rerun of the same tuning finds and continues it. The MLflow
    experiment is part of it: a study's trials are runs of one experiment, and a tuning in
    another experiment runs trials of its own there."""
    identity = "|".join([cell, config.model_dump_json(), *(d.spec() for d in space), objective, data_digest,
                         experiment])
    return f"dae-{cell}-{objective}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def train_trial(config: ExperimentConfig, raw_dir: Path, objective: Objective, report: EpochReport) -> float:
    """Train ``config`` on the training split minus ``data.validation_size`` images and
    return the objective on the validation images: the final validation MSE of pretraining
    (``mse``; the classifier is not trained) or the final validation accuracy of the
    classifier (``accuracy``). ``report`` gets each epoch's value. Never reads the test split."""
    if config.data.validation_size == 0:
        raise ConfigError("tuning needs a validation split: set data.validation_size (e.g. 10000)")
    setup = TrainingSetup.build(config, raw_dir)

    def pretrain_report(epoch: int, metrics: dict[str, float]) -> None:
        if objective == "mse":
            report(epoch, metrics["val_mse"])

    def classifier_report(epoch: int, metrics: dict[str, float]) -> None:
        report(epoch, metrics["val_accuracy"])

    try:
        pretraining = setup.pretraining()
        history = pretrain(pretraining, on_epoch=pretrain_report)
        if objective == "mse":
            return history.val_mse[-1]
        classifier = setup.classifier_training(fresh_classifier(config, pretraining.model))
        return train_classifier(classifier, on_epoch=classifier_report).val_accuracy[-1]
    except TrainingDiverged as error:
        raise TrialDiverged(error.message) from None


def suggest(trial, space: tuple[Dimension, ...]) -> dict[str, Any]:
    """One point of ``space`` drawn by an Optuna trial (named by config field)."""
    params: dict[str, Any] = {}
    for dimension in space:
        if dimension.kind == "choice":
            params[dimension.key] = trial.suggest_categorical(dimension.key, list(dimension.choices))
        elif dimension.kind == "int":
            params[dimension.key] = trial.suggest_int(dimension.key, int(dimension.low), int(dimension.high))
        else:
            params[dimension.key] = trial.suggest_float(dimension.key, dimension.low, dimension.high,
                                                        log=dimension.kind == "log")
    return params


# Held out of the 60,000 training images when the base config holds none out (a sixth, as
# of a smaller training set).
DEFAULT_VALIDATION_SIZE = 10_000


@dataclass(frozen=True)
class CellSearch:
    """One cell's search: its config, the dimensions searched, and the study that holds its
    trials (named so that a rerun of the same tuning finds it)."""

    cell: str
    config: ExperimentConfig
    space: tuple[Dimension, ...]
    objective: Objective
    study: str


def with_validation_split(base: ExperimentConfig) -> ExperimentConfig:
    """``base`` holding out a validation split: its own, else ``DEFAULT_VALIDATION_SIZE``
    images (a sixth of a smaller training set)."""
    if base.data.validation_size > 0:
        return base
    held_out = DEFAULT_VALIDATION_SIZE if base.data.train_limit is None else max(1, base.data.train_limit // 6)
    return ExperimentConfig.model_validate(
        {**base.model_dump(), "data": {**base.data.model_dump(), "validation_size": held_out}})


def plan_searches(base: ExperimentConfig, cells: list[str], space: list[str], objective: Objective,
                  threads: int | None, data_digest: str, experiment: str) -> list[CellSearch]:
    """Each cell's search: ``base`` (``with_validation_split``) as the cell trains it, with
    ``threads`` torch threads, over the ``KEY=SPEC`` dimensions ``space`` (or the cell's default)."""
    dimensions = [parse_dimension(text) for text in space]
    searches = []
    for cell in cells:
        config = cell_config(base, cell, base.seed, SGD_PRETRAIN_LR, threads)
        dimensions_of_cell = search_space(config, dimensions, objective)
        searches.append(CellSearch(cell, config, dimensions_of_cell, objective,
                                   study_name(cell, config, dimensions_of_cell, objective, data_digest, experiment)))
    return searches


class CellTuning(BaseModel):
    """One cell's study: the best parameters (named by config field) and its trial counts."""

    cell: str
    study: str
    objective: Objective
    best_params: dict[str, Any]
    best_value: float
    trials: int  # complete or pruned (diverged trials count as pruned)
    pruned: int


class TuningReport(BaseModel):
    """The JSON of ``dae tune --summary-json``, the dae-tune flow's return value and the
    parent run's ``tuning/tuning.json``."""

    cells: dict[str, CellTuning]
    mlflow_run_id: str
    # True when every study already held its trials: nothing was trained, and
    # ``mlflow_run_id`` is the earlier tuning that ran them.
    reused: bool = False


def markdown_table(report: TuningReport) -> str:
    lines = ["| cell | objective | best value | best parameters | trials | pruned |", "|---|---|---|---|---|---|"]
    for result in report.cells.values():
        params = ", ".join(f"`{key}` = {value:.4g}" if isinstance(value, float) else f"`{key}` = {value}"
                           for key, value in result.best_params.items())
        lines.append(f"| {result.cell} | validation {result.objective} | {result.best_value:.4g} | {params} | "
                     f"{result.trials} | {result.pruned} |")
    return "\n".join(lines)
