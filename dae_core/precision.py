"""Mixed precision (``runtime.autocast``): matmuls in a 16-bit type under ``torch.autocast``,
weights, gradients and optimizer state in float32.

bfloat16 keeps float32's exponent range, so its gradients need no scaling; CPUs with
AVX512-BF16 or AMX and every recent GPU multiply it about twice as fast as float32
(docs/benchmarks.md). float16 is for GPUs, with a ``GradScaler`` against underflowing
gradients. On a GPU either mode also lets float32 matmuls (the ones autocast leaves in
float32) use TF32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from dae_core.config import Autocast, ConfigError

_TYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class MixedPrecision:
    """One training stage's precision: its autocast context, loss scaling and step."""

    mode: Autocast
    device: torch.device
    scaler: torch.amp.GradScaler | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.mode == "float16":
            if self.device.type != "cuda":
                raise ConfigError("invalid configuration:\n  runtime.autocast = 'float16' needs a GPU and this "
                                  "machine computes on the CPU; use 'bfloat16'")
            self.scaler = torch.amp.GradScaler(self.device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context for forward passes (and the backward they start)."""
        if self.mode == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_TYPES[self.mode])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


FLOAT32 = MixedPrecision("none", torch.device("cpu"))


@contextlib.contextmanager
def tf32_matmuls(precision: MixedPrecision) -> Iterator[None]:
    """TF32 for float32 matmuls on a GPU while mixed precision is on; restored after."""
    if precision.mode == "none" or precision.device.type != "cuda":
        yield
        return
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
