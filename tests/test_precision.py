"""Mixed precision (runtime.autocast) on tiny data: bfloat16 trains like float32 with float32
weights and optimizer state; contradictory settings are refused; GPU checks behind `gpu`."""

from __future__ import annotations

import pytest
import torch

from dae_core import train
from dae_core.config import ConfigError, build_config
from dae_core.data import Split
from dae_core.model import DenoisingAutoencoder, encoder_surgery
from dae_core.precision import MixedPrecision
from dae_core.runtime import make_generator
from tests.conftest import synthetic_digits

CPU = torch.device("cpu")


def _pixels(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic_digits(count, seed)
    return torch.from_numpy(images).reshape(count, -1).float() / 255, torch.from_numpy(labels).long()


def _split(count: int, seed: int) -> Split:
    images, labels = synthetic_digits(count, seed)
    return Split(torch.from_numpy(images), torch.from_numpy(labels).long())


def _pretrained(mode: str, device: torch.device = CPU, epochs: int = 15, compile_step: str = "none"):
    config = build_config("smoke", {"pretrain": {"epochs": epochs, "hidden_units": 64}, "data": {"batch_size": 40}})
    pixels, _ = _pixels(240, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DenoisingAutoencoder(64).to(device)
    optimizer = train.make_pretrain_optimizer(model, config.pretrain)
    run = train.PretrainRun(model, optimizer, pixels.to(device), make_generator(0, "pretrain", device),
                            config.pretrain, 40, MixedPrecision(mode, device), compile_step=compile_step)
    history = train.pretrain(run)
    return model, optimizer, history


def _same_training(first, second, tolerance: float, weights: bool = True) -> None:
    """Two (model, optimizer, history) that trained alike: the curve (and the weights) within
    ``tolerance``."""
    for a, b in zip(first[2].mse, second[2].mse, strict=True):
        assert abs(a - b) <= tolerance * a, (a, b)
    for a, b in zip(first[0].parameters(), second[0].parameters(), strict=True) if weights else ():
        assert torch.allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.slow  # torch.compile's first compile: 20 s
def test_the_compiled_step_trains_like_the_eager_one():
    """``runtime.compile_step``: torch.compile changes the kernels (fused, reordered), not the
    arithmetic: the same curve and weights as eager within float32 rounding."""
    from torch._dynamo.utils import counters

    eager = _pretrained("none", epochs=3)
    counters.clear()
    _same_training(eager, _pretrained("none", epochs=3, compile_step="default"), 1e-4)
    assert counters["stats"]["unique_graphs"] >= 1, "the step must have run compiled"


def test_bfloat16_pretraining_follows_float32_with_float32_weights_and_state():
    _, _, reference = _pretrained("none")
    model, optimizer, mixed = _pretrained("bfloat16")
    assert mixed.mse[-1] < 0.8 * mixed.mse[0], "it learns"
    for full, half in zip(reference.mse, mixed.mse, strict=True):
        assert abs(half - full) <= 0.05 * full, (full, half)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {v.dtype for state in optimizer.state.values() for v in state.values() if v.numel() > 1} == {torch.float32}


def test_bfloat16_classifier_training_learns_and_is_scored_in_float32():
    model, _, _ = _pretrained("none", epochs=3)
    train_x, train_y = _pixels(240, 1)
    test_x, test_y = _pixels(80, 2)
    results = {}
    for mode in ("none", "bfloat16"):
        classifier = encoder_surgery(model)
        history = train.train_classifier(train.ClassifierRun(
            classifier, train.make_classifier_optimizer(classifier, 0.5), train_x, train_y, epochs=5, batch_size=40,
            generator=make_generator(0, "classifier", CPU), precision=MixedPrecision(mode, CPU),
            test=(test_x, test_y)))
        results[mode] = history.test_accuracy[-1]
        assert history.train_loss[-1] < history.train_loss[0]
    assert results["bfloat16"] >= 80 and abs(results["bfloat16"] - results["none"]) <= 5


@pytest.mark.parametrize(("overrides", "message"), [
    ({"runtime": {"autocast": "float16", "device": "cpu"}}, "for GPUs"),
    ({"runtime": {"autocast": "bfloat16", "dtype": "float64"}}, "float32"),
    ({"runtime": {"autocast": "bfloat16", "pretrain_gradients": "handwritten"}}, "autograd"),
    ({"runtime": {"autocast": "int8"}}, "autocast"),
    ({"runtime": {"compile_step": "default", "pretrain_gradients": "handwritten"}}, "autograd"),
])
def test_contradictory_precision_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config("smoke", overrides)


def test_float16_on_a_machine_without_a_gpu_is_explained(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a GPU"):
        MixedPrecision("float16", CPU)


def test_the_lecture_preset_stays_in_float32():
    assert build_config("lecture", {}).runtime.autocast == "none"


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda") if torch.cuda.is_available() else CPU


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["none", "bfloat16", "float16"])
def test_gpu_training_stays_on_the_gpu_and_follows_the_cpu_curve(mode):
    model, optimizer, history = _pretrained(mode, CUDA)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    _, _, cpu = _pretrained("none")
    for on_gpu, on_cpu in zip(history.mse, cpu.mse, strict=True):
        assert abs(on_gpu - on_cpu) <= 0.05 * on_cpu


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["none", "bfloat16"])
def test_the_cuda_graph_step_trains_like_the_eager_one_on_the_gpu(mode):
    eager = _pretrained(mode, CUDA, epochs=5)
    graphed = _pretrained(mode, CUDA, epochs=5, compile_step="reduce-overhead")
    assert {p.device.type for p in graphed[0].parameters()} == {"cuda"}
    # bfloat16: the compiler may round at other points than eager autocast does, so the
    # curve is held to the tolerance of mixed precision itself (5%), the weights not compared.
    if mode == "none":
        _same_training(eager, graphed, 1e-3)
    else:
        _same_training(eager, graphed, 0.05, weights=False)


@pytest.mark.gpu
@gpu
def test_the_gpu_benchmark_times_eager_and_graphed_steps_and_the_whole_training():
    from dae_core.bench import graph_benchmark

    results = graph_benchmark(_split(2000, 1), _split(200, 2), 1, CUDA)
    assert results["graphed_pretrain_epoch_s"] > 0 and results["whole_training_graphed_s"] > 0


@pytest.mark.gpu
@gpu
def test_gpu_runs_repeat_within_float_rounding():
    first, second = _pretrained("bfloat16", CUDA)[2], _pretrained("bfloat16", CUDA)[2]
    assert all(abs(a - b) <= 1e-3 * a for a, b in zip(first.mse, second.mse, strict=True))


def test_the_benchmark_times_each_precision_against_its_own_peak():
    from dae_core.bench import precision_benchmark

    # Small products: a CPU without bfloat16 instructions multiplies 2048^2 bfloat16 matrices
    # in ~15 s each, and the peak takes eleven.
    results = precision_benchmark(_split(2000, 1), _split(200, 2), epochs=1, device=CPU, gemm_size=256)
    assert set(results) == {"none", "bfloat16"}
    for mode, measured in results.items():
        assert measured["pretrain_epoch_s"] > 0 and measured["classifier_epoch_s"] > 0
        # (No upper bound on the fraction: a 256^2 product is far from a CPU's peak.)
        assert measured["matmul_peak_gflops"] > 0 and measured["pretrain_fraction_of_peak"] > 0, mode
    assert results["none"]["pretrain_speedup_vs_float32"] == 1.0
