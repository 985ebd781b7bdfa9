"""Where a dataset's raw files lie, whether they are there, and the errors of getting them.

Torch-free, so that ``dae`` refuses missing data before it starts a server or imports the
stack (dae_core/data.py reads the files).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from dae_core.errors import EXIT_DATA, DaeError

DatasetName = Literal["mnist", "fashion_mnist"]

# torchvision's class and folder name for each dataset: <root>/<folder>/raw/<files>.
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
SPLIT_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
RAW_FILES = (*SPLIT_FILES[True], *SPLIT_FILES[False])


class DataError(DaeError, RuntimeError):
    """A dataset file is missing, malformed or could not be downloaded."""

    exit_code = EXIT_DATA
    fix = "delete the damaged file to download it again, or pass --data-dir with a good copy"


class DataMissing(DataError):
    """The raw files are not there and cannot be fetched here: downloading is disabled, or
    there is plainly no network (no mirror's host name resolves)."""

    fix = ("pass --data-dir DIR (or set DAE_DATA_DIR) where DIR/MNIST/raw/ holds the four MNIST IDX files, "
           "e.g. --data-dir ../shared/data")


class DownloadFailed(DataError):
    """Every mirror failed while the network answers: a later try may succeed."""

    fix = "run the command again later, or pass --data-dir with a local copy of the files"


def raw_dir(root: Path, dataset: DatasetName) -> Path:
    return Path(root) / TORCHVISION_FOLDER[dataset] / "raw"


def has_raw_files(directory: Path) -> bool:
    return all((Path(directory) / name).is_file() for name in RAW_FILES)


def network_reachable(hosts: list[str]) -> bool:
    """Whether any of ``hosts`` resolves: offline, a download gives up at once instead of
    trying every mirror, twice over, with retries."""
    for host in hosts:
        try:
            socket.getaddrinfo(host, 443)
            return True
        except OSError:
            continue
    return False


def _check_network(target: Path, dataset: DatasetName) -> None:
    from torchvision import datasets

    source = getattr(datasets, TORCHVISION_FOLDER[dataset])
    hosts = sorted({urlparse(mirror).hostname or mirror for mirror in source.mirrors})
    if not network_reachable(hosts):
        raise DataMissing(f"{target}: {dataset} is not there and there is no network to download it "
                          f"({', '.join(hosts)} do not resolve)")


def check_obtainable(root: Path, dataset: DatasetName, allow_download: bool = True) -> None:
    """Refuse at once what ``locate`` would refuse: files missing where they may not, or
    cannot, be downloaded. ``dae`` asks before it starts any server (a refusal took 16 s
    of a temporary server's boot before)."""
    target = raw_dir(root, dataset)
    if has_raw_files(target):
        return
    if not allow_download:
        missing = [name for name in RAW_FILES if not (target / name).is_file()]
        raise DataMissing(f"{target}: missing {', '.join(missing)} and downloading is disabled")
    _check_network(target, dataset)
