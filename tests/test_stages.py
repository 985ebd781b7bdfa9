"""The experiment's stages on tiny generated data: learning, determinism, resume."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dae_core import figures
from dae_core.checkpoint import load_checkpoint
from dae_core.config import NoiseConfig, build_config
from dae_core.model import DenoisingAutoencoder
from dae_core.runtime import Placement
from dae_core.stages import (
    classifier_stage,
    evaluate_stage,
    figures_stage,
    load_autoencoder,
    pretrain_stage,
    surgery_stage,
)
from dae_core.train import PretrainRun, TrainingDiverged, make_pretrain_optimizer, pretrain
from tests.conftest import TINY


def _pipeline(config, raw_dir, folder):
    pretrain = pretrain_stage(config, raw_dir, folder / "ae.pt", folder / "pre.state")
    surgery_stage(config, folder / "ae.pt", folder / "init.pt")
    classifier = classifier_stage(config, raw_dir, folder / "init.pt", folder / "clf.pt", folder / "clf.state")
    evaluation = evaluate_stage(config, raw_dir, folder / "clf.pt", folder / "eval.json")
    return pretrain, classifier, evaluation


@pytest.fixture(scope="module")
def finished(raw_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    config = build_config("smoke", TINY)
    return config, folder, _pipeline(config, raw_dir, folder)


def test_pretraining_lowers_the_mse_and_denoises(finished, raw_dir):
    config, folder, (pretrain, _, _) = finished
    assert pretrain.history.mse[-1] < pretrain.history.mse[0]
    from dae_core.data import load_split
    from dae_core.noise import corrupt

    clean = load_split(raw_dir, train=False).flat_pixels(torch.float32)
    noisy = corrupt(clean, config.pretrain.noise, torch.Generator().manual_seed(9))
    model, _ = load_autoencoder(config, folder / "ae.pt", Placement.of(config.runtime))
    with torch.no_grad():
        denoised, _ = model(noisy)
    assert torch.nn.functional.mse_loss(denoised, clean) < torch.nn.functional.mse_loss(noisy, clean)


def test_classifier_beats_chance(finished):
    _, _, (_, classifier, evaluation) = finished
    assert classifier.history.train_loss[-1] < classifier.history.train_loss[0]
    assert evaluation.accuracy > 50.0  # chance is 10%
    assert len(evaluation.per_class_accuracy) == 10
    assert sum(map(sum, evaluation.confusion)) == 80


def test_surgery_starts_from_the_pretrained_encoder(finished):
    config, folder, _ = finished
    autoencoder = load_checkpoint(folder / "ae.pt")["model"]
    initial = load_checkpoint(folder / "init.pt")["model"]
    assert torch.equal(initial["encoder.0.weight"], autoencoder["encoder.0.weight"])
    assert initial["head.0.weight"].shape == (10, config.pretrain.hidden_units)


def test_same_seed_same_numbers_other_seed_other_numbers(finished, raw_dir, tmp_path):
    config, _, (pretrain, classifier, evaluation) = finished
    again = _pipeline(config, raw_dir, tmp_path / "again")
    assert again[0].history == pretrain.history and again[1].history == classifier.history
    assert again[2] == evaluation
    other = pretrain_stage(config.model_copy(update={"seed": 1}), raw_dir, tmp_path / "o.pt", tmp_path / "o.state")
    assert other.history.mse != pretrain.history.mse


class Interrupted(Exception):
    pass


def _interrupt_after(epoch_to_stop):
    def on_epoch(epoch, metrics):
        if epoch == epoch_to_stop:
            raise Interrupted

    return on_epoch


def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(finished, raw_dir, tmp_path):
    config, folder, (pretrain, classifier, _) = finished
    with pytest.raises(Interrupted):
        pretrain_stage(config, raw_dir, tmp_path / "ae.pt", tmp_path / "pre.state", _interrupt_after(2))
    assert len(load_checkpoint(tmp_path / "pre.state")["history"]["mse"]) == 2
    seen = []
    resumed = pretrain_stage(config, raw_dir, tmp_path / "ae.pt", tmp_path / "pre.state",
                             lambda epoch, metrics: seen.append(epoch))
    assert seen == list(range(3, config.pretrain.epochs + 1)) and resumed.history == pretrain.history
    for key, value in load_checkpoint(folder / "ae.pt")["model"].items():
        assert torch.equal(value, load_checkpoint(tmp_path / "ae.pt")["model"][key]), key

    surgery_stage(config, tmp_path / "ae.pt", tmp_path / "init.pt")
    with pytest.raises(Interrupted):
        classifier_stage(config, raw_dir, tmp_path / "init.pt", tmp_path / "clf.pt", tmp_path / "clf.state",
                         _interrupt_after(1))
    assert classifier_stage(config, raw_dir, tmp_path / "init.pt", tmp_path / "clf.pt",
                            tmp_path / "clf.state").history == classifier.history


def test_a_nan_loss_stops_pretraining_naming_epoch_and_step(tiny_config):
    model = DenoisingAutoencoder(8)
    pixels = torch.rand(50, 784)
    pixels[7, 3] = float("nan")  # reaches the loss in whichever batch holds row 7
    optimizer = make_pretrain_optimizer(model, tiny_config.pretrain)
    with pytest.raises(TrainingDiverged, match=r"pretrain epoch 1 step [1-5]: loss is nan"):
        pretrain(PretrainRun(model, optimizer, pixels, torch.Generator().manual_seed(0), tiny_config.pretrain, 10))


def test_every_figure_is_written_at_its_pixel_size(finished, raw_dir, tmp_path):
    config, folder, (_, _, evaluation) = finished
    paths = figures_stage(config, raw_dir, folder / "ae.pt", folder / "clf.pt", evaluation, tmp_path)
    expected = {
        "encoder_weights_before.png": figures.MOSAIC_INCHES, "encoder_weights_after.png": figures.MOSAIC_INCHES,
        "encoder_weights_change.png": figures.MOSAIC_INCHES, "decoder_weights.png": figures.MOSAIC_INCHES,
        "reconstructions.png": figures.WIDE_INCHES, "pretrain_mse.png": figures.WIDE_INCHES,
        "classifier_curves.png": figures.WIDE_INCHES, "per_class_accuracy.png": figures.WIDE_INCHES,
        "confusion_matrix.png": figures.SQUARE_INCHES,
    }
    assert sorted(p.name for p in paths) == sorted(expected)
    for path in paths:
        width, height = expected[path.name]
        with Image.open(path) as image:
            assert image.size == (round(width * figures.DPI), round(height * figures.DPI)), path.name
            assert np.asarray(image.convert("L")).std() > 1, f"{path.name} is blank"
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


def test_mosaic_grid_puts_each_filter_in_its_tile():
    rows = np.arange(400, dtype=float)[:, None].repeat(784, axis=1)
    grid = figures.tile_grid(rows)
    assert grid.shape == (20 * 29 + 1, 20 * 29 + 1)
    assert grid[1, 1] == 0 and grid[1 + 29, 1 + 2 * 29] == 22 and grid[-2, -2] == 399
    assert grid[0].max() == 0  # gutters


def test_the_noisy_test_is_noisy_even_when_pretraining_was_clean(finished, raw_dir, tmp_path):
    """Both arms of the noise comparison must face the same corrupted test set."""
    config, folder, _ = finished
    harsh = config.evaluation.model_copy(update={"test_noise": NoiseConfig(mean=0.5, std=1.0)})
    noisy_pretraining = config.model_copy(update={"evaluation": harsh})
    clean_pretraining = noisy_pretraining.model_copy(update={"pretrain": config.pretrain.model_copy(
        update={"noise": NoiseConfig(enabled=False)})})
    first = evaluate_stage(noisy_pretraining, raw_dir, folder / "clf.pt", tmp_path / "a.json")
    second = evaluate_stage(clean_pretraining, raw_dir, folder / "clf.pt", tmp_path / "b.json")
    assert first == second
    assert second.noisy_accuracy < second.accuracy


def test_loop_seconds_leave_out_the_epoch_callbacks(raw_dir, tmp_path):
    import time

    config = build_config("smoke", TINY)
    started = time.perf_counter()
    result = pretrain_stage(config, raw_dir, tmp_path / "ae.pt", tmp_path / "pre.state",
                            lambda epoch, metrics: time.sleep(0.3))
    wall_seconds = time.perf_counter() - started
    assert 0 < result.loop_seconds < result.seconds - 0.3 * config.pretrain.epochs
    assert result.seconds <= wall_seconds


MNIST_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_RAW.is_dir(), reason="the real MNIST files are not beside this checkout")
def test_the_smoke_preset_learns_on_real_mnist(tmp_path):
    """The preset the README offers for trying an install must not look broken."""
    config = build_config("smoke")
    _, classifier, evaluation = _pipeline(config, MNIST_RAW, tmp_path)
    assert evaluation.accuracy >= 75.0
    assert classifier.history.train_loss[-1] < 0.6


def test_a_classifier_loss_far_above_guessing_stops_training(tiny_config):
    """Log-softmax keeps a diverged classifier's loss finite: it is caught by its size."""
    from dae_core.model import encoder_surgery
    from dae_core.train import ClassifierRun, make_classifier_optimizer, train_classifier

    torch.manual_seed(0)
    model = encoder_surgery(DenoisingAutoencoder(16))
    pixels, labels = torch.rand(80, 784), torch.arange(80) % 10
    with pytest.raises(TrainingDiverged, match="classifier epoch 1: mean loss .* over ten times that of guessing"):
        train_classifier(ClassifierRun(model, make_classifier_optimizer(model, 10.0), pixels * 50, labels, epochs=2,
                                       batch_size=8, generator=torch.Generator().manual_seed(0)))
