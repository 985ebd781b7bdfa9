"""Epoch loops for denoising pretraining and classifier training.

Both loops start from the length of the history they are given, so a run restored
from a checkpoint at an epoch boundary continues exactly where it stopped. Per-step
losses stay on the device and are read once per epoch (no host sync per step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from dae_core.config import CompileStep, NoiseConfig, PretrainConfig, PretrainGradients
from dae_core.data import batch_indices
from dae_core.errors import EXIT_DIVERGED, DaeError
from dae_core.metrics import accuracy_percent, predict
from dae_core.model import DenoisingAutoencoder, EncoderClassifier
from dae_core.noise import corrupt
from dae_core.precision import FLOAT32, MixedPrecision, tf32_matmuls
from dae_core.pretrain_step import make_pretrain_step
from dae_core.shapes import NUM_CLASSES

log = logging.getLogger(__name__)

# Called after each finished epoch with the 1-based epoch and that epoch's metrics.
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class History:
    """Per-epoch metrics of one training phase: one list entry per finished epoch, one
    field per metric (the subclasses name them)."""

    @property
    def epochs(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    def append(self, metrics: Mapping[str, float]) -> None:
        """A run measures what it has data for (no validation split: no ``val_*``)."""
        for metric in fields(self):
            if metric.name in metrics:
                getattr(self, metric.name).append(metrics[metric.name])

    def as_dict(self) -> dict[str, list[float]]:
        """Plain lists, as checkpoints store them."""
        return {metric.name: list(getattr(self, metric.name)) for metric in fields(self)}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Self:
        return cls(**{metric.name: list(stored.get(metric.name, [])) for metric in fields(cls)})


@dataclass
class PretrainHistory(History):
    mse: list[float] = field(default_factory=list)  # reconstruction MSE against the clean images
    loss: list[float] = field(default_factory=list)  # mse + the sparsity penalty
    val_mse: list[float] = field(default_factory=list)  # on the validation split, after the epoch


@dataclass
class ClassifierHistory(History):
    train_loss: list[float] = field(default_factory=list)  # mean NLL over the epoch's batches
    test_accuracy: list[float] = field(default_factory=list)  # percent, after the epoch
    val_accuracy: list[float] = field(default_factory=list)  # percent, on the validation split


class TrainingDiverged(DaeError, FloatingPointError):
    """A loss became NaN or infinite, or the classifier's far above guessing; the message
    names the phase, epoch and step."""

    exit_code = EXIT_DIVERGED
    fix = "--set pretrain.lr=... or classifier.lr=..."


# Fused optimizers update all parameters in one kernel: 8% off a CPU pretraining epoch
# (docs/benchmarks.md); the arithmetic is the same update rule.
def make_pretrain_optimizer(model: nn.Module, config: PretrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, fused=True)


def make_classifier_optimizer(model: EncoderClassifier, lr: float, freeze_encoder: bool = False
                              ) -> torch.optim.Optimizer:
    """Vanilla SGD: no momentum, no weight decay. ``freeze_encoder``: the head alone (the
    encoder then stops asking for gradients, so backward skips it)."""
    if freeze_encoder:
        model.encoder.requires_grad_(False)
        return torch.optim.SGD(model.head.parameters(), lr=lr, fused=True)
    return torch.optim.SGD(model.parameters(), lr=lr, fused=True)


# (corrupted inputs, clean targets) of the validation images, corrupted once.
PretrainValidation = tuple[torch.Tensor, torch.Tensor]


def validation_mse(model: DenoisingAutoencoder, validation: PretrainValidation) -> float:
    """Reconstruction MSE of the validation images, in float32, without gradients."""
    model.eval()
    inputs, targets = validation
    with torch.no_grad():
        reconstructed, _ = model(inputs)
        return F.mse_loss(reconstructed.float(), targets.float()).item()


# A classifier whose mean NLL is ten times that of guessing uniformly has diverged: its
# log-softmax keeps the loss finite (losses over 1000 were seen at lr 10), so a NaN test
# alone would let it run on and register a useless model.
DIVERGED_CLASSIFIER_LOSS = 10 * math.log(NUM_CLASSES)


def _check_finite(step_losses: torch.Tensor, phase: str, epoch: int) -> None:
    finite = torch.isfinite(step_losses)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0]) + 1
        raise TrainingDiverged(
            f"training diverged: {phase} epoch {epoch} step {step}: loss is {step_losses[step - 1].item()}; "
            "lower the learning rate"
        )


def _record(phase: str, epoch: int, metrics: dict[str, float], history: History,
            on_epoch: EpochCallback | None) -> None:
    history.append(metrics)
    log.debug("%s epoch %d: %s", phase, epoch, metrics)
    if on_epoch is not None:
        on_epoch(epoch, metrics)


@dataclass(frozen=True)
class PretrainRun:
    """What the pretraining loop trains, on what, and how (dae_core.setup builds it from
    the config): ``gradients`` picks the step (dae_core.pretrain_step), ``precision`` its
    mixed precision, ``compile_step`` whether torch.compile (or a CUDA graph) runs it;
    ``validation`` adds ``val_mse`` on those images after each epoch."""

    model: DenoisingAutoencoder
    optimizer: torch.optim.Optimizer
    pixels: torch.Tensor  # (N, 784) clean training images
    generator: torch.Generator  # batches and noise
    config: PretrainConfig
    batch_size: int
    precision: MixedPrecision = field(default_factory=lambda: FLOAT32)
    gradients: PretrainGradients = "autograd"
    compile_step: CompileStep = "none"
    validation: PretrainValidation | None = None


# (N, 784) pixels and their (N,) labels.
LabelledPixels = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ClassifierRun:
    """What the classifier loop trains (the parameters ``optimizer`` holds), on what, and
    how; test and validation accuracy after each epoch where those images are given;
    ``train_noise`` corrupts the training batches from its own generator."""

    model: EncoderClassifier
    optimizer: torch.optim.Optimizer
    pixels: torch.Tensor
    labels: torch.Tensor
    epochs: int
    batch_size: int
    generator: torch.Generator  # batches
    precision: MixedPrecision = field(default_factory=lambda: FLOAT32)
    test: LabelledPixels | None = None
    validation: LabelledPixels | None = None
    train_noise: tuple[NoiseConfig, torch.Generator] | None = None


def pretrain(run: PretrainRun, history: PretrainHistory | None = None,
             on_epoch: EpochCallback | None = None) -> PretrainHistory:
    """Train the autoencoder to reconstruct the clean images from corrupted ones, from the
    epoch after ``history``'s last to ``run.config.epochs``.

    The reported ``mse`` is the mean per-batch reconstruction MSE against the clean
    images, as the lecture printed it; ``loss`` adds the sparsity penalty.
    """
    history = history if history is not None else PretrainHistory()
    model, pixels, generator, precision = run.model, run.pixels, run.generator, run.precision
    step = make_pretrain_step(run.gradients, model, run.config, run.batch_size, precision, run.compile_step)
    with tf32_matmuls(precision):
        for epoch in range(history.epochs + 1, run.config.epochs + 1):
            model.train()
            step_mse, step_loss = [], []
            for index in batch_indices(len(pixels), run.batch_size, generator, pixels.device):
                mse, loss = step(pixels, index, generator)
                precision.step(run.optimizer)
                step_mse.append(mse)
                step_loss.append(loss)
            losses = torch.stack(step_loss)
            _check_finite(losses, "pretrain", epoch)
            metrics = {"mse": torch.stack(step_mse).mean().item(), "loss": losses.mean().item()}
            if run.validation is not None:
                metrics["val_mse"] = validation_mse(model, run.validation)
            _record("pretrain", epoch, metrics, history, on_epoch)
    return history


def train_classifier(run: ClassifierRun, history: ClassifierHistory | None = None,
                     on_epoch: EpochCallback | None = None) -> ClassifierHistory:
    """NLL training of the classifier from the epoch after ``history``'s last to
    ``run.epochs``; accuracies in percent, computed in float32."""
    history = history if history is not None else ClassifierHistory()
    model, optimizer, precision, train_noise = run.model, run.optimizer, run.precision, run.train_noise
    batch_buffer = run.pixels.new_empty(run.batch_size, run.pixels.shape[1])
    noisy_buffer = torch.empty_like(batch_buffer) if train_noise is not None else None
    with tf32_matmuls(precision):
        for epoch in range(history.epochs + 1, run.epochs + 1):
            model.train()
            step_loss = []
            for index in batch_indices(len(run.pixels), run.batch_size, run.generator, run.pixels.device):
                # Gathered into one reused buffer: pixels[index] allocated (and page-faulted)
                # a fresh batch every step, 14% of a CPU classifier epoch (docs/benchmarks.md).
                batch = torch.index_select(run.pixels, 0, index, out=batch_buffer[: len(index)])
                if train_noise is not None:
                    batch = corrupt(batch, train_noise[0], train_noise[1], out=noisy_buffer[: len(index)])
                with precision.autocast():
                    loss = F.nll_loss(model(batch), torch.index_select(run.labels, 0, index))
                optimizer.zero_grad(set_to_none=True)
                precision.backward(loss)
                precision.step(optimizer)
                step_loss.append(loss.detach())
            losses = torch.stack(step_loss)
            _check_finite(losses, "classifier", epoch)
            if (mean_loss := losses.mean().item()) > DIVERGED_CLASSIFIER_LOSS:
                raise TrainingDiverged(f"training diverged: classifier epoch {epoch}: mean loss {mean_loss:.4g} is "
                                       f"over ten times that of guessing ({DIVERGED_CLASSIFIER_LOSS:.1f}); lower "
                                       "the learning rate")
            metrics = {"train_loss": mean_loss}
            for name, images in (("test_accuracy", run.test), ("val_accuracy", run.validation)):
                if images is not None:
                    metrics[name] = accuracy_percent(predict(model, images[0]), images[1])
            _record("classifier", epoch, metrics, history, on_epoch)
    return history
