"""Test-set evaluation: accuracy, per-class accuracy, confusion matrix, and accuracy on
the test set corrupted with the pretraining noise (does denoising buy robustness?)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dae_core.config import NoiseConfig
from dae_core.metrics import accuracy_percent, confusion_matrix, per_class_accuracy, predict
from dae_core.noise import corrupt
from dae_core.summary import EvaluationScores


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # percent
    per_class_accuracy: list[float]  # percent, digits 0..9
    noisy_accuracy: float  # percent, on the corrupted test set
    confusion: list[list[int]]  # [true][predicted] counts

    def as_dict(self) -> dict:
        return asdict(self)

    def scores(self) -> EvaluationScores:
        """What the run summary keeps of it (all but the confusion matrix)."""
        return EvaluationScores(accuracy=self.accuracy, per_class_accuracy=self.per_class_accuracy,
                                noisy_accuracy=self.noisy_accuracy)


def noisy_accuracy(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, noise: NoiseConfig,
                   generator: torch.Generator) -> float:
    """Accuracy (percent) on ``pixels`` corrupted by ``noise``: the noisy test's, and a
    trial's noisy validation objective."""
    return accuracy_percent(predict(model, corrupt(pixels, noise, generator)), labels)


def evaluate(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    noise: NoiseConfig,
    generator: torch.Generator,
) -> Evaluation:
    predicted = predict(model, pixels)
    confusion = confusion_matrix(predicted, labels)
    return Evaluation(
        accuracy=accuracy_percent(predicted, labels),
        per_class_accuracy=per_class_accuracy(confusion),
        noisy_accuracy=noisy_accuracy(model, pixels, labels, noise, generator),
        confusion=confusion.tolist(),
    )
