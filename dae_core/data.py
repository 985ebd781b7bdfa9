"""MNIST-style datasets: checksummed download, strict IDX parsing, device-resident splits.

A split is read once into a uint8 tensor and moved to the device once; training draws
batches from it by a seeded permutation, so no per-sample PIL / ToTensor work happens
in the training loop.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dae_core.raw_files import (
    RAW_FILES,
    SPLIT_FILES,
    TORCHVISION_FOLDER,
    DataError,
    DatasetName,
    DownloadFailed,
    check_obtainable,
    has_raw_files,
    raw_dir,
)
from dae_core.shapes import IMAGE_SIDE, NUM_CLASSES

log = logging.getLogger(__name__)

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
_UBYTE = 0x08


class SplitTooSmall(DataError):
    """``data.train_limit`` or ``data.test_limit`` asks for more images than the split has:
    the files are sound, the setting is not."""

    def __init__(self, field: str, limit: int, available: int) -> None:
        super().__init__(f"data.{field} = {limit}: the split has only {available} images",
                         f"--set data.{field}={available} (or fewer), or pass --data-dir with the full dataset")
        self.field, self.limit, self.available = field, limit, available

    def __reduce__(self) -> tuple[type, tuple[str, int, int]]:
        # Rebuilt from its own arguments: Prefect and multiprocessing pickle task errors.
        return type(self), (self.field, self.limit, self.available)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def flat_pixels(self, dtype: torch.dtype) -> torch.Tensor:
        """(N, 784) pixels scaled to [0, 1], in one conversion on the split's device."""
        return self.images.reshape(len(self), -1).to(dtype).div_(255.0)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an uncompressed unsigned-byte IDX file, refusing anything malformed."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic {blob[:4].hex() or 'empty'})")
    if blob[2] != _UBYTE:
        raise DataError(f"{path}: IDX type 0x{blob[2]:02x}, expected unsigned byte 0x08")
    if blob[3] != ndim:
        raise DataError(f"{path}: {blob[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{path}: truncated header ({len(blob)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(blob, ">u4", count=ndim, offset=4))
    expected = header + math.prod(shape)  # Python's integers: a forged header cannot overflow it
    if len(blob) != expected:
        kind = "truncated" if len(blob) < expected else "trailing bytes"
        raise DataError(f"{path}: {kind}: {len(blob)} bytes, header shape {shape} needs {expected}")
    return np.frombuffer(blob, np.uint8, offset=header).reshape(shape)


def load_split(directory: Path, train: bool, limit: int | None = None) -> Split:
    """Read one split from a raw folder, checking shapes, label range and counts."""
    image_file, label_file = (Path(directory) / name for name in SPLIT_FILES[train])
    images = read_idx(image_file, ndim=3)
    labels = read_idx(label_file, ndim=1)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{image_file}: images are {images.shape[1:]}, expected (28, 28)")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{label_file}: {labels.shape[0]} labels for {images.shape[0]} images in {image_file}"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{label_file}: label {int(labels.max())} outside 0..9")
    if limit is not None:
        if limit > labels.shape[0]:
            raise SplitTooSmall("train_limit" if train else "test_limit", limit, labels.shape[0])
        images, labels = images[:limit], labels[:limit]
    # np.frombuffer is read-only; torch needs its own writable copy.
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def hold_out(split: Split, size: int, generator: torch.Generator) -> tuple[Split, Split | None]:
    """(training, validation): ``size`` images drawn at random (``generator``) from
    ``split``, the rest kept in their order; no validation when ``size`` is 0."""
    if size == 0:
        return split, None
    order = torch.randperm(len(split), generator=generator, device=split.labels.device)
    held, kept = order[:size], order[size:].sort().values
    return Split(split.images[kept], split.labels[kept]), Split(split.images[held], split.labels[held])


def check_raw_files(directory: Path) -> None:
    """Read both splits in full (headers, sizes, shapes, label range, counts), so that a
    corrupt or truncated file is refused before anything else runs."""
    for train in (True, False):
        load_split(directory, train)


def file_digest(directory: Path) -> str:
    """sha256 over the four raw files: the dataset's identity for caching and tracking."""
    digest = hashlib.sha256()
    for name in RAW_FILES:
        with open(Path(directory) / name, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def download(root: Path, dataset: DatasetName) -> Path:
    """Fetch the raw files through torchvision's mirrors and md5 checksums (``locate``
    has checked that a mirror resolves).

    Archives are downloaded and unpacked in a temporary folder beside the target and
    each file is moved into place with an atomic rename, so an interrupted download
    never leaves a file that a later run would trust.
    """
    from torchvision import datasets

    target = raw_dir(root, dataset)
    source = getattr(datasets, TORCHVISION_FOLDER[dataset])
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as scratch:
        for archive, md5 in source.resources:
            _fetch_verified(source.mirrors, archive, md5, Path(scratch))
            unpacked = Path(scratch) / archive.removesuffix(".gz")
            with gzip.open(Path(scratch) / archive, "rb") as src, open(unpacked, "wb") as dst:
                shutil.copyfileobj(src, dst)
            unpacked.replace(target / unpacked.name)
    log.info("downloaded %s into %s", dataset, target)
    return target


def _fetch_verified(mirrors: list[str], archive: str, md5: str, scratch: Path) -> None:
    """Try each mirror; a file failing its md5 is deleted and fetched once more (from the
    next mirror, or the same one where there is only one) before giving up."""
    from torchvision.datasets import utils

    attempts = mirrors if len(mirrors) > 1 else mirrors * 2
    errors = []
    for mirror in attempts:
        try:
            utils.download_url(f"{mirror}{archive}", str(scratch), filename=archive, md5=md5)
            return
        except (OSError, RuntimeError) as error:
            (scratch / archive).unlink(missing_ok=True)
            reason = "checksum mismatch" if isinstance(error, RuntimeError) else str(error)
            errors.append(f"{mirror}{archive}: {reason}")
    raise DownloadFailed(f"could not download {archive} with md5 {md5}: " + "; ".join(errors))


def locate(root: Path, dataset: DatasetName, allow_download: bool = True) -> Path:
    """The raw folder for ``dataset`` under ``root``, downloading it if allowed and missing."""
    target = raw_dir(root, dataset)
    if has_raw_files(target):
        return target
    check_obtainable(root, dataset, allow_download)
    return download(root, dataset)


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """A fresh seeded permutation of 0..n-1 cut into batches (the last may be short)."""
    order = torch.randperm(n, generator=generator, device=device)
    return iter(order.split(batch_size))
