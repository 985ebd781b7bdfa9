"""The experiment's stages as functions of files: each reads what the previous stage
wrote and writes its own output atomically. Prefect tasks wrap these one to one.

Training stages keep a resumable state file (model, optimizer, RNG, history) that is
rewritten at every epoch boundary; a stage started again with the same state file
continues from the last complete epoch and ends with the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dae_core import figures
from dae_core.checkpoint import (
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
    write_json,
)
from dae_core.config import ExperimentConfig
from dae_core.data import Split, load_split
from dae_core.evaluate import Evaluation, evaluate
from dae_core.model import DenoisingAutoencoder, EncoderClassifier, encoder_surgery
from dae_core.noise import corrupt
from dae_core.runtime import apply_threads, make_generator, resolve_device, resolve_dtype, seeded
from dae_core.train import (
    EpochCallback,
    History,
    make_classifier_optimizer,
    make_pretrain_optimizer,
    pretrain,
    train_classifier,
)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def of(cls, config: ExperimentConfig) -> Placement:
        """Where a stage computes; also applies the configured thread count."""
        apply_threads(config.runtime)
        return cls(resolve_device(config.runtime.device), resolve_dtype(config.runtime.dtype))


def _split(config: ExperimentConfig, raw_dir: Path, train: bool, place: Placement) -> Split:
    limit = config.data.train_limit if train else config.data.test_limit
    return load_split(raw_dir, train, limit).to(place.device)


def _autoencoder(config: ExperimentConfig, place: Placement) -> DenoisingAutoencoder:
    with seeded(config.seed, "autoencoder-init"):
        model = DenoisingAutoencoder(config.pretrain.hidden_units)
    return model.to(place.device, place.dtype)


def _resume(state_path: Path, model, optimizer, generator, place: Placement) -> History | None:
    if not state_path.exists():
        return None
    return restore_training_state(load_checkpoint(state_path, place.device), model, optimizer, generator)


class LoopClock:
    """Seconds spent inside the epoch loop but outside its callbacks: the bare training
    time, without checkpoints or whatever the caller does per epoch (tracking). A stage
    runs it from just before its loop to just after; it starts paused."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since = 0.0

    def pause(self) -> None:
        self.seconds += time.perf_counter() - self._since

    def resume(self) -> None:
        self._since = time.perf_counter()


def _checkpointing(state_path: Path, model, optimizer, generator, history_ref: list,
                   on_epoch: EpochCallback | None, clock: LoopClock) -> EpochCallback:
    """An epoch callback that saves the state first, then calls the user's callback;
    ``clock`` stops while they run."""

    def callback(epoch: int, metrics: dict[str, float]) -> None:
        clock.pause()
        save_checkpoint(state_path, training_state(model, optimizer, generator, history_ref[0]))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        clock.resume()

    return callback


def pretrain_stage(
    config: ExperimentConfig,
    raw_dir: Path,
    output: Path,
    state_path: Path,
    on_epoch: EpochCallback | None = None,
    clock: LoopClock | None = None,
) -> History:
    """Pretrain the denoising autoencoder; write ``output`` with the trained weights,
    the encoder weights before training and the per-epoch history. ``clock``, if given,
    gains the seconds of the epoch loop."""
    place = Placement.of(config)
    pixels = _split(config, raw_dir, True, place).flat_pixels(place.dtype)
    model = _autoencoder(config, place)
    initial_encoder = model.encoder[0].weight.detach().cpu().clone()
    optimizer = make_pretrain_optimizer(model, config.pretrain)
    generator = make_generator(config.seed, "pretrain", place.device)
    history = _resume(state_path, model, optimizer, generator, place) or {"mse": [], "loss": []}
    # The callback must see the history object the loop appends to.
    clock = clock or LoopClock()
    callback = _checkpointing(state_path, model, optimizer, generator, [history], on_epoch, clock)
    clock.resume()
    pretrain(model, optimizer, pixels, config.pretrain, config.data.batch_size, generator,
             history, callback)
    clock.pause()
    save_checkpoint(output, {"model": model.state_dict(), "initial_encoder": initial_encoder,
                             "history": history})
    return history


def load_autoencoder(config: ExperimentConfig, path: Path) -> tuple[DenoisingAutoencoder, dict]:
    place = Placement.of(config)
    stored = load_checkpoint(path, place.device)
    model = DenoisingAutoencoder(config.pretrain.hidden_units).to(place.device, place.dtype)
    model.load_state_dict(stored["model"])
    return model, stored


