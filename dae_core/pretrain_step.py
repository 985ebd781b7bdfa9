"""One denoising-pretraining step: loss and gradients of a batch into the model's
``.grad``; the caller then steps the optimizer.

``AutogradStep`` is the default and the definition: ``DenoisingAutoencoder.forward``,
``l1_sparsity`` and autograd, so a change to the model needs nothing here.

``HandwrittenStep`` (``runtime.pretrain_gradients = "handwritten"``) computes the same
loss and gradients with formulas derived by hand for exactly this architecture. It
makes a CPU pretraining epoch 12-15% shorter than autograd's (benchmarks/variants.py,
docs/benchmarks.md), which spends that time on what this small network does not need:
a fresh allocation (and page faults) for every intermediate, a slow ``mse_loss`` kernel,
bias-broadcast copies and gradient accumulation (docs/benchmarks.md, section 2).
Here every intermediate lives in a buffer allocated once, the loss is one dot product,
the two activation backwards are single fused kernels and the constant loss scale rides
on the weight-gradient matmuls' ``alpha``.
``tests/test_pretrain_step.py`` checks its loss and gradients against ``AutogradStep``.

With weight ``w``, batch ``B``, ``D`` pixels and ``H`` hidden units:

    loss   = |y - x|^2 / (B D) + w |h|_1 / (B H)
    dz2    = (y - x) * y (1 - y)                       (scaled by s = 2 / (B D) below)
    dW2    = s dz2^T h,  db2 = s sum_B dz2
    dz1    = (dz2 W2 + (w / (B H s)) sign(h)) * (1 - h^2)
    dW1    = s dz1^T x_noisy,  db1 = s sum_B dz1
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from dae_core.config import CompileStep, PretrainConfig, PretrainGradients
from dae_core.model import DenoisingAutoencoder, l1_sparsity
from dae_core.noise import corrupt
from dae_core.precision import FLOAT32, MixedPrecision


class PretrainStep(Protocol):
    def __call__(self, pixels: torch.Tensor, index: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of the batch ``pixels[index]`` into ``.grad``; returns (mse, loss) as
        0-dim device tensors (no host sync)."""
        ...


def make_pretrain_step(gradients: PretrainGradients, model: DenoisingAutoencoder, config: PretrainConfig,
                       batch_size: int, precision: MixedPrecision = FLOAT32,
                       compile_step: CompileStep = "none") -> PretrainStep:
    if gradients == "handwritten":
        return HandwrittenStep(model, config, batch_size)
    return AutogradStep(model, config, batch_size, precision, compile_step)


class AutogradStep:
    """The model's forward, the loss of dae_core.model, autograd's backward; the forward
    under ``precision``'s autocast (the noise is drawn in float32, outside it).
    ``compile_step``: forward and loss through ``torch.compile`` in that mode (its backward
    is compiled with it); "reduce-overhead" captures both as CUDA graphs on a GPU, so a step
    is a few graph replays instead of a few dozen kernel launches. The noise stays outside:
    it draws from the run's own generator."""

    def __init__(self, model: DenoisingAutoencoder, config: PretrainConfig, batch_size: int,
                 precision: MixedPrecision = FLOAT32, compile_step: CompileStep = "none") -> None:
        self.model, self.config, self.precision = model, config, precision
        self.losses = self._losses if compile_step == "none" else torch.compile(self._losses, mode=compile_step)
        self.graphed = compile_step == "reduce-overhead"

    def _losses(self, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.precision.autocast():
            reconstruction, hidden = self.model(noisy)
            mse = F.mse_loss(reconstruction, clean)
            return mse, mse + self.config.sparsity_weight * l1_sparsity(hidden)

    def __call__(self, pixels: torch.Tensor, index: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        clean = pixels[index]  # (B, 784)
        noisy = corrupt(clean, self.config.noise, generator)
        if self.graphed:
            # A new step: the graphs may reuse the memory of the previous replay's outputs.
            torch.compiler.cudagraph_mark_step_begin()
        mse, loss = self.losses(noisy, clean)
        self.model.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        if self.graphed:  # the epoch keeps every step's losses: copies, not the graph's buffers
            return mse.detach().clone(), loss.detach().clone()
        return mse.detach(), loss.detach()


class HandwrittenStep:
    """Forward, loss and backward of one batch by the formulas above, every intermediate in
    a buffer sized for ``batch_size``; a shorter last batch uses their leading rows."""

    def __init__(self, model: DenoisingAutoencoder, config: PretrainConfig, batch_size: int) -> None:
        self.encoder, self.decoder = model.encoder[0], model.decoder[0]
        self.config = config
        weight = self.encoder.weight
        pixels, hidden = self.encoder.in_features, self.encoder.out_features

        def buffer(width: int) -> torch.Tensor:
            return torch.empty(batch_size, width, device=weight.device, dtype=weight.dtype)

        self.clean, self.noisy, self.output, self.output_grad = (buffer(pixels) for _ in range(4))
        self.hidden, self.hidden_sign, self.hidden_grad = (buffer(hidden) for _ in range(3))
        for parameter in (*self.encoder.parameters(), *self.decoder.parameters()):
            parameter.grad = torch.zeros_like(parameter)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, index: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = len(index)
        clean = torch.index_select(pixels, 0, index, out=self.clean[:rows])
        noisy = corrupt(clean, self.config.noise, generator, out=self.noisy[:rows])
        hidden = torch.addmm(self.encoder.bias, noisy, self.encoder.weight.t(), out=self.hidden[:rows]).tanh_()
        output = torch.addmm(self.decoder.bias, hidden, self.decoder.weight.t(), out=self.output[:rows])
        output.sigmoid_()

        error = torch.sub(output, clean, out=self.output_grad[:rows]).view(-1)
        sign = torch.sign(hidden, out=self.hidden_sign[:rows])
        mse = torch.dot(error, error) / error.numel()
        loss = mse + self.config.sparsity_weight * torch.dot(sign.view(-1), hidden.view(-1)) / hidden.numel()

        scale = 2.0 / error.numel()
        output_grad = torch.ops.aten.sigmoid_backward.grad_input(
            error.view(rows, -1), output, grad_input=self.output_grad[:rows])
        torch.addmm(self.decoder.weight.grad, output_grad.t(), hidden, beta=0, alpha=scale,
                    out=self.decoder.weight.grad)
        torch.sum(output_grad, 0, out=self.decoder.bias.grad).mul_(scale)
        hidden_grad = torch.mm(output_grad, self.decoder.weight, out=self.hidden_grad[:rows])
        hidden_grad.add_(sign, alpha=self.config.sparsity_weight / (hidden.numel() * scale))
        pre_activation_grad = torch.ops.aten.tanh_backward.grad_input(hidden_grad, hidden, grad_input=sign)
        torch.addmm(self.encoder.weight.grad, pre_activation_grad.t(), noisy, beta=0, alpha=scale,
                    out=self.encoder.weight.grad)
        torch.sum(pre_activation_grad, 0, out=self.encoder.bias.grad).mul_(scale)
        return mse, loss
