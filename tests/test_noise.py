import torch

from dae_core.config import NoiseConfig
from dae_core.noise import corrupt


def test_noise_is_additive_gaussian_then_clamped():
    clean = torch.full((2000, 784), 0.5)
    noisy = corrupt(clean, NoiseConfig(mean=0.1, std=0.2), torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert abs((noisy - clean).mean().item() - 0.1) < 0.01
    # Clamping at 0 and 1 trims the tails: std just under 0.2.
    assert 0.18 < (noisy - clean).std().item() < 0.2
    assert torch.equal(clean, torch.full((2000, 784), 0.5)), "input must not be modified"


def test_same_generator_state_same_noise_and_disabled_is_identity():
    clean = torch.rand(10, 784)
    first = corrupt(clean, NoiseConfig(), torch.Generator().manual_seed(3))
    second = corrupt(clean, NoiseConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    assert corrupt(clean, NoiseConfig(enabled=False), torch.Generator()) is clean
