"""Monitoring scored batches: does a batch look like what the model was trained on, and does
the model behave on it as it did on its test set?

A registered model carries a ``Reference`` (logged with its training run): a seeded sample
of its training images' per-image statistics, and its behaviour on the test images. A
scored batch is compared with it:

- input drift: two-sample Kolmogorov-Smirnov statistics (SciPy) of the batch's per-image
  mean brightness and ink fraction against the training sample;
- the predicted class distribution: total variation distance from the test set's;
- confidence: the drop of the mean top probability from the test set's;
- accuracy, where labels are known: the drop from the test accuracy.

A check over its threshold makes the verdict ``drift``. Distribution checks need
``min_images`` images (a handful of pictures proves nothing either way); the accuracy check
runs on any labelled batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from dae_core.data import Split
from dae_core.shapes import NUM_CLASSES

Verdict = Literal["ok", "drift"]
REFERENCE_ARTIFACT = "monitoring/reference.json"  # in the model's training run
REFERENCE_SAMPLE = 2000  # training images in the reference sample
INK_LEVEL = 0.5  # a pixel brighter than this is ink


class Thresholds(BaseModel):
    """Where a check calls drift. The KS statistic is the largest gap between two
    cumulative distributions (0: identical, 1: disjoint)."""

    model_config = ConfigDict(frozen=True)

    input_ks: Annotated[float, Field(gt=0, le=1)] = 0.25
    input_p_value: Annotated[float, Field(gt=0, lt=1)] = 0.01
    class_tvd: Annotated[float, Field(gt=0, le=1)] = 0.25
    confidence_drop: Annotated[float, Field(gt=0, le=1)] = 0.10
    accuracy_drop: Annotated[float, Field(gt=0, le=100)] = 5.0  # percentage points
    min_images: Annotated[int, Field(ge=1)] = 100


DEFAULT_THRESHOLDS = Thresholds()


class Reference(BaseModel):
    """What a model's batches are compared with."""

    brightness: list[float]  # per-image mean pixel value of a sample of its training images
    ink: list[float]  # per-image fraction of ink pixels, same sample
    predicted_distribution: list[float]  # fraction of its test images predicted as each digit
    mean_confidence: float  # mean top probability on its test images
    test_accuracy: float  # percent


class Check(BaseModel):
    name: str  # the metric: monitor/<name>
    value: float
    threshold: float
    drift: bool


class MonitorReport(BaseModel):
    verdict: Verdict
    images: int
    checks: list[Check]

    def metrics(self) -> dict[str, float]:
        return {f"monitor/{check.name}": check.value for check in self.checks}


def image_statistics(pixels: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image of (N, 784) pixels in [0, 1]: mean brightness and ink fraction."""
    values = np.asarray(pixels, dtype=np.float64).reshape(len(pixels), -1)
    return values.mean(axis=1), (values > INK_LEVEL).mean(axis=1)


def predicted_distribution(probabilities: np.ndarray) -> np.ndarray:
    return np.bincount(probabilities.argmax(axis=1), minlength=NUM_CLASSES) / max(len(probabilities), 1)


@dataclass(frozen=True)
class BatchProfile:
    """What the checks (and the drift figure) read of a scored batch, computed once."""

    brightness: np.ndarray  # per image
    ink: np.ndarray  # per image
    predicted_distribution: np.ndarray  # (10,)
    mean_confidence: float

    @classmethod
    def of(cls, pixels: np.ndarray, probabilities: np.ndarray) -> BatchProfile:
        """``pixels`` (N, 784) in [0, 1]; ``probabilities`` the model's (N, 10) answers."""
        brightness, ink = image_statistics(pixels)
        return cls(brightness, ink, predicted_distribution(probabilities), float(probabilities.max(axis=1).mean()))

    @property
    def images(self) -> int:
        return len(self.brightness)


def build_reference(train: Split, test_probabilities: np.ndarray, test_accuracy: float,
                    generator: torch.Generator) -> Reference:
    """``train``: the training images, of which a seeded sample is kept (drawn before any
    conversion: only the sample becomes floats); ``test_probabilities``: the model's (M, 10)
    answers on its test images."""
    chosen = torch.randperm(len(train), generator=generator)[:REFERENCE_SAMPLE]
    sample = Split(train.images[chosen], train.labels[chosen])
    brightness, ink = image_statistics(sample.flat_pixels(torch.float32).numpy())
    return Reference(brightness=brightness.tolist(), ink=ink.tolist(),
                     predicted_distribution=predicted_distribution(test_probabilities).tolist(),
                     mean_confidence=float(test_probabilities.max(axis=1).mean()), test_accuracy=test_accuracy)


def monitor(batch: BatchProfile, accuracy: float | None, reference: Reference, thresholds: Thresholds
            ) -> MonitorReport:
    """Compare a scored batch (its profile, its ``accuracy`` in percent where labels are
    known) with the model's ``reference``."""
    from scipy import stats  # 0.4 s of imports, only where a batch is monitored

    checks: list[Check] = []
    if batch.images >= thresholds.min_images:
        for name, values, trained in (("input_ks_brightness", batch.brightness, reference.brightness),
                                      ("input_ks_ink", batch.ink, reference.ink)):
            test = stats.ks_2samp(values, np.asarray(trained))
            drift = test.statistic > thresholds.input_ks and test.pvalue < thresholds.input_p_value
            checks.append(Check(name=name, value=float(test.statistic), threshold=thresholds.input_ks, drift=drift))
        tvd = 0.5 * float(np.abs(batch.predicted_distribution - reference.predicted_distribution).sum())
        checks.append(Check(name="class_tvd", value=tvd, threshold=thresholds.class_tvd,
                            drift=tvd > thresholds.class_tvd))
        drop = reference.mean_confidence - batch.mean_confidence
        checks.append(Check(name="confidence_drop", value=drop, threshold=thresholds.confidence_drop,
                            drift=drop > thresholds.confidence_drop))
    if accuracy is not None and math.isfinite(accuracy):
        drop = reference.test_accuracy - accuracy
        checks.append(Check(name="accuracy_drop", value=drop, threshold=thresholds.accuracy_drop,
                            drift=drop > thresholds.accuracy_drop))
    return MonitorReport(verdict="drift" if any(check.drift for check in checks) else "ok", images=batch.images,
                         checks=checks)
