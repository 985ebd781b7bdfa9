"""The hand-written pretraining step against the default, autograd on the model."""

import pytest
import torch

from dae_core.config import NoiseConfig, PretrainConfig
from dae_core.model import DenoisingAutoencoder
from dae_core.pretrain_step import AutogradStep, HandwrittenStep, make_pretrain_step


def _gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("noise", [NoiseConfig(), NoiseConfig(enabled=False)], ids=["noise", "clean"])
@pytest.mark.parametrize("sparsity_weight", [0.0, 1e-4, 0.5])
@pytest.mark.parametrize("rows", [16, 11], ids=["full-batch", "short-last-batch"])
def test_handwritten_step_equals_autograd_on_the_module(noise, sparsity_weight, rows):
    torch.manual_seed(0)
    model = DenoisingAutoencoder(24).double()
    pixels = torch.rand(40, 784, dtype=torch.float64)
    index = torch.randperm(40)[:rows]
    config = PretrainConfig(noise=noise, sparsity_weight=sparsity_weight)

    mse, loss = HandwrittenStep(model, config, batch_size=16)(pixels, index, torch.Generator().manual_seed(5))
    handwritten = _gradients(model)
    expected_mse, expected_loss = AutogradStep(model, config, batch_size=16)(
        pixels, index, torch.Generator().manual_seed(5))
    expected = _gradients(model)

    torch.testing.assert_close(mse, expected_mse)
    torch.testing.assert_close(loss, expected_loss)
    for name, gradient in expected.items():
        torch.testing.assert_close(handwritten[name], gradient, msg=name)


@pytest.mark.parametrize("step_class", [AutogradStep, HandwrittenStep])
def test_each_step_overwrites_the_previous_gradients(step_class):
    torch.manual_seed(1)
    model = DenoisingAutoencoder(8)
    pixels = torch.rand(20, 784)
    config = PretrainConfig(noise=NoiseConfig(enabled=False))
    step = step_class(model, config, batch_size=10)
    step(pixels, torch.arange(10), torch.Generator())
    step(pixels, torch.arange(10, 20), torch.Generator())
    second = _gradients(model)
    AutogradStep(model, config, batch_size=10)(pixels, torch.arange(10, 20), torch.Generator())
    for name, gradient in _gradients(model).items():
        torch.testing.assert_close(second[name], gradient, msg=name)


def test_the_switch_picks_the_step():
    model, config = DenoisingAutoencoder(8), PretrainConfig()
    assert isinstance(make_pretrain_step("autograd", model, config, 4), AutogradStep)
    assert isinstance(make_pretrain_step("handwritten", model, config, 4), HandwrittenStep)