def surgery_stage(config: ExperimentConfig, autoencoder_path: Path, output: Path) -> Path:
    """Replace the decoder with a fresh, seeded Linear(H, 10) + LogSoftmax head."""
    autoencoder, _ = load_autoencoder(config, autoencoder_path)
    with seeded(config.seed, "classifier-head-init"):
        classifier = encoder_surgery(autoencoder)
        classifier.head[0].reset_parameters()
    classifier.to(Placement.of(config).dtype)
    save_checkpoint(output, {"model": classifier.state_dict()})
    return output


def _classifier(config: ExperimentConfig, place: Placement) -> EncoderClassifier:
    shell = DenoisingAutoencoder(config.pretrain.hidden_units)
    return encoder_surgery(shell).to(place.device, place.dtype)


def load_classifier(config: ExperimentConfig, path: Path) -> EncoderClassifier:
    place = Placement.of(config)
    model = _classifier(config, place)
    model.load_state_dict(load_checkpoint(path, place.device)["model"])
    return model


def classifier_stage(
    config: ExperimentConfig,
    raw_dir: Path,
    initial_path: Path,
    output: Path,
    state_path: Path,
    on_epoch: EpochCallback | None = None,
    clock: LoopClock | None = None,
) -> History:
    """Train the whole classifier with vanilla SGD on clean images; ``clock``, if given,
    gains the seconds of the epoch loop."""
    place = Placement.of(config)
    train = _split(config, raw_dir, True, place)
    test = _split(config, raw_dir, False, place)
    model = load_classifier(config, initial_path)
    optimizer = make_classifier_optimizer(model, config.classifier.lr)
    generator = make_generator(config.seed, "classifier", place.device)
    history = _resume(state_path, model, optimizer, generator, place) or {
        "train_loss": [], "test_accuracy": []}
    train_pixels, test_pixels = train.flat_pixels(place.dtype), test.flat_pixels(place.dtype)
    clock = clock or LoopClock()
    callback = _checkpointing(state_path, model, optimizer, generator, [history], on_epoch, clock)
    clock.resume()
    train_classifier(model, optimizer, train_pixels, train.labels, test_pixels, test.labels,
                     config.classifier.epochs, config.data.batch_size, generator, history, callback)
    clock.pause()
    save_checkpoint(output, {"model": model.state_dict(), "history": history})
    return history


def evaluate_stage(config: ExperimentConfig, raw_dir: Path, classifier_path: Path,
                   output: Path) -> Evaluation:
    place = Placement.of(config)
    test = _split(config, raw_dir, False, place)
    result = evaluate(
        load_classifier(config, classifier_path), test.flat_pixels(place.dtype), test.labels,
        config.evaluation.test_noise, make_generator(config.seed, "noisy-test", place.device),
    )
    write_json(output, result.as_dict())
    return result


def figures_stage(
    config: ExperimentConfig,
    raw_dir: Path,
    autoencoder_path: Path,
    classifier_path: Path,
    evaluation: Evaluation,
    out_dir: Path,
) -> list[Path]:
    """Write every figure of the experiment into ``out_dir``; returns their paths."""
    place = Placement.of(config)
    autoencoder, stored = load_autoencoder(config, autoencoder_path)
    classifier_history = load_checkpoint(classifier_path)["history"]
    samples = config.evaluation.figure_samples
    clean = _split(config, raw_dir, False, place).flat_pixels(place.dtype)[:samples]
    noisy = corrupt(clean, config.evaluation.test_noise, make_generator(config.seed, "figures", place.device))
    with torch.no_grad():
        reconstructed, _ = autoencoder(noisy)

    def host(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().double().cpu().numpy()

    before, after = host(stored["initial_encoder"]), host(autoencoder.encoder[0].weight)
    out_dir = Path(out_dir)
    return [
        figures.weight_mosaic(before, out_dir / "encoder_weights_before.png",
                              "Encoder filters before pretraining"),
        figures.weight_mosaic(after, out_dir / "encoder_weights_after.png",
                              "Encoder filters after pretraining"),
        figures.weight_change_mosaic(before, after, out_dir / "encoder_weights_change.png",
                                     "Encoder filter change (after - before)"),
        figures.weight_mosaic(host(autoencoder.decoder[0].weight).T,
                              out_dir / "decoder_weights.png", "Decoder weights per hidden unit"),
        figures.reconstructions(host(clean), host(noisy), host(reconstructed),
                                out_dir / "reconstructions.png"),
        figures.pretrain_curve(stored["history"]["mse"], out_dir / "pretrain_mse.png"),
        figures.classifier_curves(classifier_history["train_loss"],
                                  classifier_history["test_accuracy"],
                                  out_dir / "classifier_curves.png"),
        figures.per_class_bars(evaluation.per_class_accuracy, out_dir / "per_class_accuracy.png"),
        figures.confusion_heatmap(np.array(evaluation.confusion), out_dir / "confusion_matrix.png"),
    ]
