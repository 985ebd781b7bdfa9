"""What ``dae tune`` searches and how one trial trains: search spaces over config fields,
and a trial's training on the training split minus a held-out validation split, which
reports the validation values after every epoch (so that hopeless trials can be pruned)
and ends with one value per objective (several: a multi-objective study, ``pareto``).

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
from dae_core.evaluate import noisy_accuracy
from dae_core.pareto import KNEE, FrontPoint, Objective, choose, pareto_front
from dae_core.runtime import make_generator
from dae_core.setup import TrainingSetup, fresh_classifier
from dae_core.train import TrainingDiverged, pretrain, train_classifier

# The cells whose pretraining optimizer the lecture's verdict is about.
DEFAULT_TUNED_CELLS: list[CellName] = ["adam-noise", "sgd-noise"]
# "default": the range that suits each cell's optimizer (DEFAULT_SPACES), resolved per cell.
DimensionKind = Literal["log", "float", "int", "choice", "default"]

# Called after each epoch with (what it measures: "mse" in pretraining, "accuracy" in the
# classifier's training; epoch; validation value); it may stop the trial by raising.
EpochReport = Callable[[Objective, int, float], None]


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


def cell_objectives(config: ExperimentConfig, objectives: tuple[Objective, ...]) -> tuple[Objective, ...]:
    """The objectives a cell is tuned for: all of ``objectives`` but the MSE in a cell
    without pretraining, which has no reconstruction to score."""
    if config.pretrain.epochs > 0:
        return objectives
    kept = tuple(objective for objective in objectives if objective != "mse")
    if not kept:
        raise ConfigError("a cell without pretraining has no reconstruction MSE to tune: use --objective accuracy "
                          "or leave the cell out")
    return kept


def search_space(config: ExperimentConfig, given: list[Dimension]) -> tuple[Dimension, ...]:
    """The dimensions searched for a cell: ``given`` if any (``default`` ones resolved to the
    cell's optimizer's range), else its optimizer's default. A cell without pretraining
    searches only what is not pretraining's, and a cell pretrained on clean images not the
    noise's level: those dimensions would change nothing it trains. Vanilla SGD stays
    vanilla: its momentum is never searched."""
    if config.pretrain.optimizer == "sgd" and any(d.key == "pretrain.momentum" for d in given):
        raise ConfigError("--space pretrain.momentum: the SGD cells are vanilla SGD (momentum 0); "
                          "search momentum in a cell of its own with --set pretrain.momentum")
    if config.pretrain.epochs == 0:
        return tuple(d for d in given if not d.key.startswith("pretrain.")) or NO_PRETRAINING_SPACE
    if not config.pretrain.noise.enabled:
        given = [d for d in given if d.key not in ("pretrain.noise.mean", "pretrain.noise.std")]
    resolved = tuple(DEFAULT_RANGES[d.key][config.pretrain.optimizer] if d.kind == "default" else d for d in given)
    return resolved or DEFAULT_SPACES[config.pretrain.optimizer]


def with_params(config: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """``config`` with dotted fields set, validated as a whole."""
    try:
        return ExperimentConfig.model_validate(deep_merge(config.model_dump(), nested_fields(params)))
    except Exception as error:  # pydantic's ValidationError, named like --set's
        raise ConfigError(f"tuned parameters {params} refused: {error}") from None


def objectives_label(objectives: tuple[Objective, ...]) -> str:
    """``accuracy`` or ``accuracy+noisy-accuracy``: in study names, parameters and tables."""
    return "+".join(objectives)


def labelled_objectives(label: str) -> tuple[Objective, ...]:
    """The objectives an ``objectives_label`` names, in order."""
    return tuple(label.split("+"))  # type: ignore[return-value]


def study_name(cell: str, config: ExperimentConfig, space: tuple[Dimension, ...], objectives: tuple[Objective, ...],
               data_digest: str, experiment: str) -> str:
    """A study's identity: a rerun of the same tuning finds and continues it. The MLflow
    experiment is part of it: a study's trials are runs of one experiment, and a tuning in
    another experiment runs trials of its own there. (One objective's name is the one the
    studies recorded before several could be tuned at once.)"""
    label = objectives_label(objectives)
    identity = "|".join([cell, config.model_dump_json(), *(d.spec() for d in space), label, data_digest, experiment])
    return f"dae-{cell}-{label}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def train_trial(config: ExperimentConfig, raw_dir: Path, objectives: tuple[Objective, ...],
                report: EpochReport) -> dict[Objective, float]:
    """Train ``config`` on the training split minus ``data.validation_size`` images and
    return each objective on the validation images: the final validation MSE of
    pretraining (``mse``; alone, the classifier is not trained), the final validation
    accuracy of the classifier (``accuracy``), its accuracy on the validation images
    corrupted as the test's noisy digits are (``noisy-accuracy``, ``evaluation.test_noise``).
    ``report`` gets each epoch's value. Never reads the test split."""
    if config.data.validation_size == 0:
        raise ConfigError("tuning needs a validation split: set data.validation_size (e.g. 10000)")
    setup = TrainingSetup.build(config, raw_dir)

    def pretrain_report(epoch: int, metrics: dict[str, float]) -> None:
        report("mse", epoch, metrics["val_mse"])

    def classifier_report(epoch: int, metrics: dict[str, float]) -> None:
        report("accuracy", epoch, metrics["val_accuracy"])

    try:
        pretraining = setup.pretraining()
        history = pretrain(pretraining, on_epoch=pretrain_report)
        values: dict[Objective, float] = {"mse": history.val_mse[-1]} if history.val_mse else {}
        if objectives == ("mse",):
            return values
        classifier = setup.classifier_training(fresh_classifier(config, pretraining.model))
        values["accuracy"] = train_classifier(classifier, on_epoch=classifier_report).val_accuracy[-1]
    except TrainingDiverged as error:
        raise TrialDiverged(error.message) from None
    if "noisy-accuracy" in objectives:
        values["noisy-accuracy"] = noisy_accuracy(
            classifier.model, setup.validation_pixels, setup.validation.labels, config.evaluation.test_noise,
            make_generator(config.seed, "noisy-validation", setup.place.device))
    return {objective: values[objective] for objective in objectives}


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
    objectives: tuple[Objective, ...]  # several: a multi-objective study
    study: str


