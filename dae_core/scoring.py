"""Batch scoring: which images, which labels, and what the predictions say about them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from dae_core.data import DataError, read_idx
from dae_core.images import Digits, ImageUnreadable, read_digits
from dae_core.metrics import accuracy_percent, confusion_matrix, per_class_accuracy
from dae_core.monitoring import MonitorReport
from dae_core.shapes import NUM_CLASSES


@dataclass(frozen=True)
class Batch:
    digits: Digits
    labels: np.ndarray | None  # (N,) ints 0..9 where known for every image
    skipped: list[str]  # one line per unreadable file


@dataclass(frozen=True)
class Scores:
    accuracy: float  # percent
    per_class_accuracy: list[float]  # percent, NaN for a digit absent from the labels


def _folder_label(path: Path) -> int | None:
    """ImageFolder layout: ``<source>/<digit>/<picture>``."""
    name = path.parent.name
    return int(name) if len(name) == 1 and name.isdigit() else None


def read_files(files: Iterable[Path]) -> tuple[list[tuple[Path, Digits]], list[str]]:
    """Each readable file with its digits, and one line per file that could not be read
    (naming it): the others are still scored."""
    read, skipped = [], []
    for path in files:
        try:
            read.append((path, read_digits(path)))
        except ImageUnreadable as error:
            skipped.append(str(error))
    return read, skipped


def joined(read: list[tuple[Path, Digits]]) -> Digits:
    return Digits([name for _, digits in read for name in digits.names],
                  np.concatenate([digits.pixels for _, digits in read]))


def rounded(probabilities: np.ndarray) -> np.ndarray:
    """The float32 probabilities as they are printed: in float64, rounded to 6 places (a
    rounded float32 prints as 0.9876949787139893)."""
    return probabilities.astype(np.float64).round(6)


def read_batch(source: Path, labels_file: Path | None = None) -> Batch:
    """The images of ``source``: an IDX file (labels from ``labels_file``, an IDX labels
    file) or a folder of pictures, searched recursively (labels from digit-named
    subfolders, ``7/scan.png``, when every picture has one)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(path for path in source.rglob("*") if path.is_file() and not path.name.startswith("."))
        read, skipped = read_files(files)
        if not read:
            raise DataError(f"{source}: no readable pictures" + (f" ({len(skipped)} unreadable)" if skipped else ""),
                            "pass a folder of pictures (PNG, JPEG, ...) or an IDX file of 28x28 images")
        labels = [_folder_label(path) for path, digits in read for _ in digits.names]
        known = None if None in labels else np.asarray(labels, dtype=np.int64)
        return Batch(joined(read), known, skipped)
    digits = read_digits(source)
    if labels_file is None:
        return Batch(digits, None, [])
    labels = read_idx(Path(labels_file), ndim=1).astype(np.int64)
    if len(labels) != len(digits.names):
        raise DataError(f"{labels_file}: {len(labels)} labels for {len(digits.names)} images in {source}",
                        "pass the labels file that belongs to these images")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_file}: label {int(labels.max())} outside 0..9", "pass an IDX file of digit labels")
    return Batch(digits, labels, [])


def scores(probabilities: np.ndarray, labels: np.ndarray) -> Scores:
    predicted, truth = torch.from_numpy(probabilities.argmax(axis=1)), torch.from_numpy(labels)
    return Scores(accuracy_percent(predicted, truth), per_class_accuracy(confusion_matrix(predicted, truth)))


def prediction_rows(batch: Batch, probabilities: np.ndarray) -> dict[str, list]:
    """The predictions table, a column per field: file, digit, probability, label (where
    known), p0..p9."""
    probabilities = rounded(probabilities)
    table: dict[str, list] = {
        "file": list(batch.digits.names),
        "digit": probabilities.argmax(axis=1).tolist(),
        "probability": probabilities.max(axis=1).tolist(),
    }
    if batch.labels is not None:
        table["label"] = batch.labels.tolist()
    for digit in range(NUM_CLASSES):
        table[f"p{digit}"] = probabilities[:, digit].tolist()
    return table


class ScoringSummary(BaseModel):
    """What the ``dae-score`` flow returns."""

    mlflow_run_id: str
    model_uri: str
    model_version: str | None
    images: int
    skipped: list[str]
    accuracy: float | None  # percent, when labels were known
    per_class_accuracy: list[float] | None
    predictions_csv: str  # the run's artifact path
    # The batch against the model's reference (dae_core.monitoring); None for a model
    # registered before references were logged.
    monitor: MonitorReport | None = None
