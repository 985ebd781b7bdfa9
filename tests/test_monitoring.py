"""Monitoring scored batches on generated digits: a batch like the training images passes,
inverted pictures, a shifted class mix, unsure answers and lost accuracy are each flagged,
and a handful of pictures is judged on its accuracy alone."""

import numpy as np
import torch

from dae_core.data import Split
from dae_core.monitoring import BatchProfile, Thresholds, build_reference, monitor
from tests.conftest import synthetic_digits

THRESHOLDS = Thresholds()


def _pixels(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = synthetic_digits(count, seed)
    return images.reshape(count, -1).astype(np.float32) / 255, labels.astype(int)


def _answers(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Probabilities that pick each label with ``confidence``, the rest spread evenly."""
    probabilities = np.full((len(labels), 10), (1 - confidence) / 9)
    probabilities[np.arange(len(labels)), labels] = confidence
    return probabilities


def _reference():
    images, labels = synthetic_digits(1000, seed=1)
    train = Split(torch.from_numpy(images), torch.from_numpy(labels).long())
    _, test_labels = _pixels(300, seed=2)
    return build_reference(train, _answers(test_labels), 95.0, torch.Generator().manual_seed(0))


def _checks(report) -> dict[str, bool]:
    return {check.name: check.drift for check in report.checks}


def test_a_batch_like_the_training_images_passes_every_check():
    pixels, labels = _pixels(300, seed=3)
    report = monitor(BatchProfile.of(pixels, _answers(labels)), 94.0, _reference(), THRESHOLDS)
    assert report.verdict == "ok" and report.images == 300
    assert set(_checks(report)) == {"input_ks_brightness", "input_ks_ink", "class_tvd", "confidence_drop",
                                    "accuracy_drop"} and not any(_checks(report).values())


def test_inverted_pictures_are_flagged_as_input_drift():
    pixels, labels = _pixels(300, seed=3)
    report = monitor(BatchProfile.of(1 - pixels, _answers(labels)), None, _reference(), THRESHOLDS)
    assert report.verdict == "drift" and _checks(report)["input_ks_brightness"] and _checks(report)["input_ks_ink"]
    assert "accuracy_drop" not in _checks(report), "no labels, no accuracy check"


def test_a_shifted_class_mix_unsure_answers_and_lost_accuracy_are_each_flagged():
    pixels, labels = _pixels(300, seed=3)
    sevens = _answers(np.full(300, 7))
    assert _checks(monitor(BatchProfile.of(pixels, sevens), None, _reference(), THRESHOLDS))["class_tvd"]
    unsure = _answers(labels, confidence=0.6)
    assert _checks(monitor(BatchProfile.of(pixels, unsure), None, _reference(), THRESHOLDS)) == {
        "input_ks_brightness": False, "input_ks_ink": False, "class_tvd": False, "confidence_drop": True}
    lost = monitor(BatchProfile.of(pixels, _answers(labels)), 85.0, _reference(), THRESHOLDS)
    assert lost.verdict == "drift" and _checks(lost)["accuracy_drop"]
    assert lost.metrics()["monitor/accuracy_drop"] == 10.0


def test_a_handful_of_pictures_is_judged_on_its_accuracy_alone():
    pixels, labels = _pixels(10, seed=3)
    report = monitor(BatchProfile.of(1 - pixels, _answers(labels)), 95.0, _reference(), THRESHOLDS)
    assert report.verdict == "ok" and list(_checks(report)) == ["accuracy_drop"]
