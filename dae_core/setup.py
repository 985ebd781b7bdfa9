"""One training setup built from the config: its runtime (``dae_core.runtime.Runtime``:
threads, where and in which precision training computes), the training images and the
validation split held out of them, and from those each phase's run (model, optimizer,
generators, noise).

Stages (``dae_core.stages``), tuning trials (``dae_core.tuning``) and ``dae bench``
(``dae_core.bench``: each runtime it compares, and the speed guard's project epoch) build
their training here and nowhere else (the benchmark's yardsticks, the lecture's own code and
the plainest autograd epoch, are written out on purpose), so a trial trains exactly what a
run with the same config trains (tests/test_tuning.py compares their numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from dae_core.config import ExperimentConfig
from dae_core.data import Split, hold_out, load_split
from dae_core.model import DenoisingAutoencoder, EncoderClassifier, encoder_surgery
from dae_core.noise import corrupt
from dae_core.runtime import Placement, Runtime, make_generator, seeded
from dae_core.train import ClassifierRun, PretrainRun, make_classifier_optimizer, make_pretrain_optimizer


def fresh_autoencoder(config: ExperimentConfig, place: Placement) -> DenoisingAutoencoder:
    with seeded(config.seed, "autoencoder-init"):
        model = DenoisingAutoencoder(config.pretrain.hidden_units)
    return model.to(place.device, place.dtype)


def fresh_classifier(config: ExperimentConfig, autoencoder: DenoisingAutoencoder) -> EncoderClassifier:
    """The surgery: the decoder dropped, a fresh seeded Linear(H, 10) + LogSoftmax head."""
    with seeded(config.seed, "classifier-head-init"):
        classifier = encoder_surgery(autoencoder)
        classifier.head[0].reset_parameters()
    weights = next(autoencoder.parameters())
    return classifier.to(weights.device, weights.dtype)


def test_split(config: ExperimentConfig, raw_dir: Path, place: Placement) -> Split:
    """The test images (``data.test_limit`` of them), on the device."""
    return load_split(raw_dir, False, config.data.test_limit).to(place.device)


@dataclass(frozen=True)
class TrainingSetup:
    """What the config decides about how training runs, built once per stage or trial."""

    config: ExperimentConfig
    raw_dir: Path
    runtime: Runtime
    train: Split  # the training images minus the validation split, on the device
    validation: Split | None  # ``data.validation_size`` images held out of them; None when 0

    @classmethod
    def build(cls, config: ExperimentConfig, raw_dir: Path) -> TrainingSetup:
        """Starts the runtime (torch's thread count is process-wide, so first: cells sharing a
        process each get their share), then reads the training split and holds the validation images out
        of it by a seeded draw (the same for every trial and stage of a seed)."""
        runtime = Runtime.start(config.runtime)
        train = load_split(raw_dir, True, config.data.train_limit)
        kept, held = hold_out(train, config.data.validation_size,
                              make_generator(config.seed, "validation-split", torch.device("cpu")))
        device = runtime.place.device
        return cls(config, Path(raw_dir), runtime, kept.to(device), held.to(device) if held is not None else None)

    @classmethod
    def of_images(cls, config: ExperimentConfig, train: Split) -> TrainingSetup:
        """The setup of ``config`` over training images already in memory, none held out:
        how ``dae bench`` trains each runtime it compares on the same images."""
        runtime = Runtime.start(config.runtime)
        return cls(config, Path(), runtime, train.to(runtime.place.device), None)

    @property
    def place(self) -> Placement:
        return self.runtime.place

    def test_split(self) -> Split:
        return test_split(self.config, self.raw_dir, self.place)

    def pixels(self, split: Split) -> torch.Tensor:
        return split.flat_pixels(self.place.dtype)

    # Converted once per setup: a trial pretrains and then fine-tunes on the same images.
    @cached_property
    def train_pixels(self) -> torch.Tensor:
        return self.pixels(self.train)

    @cached_property
    def validation_pixels(self) -> torch.Tensor | None:
        return self.pixels(self.validation) if self.validation is not None else None

    def pretraining(self, model: DenoisingAutoencoder | None = None) -> PretrainRun:
        """Pretraining of ``model`` (default: a fresh seeded autoencoder) on the training
        images, with validation MSE on the held-out images corrupted once as pretraining
        corrupts its inputs."""
        config = self.config
        model = model if model is not None else fresh_autoencoder(config, self.place)
        validation = None
        if (clean := self.validation_pixels) is not None:
            noisy = corrupt(clean, config.pretrain.noise,
                            make_generator(config.seed, "validation-noise", self.place.device))
            validation = (noisy, clean)
        return PretrainRun(
            model=model, optimizer=make_pretrain_optimizer(model, config.pretrain), pixels=self.train_pixels,
            generator=make_generator(config.seed, "pretrain", self.place.device), config=config.pretrain,
            batch_size=config.data.batch_size, precision=self.runtime.precision,
            gradients=self.runtime.gradients, compile_step=self.runtime.compile_step,
            validation=validation)

    def classifier_training(self, model: EncoderClassifier, test: Split | None = None) -> ClassifierRun:
        """Vanilla SGD on ``model`` (all of it, or the head alone with
        ``classifier.freeze_encoder``), on clean images unless ``classifier.train_noise``;
        test accuracy after each epoch when ``test`` is given (trials give none)."""
        config = self.config
        noise = config.classifier.train_noise
        return ClassifierRun(
            model=model,
            optimizer=make_classifier_optimizer(model, config.classifier.lr, config.classifier.freeze_encoder),
            pixels=self.train_pixels, labels=self.train.labels, epochs=config.classifier.epochs,
            batch_size=config.data.batch_size,
            generator=make_generator(config.seed, "classifier", self.place.device),
            precision=self.runtime.precision,
            test=(self.pixels(test), test.labels) if test is not None else None,
            validation=(self.validation_pixels, self.validation.labels) if self.validation is not None else None,
            train_noise=(noise, make_generator(config.seed, "classifier-noise", self.place.device))
            if noise.enabled else None)
