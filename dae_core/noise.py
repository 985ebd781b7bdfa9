"""Input corruption for denoising pretraining and the noisy-test evaluation."""

from __future__ import annotations

import torch

from dae_core.config import NoiseConfig


def corrupt(clean: torch.Tensor, noise: NoiseConfig, generator: torch.Generator) -> torch.Tensor:
    """clean + N(mean, std^2) noise, clamped back to the valid pixel range [0, 1].

    A disabled config returns the input itself (no copy).
    """
    if not noise.enabled:
        return clean
    noisy = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    # One fused multiply-add and an in-place clamp: no temporaries beyond the noise buffer.
    return noisy.mul_(noise.std).add_(clean, alpha=1.0).add_(noise.mean).clamp_(0.0, 1.0)
