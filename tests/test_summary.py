"""The run summary and its one mapping to and from MLflow metric keys."""

import json
import math

from dae_core.summary import (
    ClassifierCurves,
    EvaluationScores,
    PretrainCurves,
    RunSummary,
    Timing,
    summary_from_metrics,
    summary_metrics,
)

# The metric keys users, dashboards and `dae compare --fan-out` rely on (README).
CONTRACT_KEYS = {
    "pretrain/mse", "classifier/train_loss", "classifier/test_accuracy",
    "test/accuracy", "test/noisy_accuracy", *(f"test/accuracy_class_{digit}" for digit in range(10)),
    "timing/pretrain_s", "timing/classifier_s", "timing/pretrain_loop_s", "timing/classifier_loop_s",
}


def _summary(**changes) -> RunSummary:
    fields = {
        "pretrain": PretrainCurves(mse=[0.07, 0.04, 0.03]),
        "classifier": ClassifierCurves(train_loss=[1.1, 0.5], test_accuracy=[87.1, 91.2]),
        "test": EvaluationScores(accuracy=92.07, noisy_accuracy=80.5,
                                 per_class_accuracy=[97.0 + digit / 10 for digit in range(10)]),
        "timing": Timing(pretrain_s=3.0, classifier_s=2.0, pretrain_loop_s=2.5, classifier_loop_s=1.5),
        "mlflow_run_id": "abc123", "model_uri": None,
    }
    return RunSummary(**{**fields, **changes})


def test_metric_keys_are_the_contract():
    curves, finals = summary_metrics(_summary())
    assert set(curves) | set(finals) == CONTRACT_KEYS


def test_a_summary_survives_the_round_trip_through_metric_keys():
    summary = _summary()
    curves, finals = summary_metrics(summary)
    assert summary_from_metrics(curves, finals, "abc123") == summary


def test_a_run_without_pretraining_or_timing_reads_back_empty_and_nan():
    curves, finals = summary_metrics(_summary(pretrain=PretrainCurves(mse=[])))
    del curves["pretrain/mse"]
    finals = {key: value for key, value in finals.items() if not key.startswith("timing/")}
    rebuilt = summary_from_metrics(curves, finals, "abc123")
    assert rebuilt.pretrain.mse == [] and all(math.isnan(value) for value in rebuilt.timing.model_dump().values())


def test_the_summary_json_keeps_its_shape():
    dumped = json.loads(json.dumps(_summary(model_uri="models:/m/1").model_dump()))
    assert dumped == {
        "pretrain": {"mse": [0.07, 0.04, 0.03]},
        "classifier": {"train_loss": [1.1, 0.5], "test_accuracy": [87.1, 91.2]},
        "test": {"accuracy": 92.07, "per_class_accuracy": [97.0 + d / 10 for d in range(10)], "noisy_accuracy": 80.5},
        "timing": {"pretrain_s": 3.0, "classifier_s": 2.0, "pretrain_loop_s": 2.5, "classifier_loop_s": 1.5},
        "mlflow_run_id": "abc123", "model_uri": "models:/m/1",
    }
