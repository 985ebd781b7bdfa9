import pytest
import torch
import torch.nn.functional as F

from dae_core.config import NoiseConfig, PretrainConfig
from dae_core.model import DenoisingAutoencoder, l1_sparsity
from dae_core.noise import corrupt
from dae_core.pretrain_step import DenoisingStep


def _autograd_reference(model, clean, config, seed):
    model.zero_grad(set_to_none=True)
    reconstruction, hidden = model(corrupt(clean, config.noise, torch.Generator().manual_seed(seed)))
    mse = F.mse_loss(reconstruction, clean)
    loss = mse + config.sparsity_weight * l1_sparsity(hidden)
    loss.backward()
    return mse.detach(), loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("noise", [NoiseConfig(), NoiseConfig(enabled=False)], ids=["noise", "clean"])
@pytest.mark.parametrize("sparsity_weight", [0.0, 1e-4, 0.5])
@pytest.mark.parametrize("rows", [16, 11], ids=["full-batch", "short-last-batch"])
def test_step_equals_autograd_on_the_module(noise, sparsity_weight, rows):
    torch.manual_seed(0)
    model = DenoisingAutoencoder(24).double()
    pixels = torch.rand(40, 784, dtype=torch.float64)
    index = torch.randperm(40)[:rows]
    config = PretrainConfig(noise=noise, sparsity_weight=sparsity_weight)

    step = DenoisingStep(model, config, batch_size=16)
    mse, loss = step(pixels, index, torch.Generator().manual_seed(5))
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    expected_mse, expected_loss, expected = _autograd_reference(model, pixels[index], config, seed=5)

    torch.testing.assert_close(mse, expected_mse)
    torch.testing.assert_close(loss, expected_loss)
    for name, gradient in expected.items():
        torch.testing.assert_close(fused[name], gradient, msg=name)


def test_each_step_overwrites_the_previous_gradients():
    torch.manual_seed(1)
    model = DenoisingAutoencoder(8)
    pixels = torch.rand(20, 784)
    config = PretrainConfig(noise=NoiseConfig(enabled=False))
    step = DenoisingStep(model, config, batch_size=10)
    step(pixels, torch.arange(10), torch.Generator())
    step(pixels, torch.arange(10, 20), torch.Generator())
    second = {name: p.grad.clone() for name, p in model.named_parameters()}
    _, _, expected = _autograd_reference(model, pixels[10:], config, seed=0)
    for name, gradient in expected.items():
        torch.testing.assert_close(second[name], gradient, msg=name)