def with_validation_split(base: ExperimentConfig) -> ExperimentConfig:
    """``base`` holding out a validation split: its own, else ``DEFAULT_VALIDATION_SIZE``
    images (a sixth of a smaller training set)."""
    if base.data.validation_size > 0:
        return base
    held_out = DEFAULT_VALIDATION_SIZE if base.data.train_limit is None else max(1, base.data.train_limit // 6)
    return ExperimentConfig.model_validate(
        {**base.model_dump(), "data": {**base.data.model_dump(), "validation_size": held_out}})


def plan_searches(base: ExperimentConfig, cells: list[str], space: list[str], objectives: tuple[Objective, ...],
                  threads: int | None, data_digest: str, experiment: str) -> list[CellSearch]:
    """Each cell's search: ``base`` (``with_validation_split``) as the cell trains it, with
    ``threads`` torch threads, over the ``KEY=SPEC`` dimensions ``space`` (or the cell's
    default), for ``objectives`` (``cell_objectives``)."""
    dimensions = [parse_dimension(text) for text in space]
    searches = []
    for cell in cells:
        config = cell_config(base, cell, base.seed, SGD_PRETRAIN_LR, threads)
        scored = cell_objectives(config, objectives)
        dimensions_of_cell = search_space(config, dimensions)
        searches.append(CellSearch(cell, config, dimensions_of_cell, scored,
                                   study_name(cell, config, dimensions_of_cell, scored, data_digest, experiment)))
    return searches


class CellTuning(BaseModel):
    """One cell's study: the best parameters (named by config field) and its trial counts.
    A study of several objectives has no best: its ``front`` holds the trials no other
    trial beats on every objective, and ``best_params``, ``best_value`` are its knee's (the
    first objective's value)."""

    cell: str
    study: str
    objective: str  # ``objectives_label``: accuracy, or accuracy+noisy-accuracy
    best_params: dict[str, Any]
    best_value: float
    trials: int  # complete or pruned (diverged trials count as pruned)
    pruned: int
    front: list[FrontPoint] = []  # best on the first objective first; empty for one objective

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return labelled_objectives(self.objective)

    def point(self, name: str) -> FrontPoint:
        """The point of the front that ``name`` names (``pareto.check_point``)."""
        if not self.front:
            raise ConfigError(f"--point {name}: cell {self.cell} was tuned for {self.objective} alone, which has a "
                              "best and no front", "leave --point out, or tune several objectives "
                              "(--objective accuracy noisy-accuracy)")
        return choose(self.front, self.objectives, name)


def cell_tuning(cell: str, study: str, objectives: tuple[Objective, ...], scored: list[FrontPoint],
                trials: int) -> CellTuning:
    """The result of a cell's ``trials`` counted trials, of which ``scored`` completed: the
    best one, or with several objectives the front and its knee."""
    if not scored:
        raise RuntimeError(f"cell {cell}: no trial completed (all pruned or diverged); widen or move --space")
    front = pareto_front(scored, objectives) if len(objectives) > 1 else []
    best = choose(front, objectives, KNEE) if front else choose(scored, objectives, f"best-{objectives[0]}")
    return CellTuning(cell=cell, study=study, objective=objectives_label(objectives), best_params=best.params,
                      best_value=best.values[objectives[0]], trials=trials, pruned=trials - len(scored), front=front)


class TuningReport(BaseModel):
    """The JSON of ``dae tune --summary-json``, the dae-tune flow's return value and the
    parent run's ``tuning/tuning.json``."""

    cells: dict[str, CellTuning]
    mlflow_run_id: str
    # True when every study already held its trials: nothing was trained, and
    # ``mlflow_run_id`` is the earlier tuning that ran them.
    reused: bool = False


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"`{key}` = {value:.4g}" if isinstance(value, float) else f"`{key}` = {value}"
                     for key, value in params.items())


def values_text(values: dict[str, float]) -> str:
    """``accuracy 95.06, noisy-accuracy 79.86``: a trial's values by objective, in order."""
    return ", ".join(f"{objective} {value:.4g}" for objective, value in values.items())


def markdown_table(report: TuningReport) -> str:
    """Each cell's best (a front's knee, with its size) in one table."""
    lines = ["| cell | objective | best value | best parameters | trials | pruned |", "|---|---|---|---|---|---|"]
    for result in report.cells.values():
        best = f"{result.best_value:.4g}"
        if result.front:
            knee = result.point(KNEE)
            best = f"knee of {len(result.front)} on the front: {values_text(knee.values)}"
        lines.append(f"| {result.cell} | validation {result.objective} | {best} | {_params(result.best_params)} | "
                     f"{result.trials} | {result.pruned} |")
    return "\n".join(lines)


def front_table(result: CellTuning) -> str:
    """A cell's front, a row per trial, best on the first objective first."""
    objectives = result.objectives
    lines = [f"| trial | {' | '.join(objectives)} | parameters |", "|---|" + "---|" * (len(objectives) + 1)]
    for point in result.front:
        lines.append(f"| {point.trial} | {' | '.join(f'{point.values[o]:.4g}' for o in objectives)} | "
                     f"{_params(point.params)} |")
    return "\n".join(lines)
