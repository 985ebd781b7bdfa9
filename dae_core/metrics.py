"""What a classifier's predictions measure: the predicted class per image, accuracy, the
confusion matrix and per-class accuracy. Plain tensor functions, used by the classifier's
epoch loop, the test-set evaluation and batch scoring alike."""

from __future__ import annotations

import torch
from torch import nn

from dae_core.shapes import NUM_CLASSES


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
