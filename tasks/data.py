"""Dataset fetching: torchvision's checksummed download, cached by the dataset's identity."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from dae_core.data import check_raw_files, file_digest, locate
from dae_core.raw_files import RAW_FILES, DatasetName, DownloadFailed, raw_dir


@dataclass(frozen=True)
class DatasetRef:
    """Where a verified dataset lies and what it is: passed between tasks instead of tensors."""

    name: str
    raw_dir: str
    digest: str


def _files_identity(context: Any, arguments: dict[str, Any]) -> str | None:
    """Cache key: dataset, folder, and each raw file's size and mtime. A changed,
    removed or re-downloaded file changes the key, so a stale digest is never reused."""
    folder = raw_dir(Path(arguments["data_dir"]), arguments["dataset"])
    stats = []
    for name in RAW_FILES:
        path = folder / name
        if not path.is_file():
            return None  # nothing to cache yet: run (and download)
        info = path.stat()
        stats.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
    identity = f"{arguments['dataset']}|{folder}|" + "|".join(stats)
    return "dataset-" + hashlib.sha256(identity.encode()).hexdigest()


def _download_may_succeed_later(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only a download that failed with the network up; missing or corrupt files
    and an absent network fail at once."""
    return isinstance(state.result(raise_on_failure=False), DownloadFailed)


@task(
    name="fetch-dataset",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_download_may_succeed_later,
    cache_key_fn=_files_identity,
    persist_result=True,
)
def fetch_dataset(dataset: DatasetName, data_dir: str, download: bool = True) -> DatasetRef:
    """Make sure the raw files are present (downloading through torchvision's mirrors when
    allowed) and sound, and return their folder and sha256 digest. Runs before any MLflow
    run exists, so bad data leaves no run behind."""
    folder = locate(Path(data_dir), dataset, allow_download=download)
    check_raw_files(folder)
    digest = file_digest(folder)
    get_run_logger().info("dataset %s at %s (sha256 %s)", dataset, folder, digest[:12])
    return DatasetRef(name=dataset, raw_dir=str(folder), digest=digest)
