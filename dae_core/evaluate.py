"""Test-set evaluation: accuracy, per-class accuracy, confusion matrix, and accuracy on
the test set corrupted with the pretraining noise (does denoising buy robustness?)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dae_core.config import NoiseConfig
from dae_core.noise import corrupt
from dae_core.shapes import NUM_CLASSES
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


@torch.no_grad()
def predict(model: nn.Module, pixels: torch.Tensor, batch_size: int = 10_000) -> torch.Tensor:
    """Predicted class per row of (N, 784) ``pixels``.

    No train/eval switch: the networks have no dropout or batch norm, and the models
    loaded back from MLflow (torch.export programs) refuse ``.eval()``.
    """
    return torch.cat([model(chunk).argmax(dim=1) for chunk in pixels.split(batch_size)])


def accuracy_percent(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (predicted == labels).sum().item() / len(labels)


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(10, 10) counts, rows are true classes and columns predictions."""
    flat = labels * NUM_CLASSES + predicted
    return torch.bincount(flat, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Percent correct per true class; NaN for a class absent from the labels."""
    totals = confusion.sum(dim=1).double()
    return (100.0 * confusion.diagonal().double() / totals).tolist()


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
        noisy_accuracy=accuracy_percent(predict(model, corrupt(pixels, noise, generator)), labels),
        confusion=confusion.tolist(),
    )
