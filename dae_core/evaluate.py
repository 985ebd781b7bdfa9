"""Test-set evaluation: accuracy, per-class accuracy, confusion matrix, and accuracy on
the test set corrupted with the pretraining noise (does denoising buy robustness?)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dae_core.config import NoiseConfig
from dae_core.model import NUM_CLASSES
from dae_core.noise import corrupt


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # percent
    per_class_accuracy: list[float]  # percent, digits 0..9
    noisy_accuracy: float  # percent, on the corrupted test set
    confusion: list[list[int]]  # [true][predicted] counts

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict(model: nn.Module, pixels: torch.Tensor, batch_size: int = 10_000) -> torch.Tensor:
    """Predicted class per row of (N, 784) ``pixels``.

    No train/eval switch: the networks have no dropout or batch norm, and the models
    loaded back from MLflow (torch.export programs) refuse ``.eval()``.
    """
    return torch.cat([model(chunk).argmax(dim=1) for chunk in pixels.split(batch_size)])


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
    confusion = confusion_matrix(predict(model, pixels), labels)
    noisy_correct = (predict(model, corrupt(pixels, noise, generator)) == labels).sum().item()
    return Evaluation(
        accuracy=100.0 * confusion.diagonal().sum().item() / len(labels),
        per_class_accuracy=per_class_accuracy(confusion),
        noisy_accuracy=100.0 * noisy_correct / len(labels),
        confusion=confusion.tolist(),
    )
