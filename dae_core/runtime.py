"""Device, dtype, thread and seed plumbing shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dae_core.config import RuntimeConfig

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


@dataclass(frozen=True)
class Placement:
    """Where a stage computes."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def of(cls, runtime: RuntimeConfig) -> Placement:
        return cls(resolve_device(runtime.device), resolve_dtype(runtime.dtype))


def set_thread_count(runtime: RuntimeConfig) -> None:
    """torch's intra-op thread count is process-wide: each stage sets it once, first, so
    that cells sharing a process (``dae compare --parallel``) each get their share."""
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)


def thread_share(parallel: int, threads: int | None) -> int | None:
    """The intra-op thread count of each of ``parallel`` jobs sharing this process's cores:
    an even share when several run at once, else the configured ``threads``."""
    return max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else threads


def derive_seed(seed: int, stream: str) -> int:
    """Independent, stable seeds per random stream (init, pretraining, classifier, ...),
    so that changing one stage's randomness never shifts another's."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_generator(seed: int, stream: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, stream))


@contextlib.contextmanager
def seeded(seed: int, stream: str) -> Iterator[None]:
    """Seed torch's global CPU RNG for a block (nn.Linear's init draws from it) and
    restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, stream))
        yield
