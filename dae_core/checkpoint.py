"""Atomic files and resumable training state.

Everything the project writes goes through ``atomic_write``: a temporary file in the
target's folder, flushed and fsynced, then renamed over the target, so a crash never
leaves a half-written file that a later run would trust. Checkpoints hold only
tensors and plain Python values and are read back with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
        raise


def write_json(path: Path, payload: Any) -> None:
    with atomic_write(path, "w") as stream:
        json.dump(payload, stream, indent=2)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_write(path) as stream:
        torch.save(payload, stream)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: dict[str, list[float]],
) -> dict[str, Any]:
    """Everything needed to continue a training loop exactly at the next epoch."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "history": {key: list(values) for key, values in history.items()},
    }


def restore_training_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, list[float]]:
    """Load a ``training_state`` into live objects and return its history."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"].cpu())
    return {key: list(values) for key, values in state["history"].items()}
