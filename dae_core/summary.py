"""The run summary: the JSON contract of ``dae run --summary-json`` and the flows' return value."""

from __future__ import annotations

from typing import Any

from dae_core.evaluate import Evaluation


def build_summary(
    pretrain_history: dict[str, list[float]],
    classifier_history: dict[str, list[float]],
    evaluation: Evaluation,
    pretrain_seconds: float,
    classifier_seconds: float,
    pretrain_loop_seconds: float,
    classifier_loop_seconds: float,
) -> dict[str, Any]:
    """Accuracies in percent, one list entry per epoch. ``timing``: each training stage's
    wall time (``*_s``) and the part spent in its epoch loops (``*_loop_s``)."""
    return {
        "pretrain": {"mse": list(pretrain_history["mse"])},
        "classifier": {
            "train_loss": list(classifier_history["train_loss"]),
            "test_accuracy": list(classifier_history["test_accuracy"]),
        },
        "test": {
            "accuracy": evaluation.accuracy,
            "per_class_accuracy": list(evaluation.per_class_accuracy),
            "noisy_accuracy": evaluation.noisy_accuracy,
        },
        "timing": {"pretrain_s": pretrain_seconds, "classifier_s": classifier_seconds,
                   "pretrain_loop_s": pretrain_loop_seconds, "classifier_loop_s": classifier_loop_seconds},
    }
