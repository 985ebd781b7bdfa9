"""The run's record: the summary of ``dae run --summary-json`` (the flows' return value),
the MLflow names it lives under, and its one mapping to and from MLflow metric keys.

A run logs its curves per epoch (step = the 1-based epoch) and its final numbers once;
``summary_from_metrics`` rebuilds the summary from exactly those keys, which is how a
comparison collects cells that ran on other machines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel

from dae_core.shapes import NUM_CLASSES

if TYPE_CHECKING:
    from dae_core.train import ClassifierHistory, PretrainHistory

DEFAULT_EXPERIMENT = "dae-mnist"
SCORING_EXPERIMENT = "dae-scoring"  # the runs of dae-score
REGISTERED_MODEL = "dae-mnist-classifier"
# The model people use: the registered version that holds the alias ``champion``.
CHAMPION_URI = f"models:/{REGISTERED_MODEL}@champion"


class PretrainCurves(BaseModel):
    mse: list[float]  # per epoch, against the clean images


class ClassifierCurves(BaseModel):
    train_loss: list[float]
    test_accuracy: list[float]  # percent, per epoch


class EvaluationScores(BaseModel):
    accuracy: float  # percent
    per_class_accuracy: list[float]  # percent, digits 0..9; NaN for a digit absent from the test set
    noisy_accuracy: float  # percent, on the corrupted test set


class Timing(BaseModel):
    """Each training stage's wall time (``*_s``) and the part spent in its epoch loops
    (``*_loop_s``: no data loading, checkpoints or tracking). NaN where a run logged none."""

    pretrain_s: float
    classifier_s: float
    pretrain_loop_s: float
    classifier_loop_s: float


class RunSummary(BaseModel):
    pretrain: PretrainCurves
    classifier: ClassifierCurves
    test: EvaluationScores
    timing: Timing
    mlflow_run_id: str
    model_uri: str | None = None  # set by the run that logged the model


def build_summary(pretrain: PretrainHistory, classifier: ClassifierHistory, scores: EvaluationScores,
                  timing: Timing, mlflow_run_id: str, model_uri: str | None) -> RunSummary:
    return RunSummary(
        pretrain=PretrainCurves(mse=pretrain.mse),
        classifier=ClassifierCurves(train_loss=classifier.train_loss, test_accuracy=classifier.test_accuracy),
        test=scores, timing=timing, mlflow_run_id=mlflow_run_id, model_uri=model_uri,
    )


def metric_key(phase: str, name: str) -> str:
    """``pretrain/mse``, ``classifier/test_accuracy``, ``timing/pretrain_s``, ..."""
    return f"{phase}/{name}"


def epoch_metrics(phase: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """One epoch's metrics of a training phase under their MLflow keys."""
    return {metric_key(phase, name): value for name, value in metrics.items()}


# The per-epoch curves a summary carries, by MLflow key.
CURVE_KEYS = (metric_key("pretrain", "mse"), metric_key("classifier", "train_loss"),
              metric_key("classifier", "test_accuracy"))


def evaluation_metrics(test: EvaluationScores) -> dict[str, float]:
    per_class = {metric_key("test", f"accuracy_class_{digit}"): value
                 for digit, value in enumerate(test.per_class_accuracy)}
    return {metric_key("test", "accuracy"): test.accuracy,
            metric_key("test", "noisy_accuracy"): test.noisy_accuracy, **per_class}


def timing_metrics(timing: Timing) -> dict[str, float]:
    return epoch_metrics("timing", timing.model_dump())


def summary_metrics(summary: RunSummary) -> tuple[dict[str, list[float]], dict[str, float]]:
    """(curves by key, final values by key): everything ``summary_from_metrics`` reads."""
    curves = (summary.pretrain.mse, summary.classifier.train_loss, summary.classifier.test_accuracy)
    finals = {**evaluation_metrics(summary.test), **timing_metrics(summary.timing)}
    return dict(zip(CURVE_KEYS, curves, strict=True)), finals


def summary_from_metrics(curves: Mapping[str, Sequence[float]], finals: Mapping[str, float],
                         mlflow_run_id: str) -> RunSummary:
    """The inverse of ``summary_metrics``. A curve a run did not log (no pretraining epochs)
    reads as empty, a timing key as NaN."""
    mse, train_loss, test_accuracy = (list(curves.get(key, [])) for key in CURVE_KEYS)

    def test(name: str) -> float:
        return finals[metric_key("test", name)]

    return RunSummary(
        pretrain=PretrainCurves(mse=mse),
        classifier=ClassifierCurves(train_loss=train_loss, test_accuracy=test_accuracy),
        test=EvaluationScores(accuracy=test("accuracy"), noisy_accuracy=test("noisy_accuracy"),
                         per_class_accuracy=[test(f"accuracy_class_{digit}") for digit in range(NUM_CLASSES)]),
        timing=Timing(**{name: finals.get(metric_key("timing", name), math.nan) for name in Timing.model_fields}),
        mlflow_run_id=mlflow_run_id,
    )
