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
from typing import Generic, TypeVar

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
from dae_core.data import load_split
from dae_core.evaluate import Evaluation, evaluate
from dae_core.model import DenoisingAutoencoder, EncoderClassifier, encoder_surgery
from dae_core.monitoring import Reference, build_reference
from dae_core.noise import corrupt
from dae_core.runtime import Placement, Runtime, make_generator
from dae_core.setup import TrainingSetup, fresh_classifier, test_split
from dae_core.train import (
    ClassifierHistory,
    ClassifierRun,
    EpochCallback,
    History,
    PretrainHistory,
    PretrainRun,
    pretrain,
    train_classifier,
)

HistoryT = TypeVar("HistoryT", bound=History)


@dataclass(frozen=True)
class StageResult(Generic[HistoryT]):
    """A training stage's output file, its per-epoch history, the stage's wall time and
    the part of it spent in the epoch loop (the bare training: no data loading,
    checkpoints or per-epoch callbacks)."""

    path: Path
    history: HistoryT
    seconds: float
    loop_seconds: float


def _resume(state_path: Path, run: PretrainRun | ClassifierRun, device: torch.device, empty: HistoryT) -> HistoryT:
    if not state_path.exists():
        return empty
    stored = restore_training_state(load_checkpoint(state_path, device), run.model, run.optimizer, run.generator)
    return type(empty).from_dict(stored)


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


def _checkpointing(state_path: Path, run: PretrainRun | ClassifierRun, history: History,
                   on_epoch: EpochCallback | None, clock: LoopClock) -> EpochCallback:
    """An epoch callback that saves the state first, then calls the user's callback;
    ``clock`` stops while they run. ``history`` is the object the loop appends to."""

    def callback(epoch: int, metrics: dict[str, float]) -> None:
        clock.pause()
        save_checkpoint(state_path, training_state(run.model, run.optimizer, run.generator, history.as_dict()))
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
) -> StageResult[PretrainHistory]:
    """Pretrain the denoising autoencoder; write ``output`` with the trained weights,
    the encoder weights before training and the per-epoch history."""
    started = time.perf_counter()
    setup = TrainingSetup.build(config, raw_dir)
    run = setup.pretraining()
    initial_encoder = run.model.encoder[0].weight.detach().cpu().clone()
    history = _resume(state_path, run, setup.place.device, PretrainHistory())
    clock = LoopClock()
    callback = _checkpointing(state_path, run, history, on_epoch, clock)
    clock.resume()
    pretrain(run, history, callback)
    clock.pause()
    save_checkpoint(output, {"model": run.model.state_dict(), "initial_encoder": initial_encoder,
                             "history": history.as_dict()})
    return StageResult(output, history, time.perf_counter() - started, clock.seconds)


def load_autoencoder(config: ExperimentConfig, path: Path,
                     place: Placement) -> tuple[DenoisingAutoencoder, dict]:
    stored = load_checkpoint(path, place.device)
    model = DenoisingAutoencoder(config.pretrain.hidden_units).to(place.device, place.dtype)
    model.load_state_dict(stored["model"])
    return model, stored


def surgery_stage(config: ExperimentConfig, autoencoder_path: Path, output: Path) -> Path:
    """Replace the decoder with a fresh, seeded Linear(H, 10) + LogSoftmax head."""
    place = Runtime.start(config.runtime).place
    autoencoder, _ = load_autoencoder(config, autoencoder_path, place)
    save_checkpoint(output, {"model": fresh_classifier(config, autoencoder).state_dict()})
    return output


def load_classifier(config: ExperimentConfig, path: Path, place: Placement) -> EncoderClassifier:
    model = encoder_surgery(DenoisingAutoencoder(config.pretrain.hidden_units)).to(place.device, place.dtype)
    model.load_state_dict(load_checkpoint(path, place.device)["model"])
    return model


def classifier_stage(
    config: ExperimentConfig,
    raw_dir: Path,
    initial_path: Path,
    output: Path,
    state_path: Path,
    on_epoch: EpochCallback | None = None,
) -> StageResult[ClassifierHistory]:
    """Train the classifier with vanilla SGD: all of it, or the head alone
    (``classifier.freeze_encoder``); on clean images unless ``classifier.train_noise``."""
    started = time.perf_counter()
    setup = TrainingSetup.build(config, raw_dir)
    run = setup.classifier_training(load_classifier(config, initial_path, setup.place), setup.test_split())
    history = _resume(state_path, run, setup.place.device, ClassifierHistory())
    clock = LoopClock()
    callback = _checkpointing(state_path, run, history, on_epoch, clock)
    clock.resume()
    train_classifier(run, history, callback)
    clock.pause()
    save_checkpoint(output, {"model": run.model.state_dict(), "history": history.as_dict()})
    return StageResult(output, history, time.perf_counter() - started, clock.seconds)


def evaluate_stage(config: ExperimentConfig, raw_dir: Path, classifier_path: Path,
                   output: Path) -> Evaluation:
    place = Runtime.start(config.runtime).place
    test = test_split(config, raw_dir, place)
    result = evaluate(
        load_classifier(config, classifier_path, place), test.flat_pixels(place.dtype), test.labels,
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
    place = Runtime.start(config.runtime).place
    autoencoder, stored = load_autoencoder(config, autoencoder_path, place)
    classifier_history = ClassifierHistory.from_dict(load_checkpoint(classifier_path)["history"])
    samples = config.evaluation.figure_samples
    clean = test_split(config, raw_dir, place).flat_pixels(place.dtype)[:samples]
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
        figures.pretrain_curve(PretrainHistory.from_dict(stored["history"]).mse, out_dir / "pretrain_mse.png"),
        figures.classifier_curves(classifier_history.train_loss, classifier_history.test_accuracy,
                                  out_dir / "classifier_curves.png"),
        figures.per_class_bars(evaluation.per_class_accuracy, out_dir / "per_class_accuracy.png"),
        figures.confusion_heatmap(np.array(evaluation.confusion), out_dir / "confusion_matrix.png"),
    ]


def reference_stage(config: ExperimentConfig, raw_dir: Path, classifier_path: Path,
                    test_accuracy: float) -> Reference:
    """What this model's scored batches will be compared with (dae_core.monitoring): a seeded
    sample of its training images and its answers on the test images."""
    place = Runtime.start(config.runtime).place
    model = load_classifier(config, classifier_path, place)
    with torch.no_grad():
        probabilities = torch.cat([model(chunk).exp() for chunk in
                                   test_split(config, raw_dir, place).flat_pixels(place.dtype).split(10_000)])
    return build_reference(load_split(raw_dir, True, config.data.train_limit), probabilities.double().cpu().numpy(),
                           test_accuracy, make_generator(config.seed, "monitoring-reference", torch.device("cpu")))
