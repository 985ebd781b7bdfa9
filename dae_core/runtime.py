"""How training computes, decided once from the config (``Runtime``: device, dtype, threads,
mixed precision with its TF32 matmuls, the pretraining step's gradients and compilation),
and the seed plumbing shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dae_core.config import CompileStep, PretrainGradients, RuntimeConfig
from dae_core.precision import MixedPrecision

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


@dataclass(frozen=True)
class Runtime:
    """How a stage, a tuning trial or a benchmark computes: where and in which dtype
    (``place``), in how many torch threads, in which precision (``precision``: autocast,
    loss scaling, TF32 matmuls while it is on), and how the pretraining step runs. Every
    path that trains starts one here (stages and trials through ``TrainingSetup``)."""

    place: Placement
    threads: int | None
    precision: MixedPrecision
    gradients: PretrainGradients
    compile_step: CompileStep

    @classmethod
    def start(cls, runtime: RuntimeConfig) -> Runtime:
        """The runtime ``runtime`` asks for, with torch's thread count set to it first (see
        ``set_thread_count``)."""
        set_thread_count(runtime)
        place = Placement.of(runtime)
        return cls(place, runtime.threads, MixedPrecision(runtime.autocast, place.device), runtime.pretrain_gradients,
                   runtime.compile_step)


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
