"""Input corruption for denoising pretraining and the noisy-test evaluation."""

from __future__ import annotations

import torch

from dae_core.config import NoiseConfig


def corrupt(clean: torch.Tensor, noise: NoiseConfig, generator: torch.Generator,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """clean + N(mean, std^2) noise, clamped back to the valid pixel range [0, 1].

    Written into ``out`` (same shape as ``clean``) when given, so a training loop can
    reuse one buffer. A disabled config returns the input itself (no copy).
    """
    if not noise.enabled:
        return clean
    noisy = out if out is not None else torch.empty_like(clean)
    # The draw, shift and scale in one kernel, then one add and an in-place clamp.
    return noisy.normal_(noise.mean, noise.std, generator=generator).add_(clean).clamp_(0.0, 1.0)
