"""Side-by-side timing in one process: the lecture's data path against this project's,
per pretraining and per classifier epoch, and the fraction of the machine's measured
float32 matmul peak that a pretraining epoch reaches. Pretraining is timed with the
default autograd step and with the hand-written one (``runtime.pretrain_gradients``),
and each epoch in every mixed-precision mode the device offers (``runtime.autocast``),
against the matmul peak of that mode's type; on a GPU also the step replayed as CUDA
graphs (``runtime.compile_step``) and the lecture's whole training.

The lecture's path: torchvision MNIST with ToTensor, a shuffling DataLoader (batch 1000),
float64 tensors, noise drawn per batch on the host. The project's path: the split read
once as uint8, moved to the device once, batches gathered by a seeded permutation.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dae_core.config import ExperimentConfig, build_config
from dae_core.data import Split, locate
from dae_core.model import DenoisingAutoencoder, encoder_surgery
from dae_core.runtime import resolve_device
from dae_core.setup import TrainingSetup
from dae_core.train import (
    pretrain,
    train_classifier,
)

# 5 matmuls of 784x400 per sample (encoder and decoder forward, decoder's two backward
# products, encoder's weight gradient; the input needs no gradient), 2 FLOP per MAC.
PRETRAIN_FLOP_PER_SAMPLE = 5 * 2 * 784 * 400
# Encoder forward and weight gradient; the 400x10 head is negligible.
CLASSIFIER_FLOP_PER_SAMPLE = 2 * 2 * 784 * 400


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(run: Callable[[], Any], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 10,
                       dtype: torch.dtype = torch.float32) -> float:
    """Best GEMM rate in ``dtype`` over ``repeats`` square products."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, kernels
    seconds = _best_seconds(lambda: a @ b, repeats, device)
    return 2 * size**3 / seconds / 1e9


def lecture_loaders(root: Path, batch_size: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    train = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    test = datasets.MNIST(str(root), train=False, download=False, transform=transforms.ToTensor())
    return (DataLoader(train, batch_size=batch_size, shuffle=True),
            DataLoader(test, batch_size=batch_size, shuffle=False))


def lecture_pretrain_epoch(model, optimizer, loader, device: torch.device) -> None:
    for images, _ in loader:
        clean = images.view(-1, 28 * 28).double().to(device)
        noisy = (clean + torch.randn(clean.shape, dtype=torch.float64).to(device) * 0.2 + 0.1).clamp(0, 1)
        reconstruction = model(noisy)[0]
        loss = F.mse_loss(reconstruction, clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def lecture_classifier_epoch(model, optimizer, loader, test_loader, device: torch.device) -> None:
    for images, labels in loader:
        loss = F.nll_loss(model(images.view(-1, 784).double().to(device)), labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for images, labels in test_loader:
            model(images.view(-1, 784).double().to(device)).argmax(1).eq(labels.to(device)).sum().item()


# The CPU features that decide how fast each precision multiplies.
_MATMUL_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_fp16"}


def cpu_matmul_flags() -> list[str]:
    """Which of ``_MATMUL_FLAGS`` this CPU has (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(_MATMUL_FLAGS & set(flags))


def autocast_modes(device: torch.device) -> list[str]:
    """float32 and the mixed-precision modes this device can run."""
    return ["none", "bfloat16", "float16"] if device.type == "cuda" else ["none", "bfloat16"]


_GEMM_TYPES = {"none": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _epoch_config(device: torch.device, **runtime: str) -> ExperimentConfig:
    """The lecture's training, one epoch per phase, on ``device`` with ``runtime``'s fields."""
    return build_config("lecture", {"pretrain": {"epochs": 1}, "classifier": {"epochs": 1},
                                    "runtime": {"device": device.type, **runtime}})


def precision_benchmark(train: Split, test: Split, epochs: int, device: torch.device,
                        gemm_size: int = 2048) -> dict[str, dict[str, float]]:
    """Per mode: a pretraining and a classifier epoch (best of ``epochs``, the modes timed in
    alternation so that a slow spell of the machine hits all), the GEMM peak of the mode's
    type (``gemm_size`` square products), and what fraction of it the pretraining epoch
    reaches. Each mode trains as a run with ``runtime.autocast`` set to it would."""
    test, runs = test.to(device), {}
    for mode in autocast_modes(device):
        setup = TrainingSetup.of_images(_epoch_config(device, autocast=mode), train)
        pretraining = setup.pretraining()
        runs[mode] = (pretraining, setup.classifier_training(encoder_surgery(pretraining.model), test))
    times: dict[str, dict[str, list[float]]] = {mode: {"pretrain": [], "classifier": []} for mode in runs}
    for round_ in range(epochs + 1):  # round 0 warms up (allocator, kernels, oneDNN's bf16 plans)
        for mode, (pretraining, classifier_training) in runs.items():
            seconds = (_best_seconds(lambda run=pretraining: pretrain(run), 1, device),
                       _best_seconds(lambda run=classifier_training: train_classifier(run), 1, device))
            if round_:
                times[mode]["pretrain"].append(seconds[0])
                times[mode]["classifier"].append(seconds[1])
    results = {}
    for mode in runs:
        peak = matmul_peak_gflops(device, size=gemm_size, dtype=_GEMM_TYPES[mode])
        pretrain_s, classifier_s = min(times[mode]["pretrain"]), min(times[mode]["classifier"])
        gflops = PRETRAIN_FLOP_PER_SAMPLE * len(train) / pretrain_s / 1e9
        results[mode] = {"pretrain_epoch_s": pretrain_s, "classifier_epoch_s": classifier_s,
                         "matmul_peak_gflops": peak, "pretrain_gflops": gflops,
                         "pretrain_fraction_of_peak": gflops / peak}
    for mode in results:
        results[mode]["pretrain_speedup_vs_float32"] = results["none"]["pretrain_epoch_s"] / results[mode][
            "pretrain_epoch_s"]
        results[mode]["classifier_speedup_vs_float32"] = results["none"]["classifier_epoch_s"] / results[mode][
            "classifier_epoch_s"]
    return results


def graph_benchmark(train: Split, test: Split, epochs: int, device: torch.device) -> dict[str, float]:
    """A pretraining epoch with the step as eager kernels and replayed as CUDA graphs
    (``runtime.compile_step = "reduce-overhead"``), timed in alternation after a warm-up
    round (which compiles and records the graphs), and the lecture's whole training (20
    pretraining and 10 classifier epochs, test accuracy after each) both ways: for a GPU,
    where a step's kernel launches are a large part of its time."""
    test, modes = test.to(device), ("none", "reduce-overhead")
    epochs_of: dict[str, Callable[[], Any]] = {}
    for mode in modes:
        run = TrainingSetup.of_images(_epoch_config(device, compile_step=mode), train).pretraining()
        epochs_of[mode] = lambda r=run: pretrain(r)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(epochs + 1):
        for mode in modes:
            seconds = _best_seconds(epochs_of[mode], 1, device)
            if round_:
                times[mode].append(seconds)

    def whole_training(mode: str) -> None:
        lecture = build_config("lecture", {"runtime": {"device": device.type, "compile_step": mode}})
        setup = TrainingSetup.of_images(lecture, train)
        pretraining = setup.pretraining()
        pretrain(pretraining)
        train_classifier(setup.classifier_training(encoder_surgery(pretraining.model), test))

    eager, graphed = min(times["none"]), min(times["reduce-overhead"])
    return {"eager_pretrain_epoch_s": eager, "graphed_pretrain_epoch_s": graphed,
            "graphed_speedup_vs_eager": eager / graphed,
            "whole_training_eager_s": _best_seconds(lambda: whole_training("none"), 1, device),
            "whole_training_graphed_s": _best_seconds(lambda: whole_training("reduce-overhead"), 1, device)}


def run_benchmark(data_root: Path, epochs: int = 2, dtype: str = "float32", device: str = "auto") -> dict[str, Any]:
    place = resolve_device(device)
    root = Path(data_root)
    raw = locate(root, "mnist", allow_download=False)
    # One epoch per call of a training loop: each timing is one epoch, best of ``epochs``.
    config = build_config("lecture", {"pretrain": {"epochs": 1}, "classifier": {"epochs": 1},
                                      "runtime": {"device": place.type, "dtype": dtype}})
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cpu_matmul_flags": cpu_matmul_flags(),
                    "device": str(place), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(place) if place.type == "cuda" else None},
        "epochs_timed": epochs,
    }
    results["matmul_peak_gflops"] = matmul_peak_gflops(place)

    # Lecture path (float64 as in the lecture), one epoch at a time, best of `epochs`.
    train_loader, test_loader = lecture_loaders(root, 1000)
    model = DenoisingAutoencoder().double().to(place)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    results["lecture_pretrain_epoch_s"] = _best_seconds(
        lambda: lecture_pretrain_epoch(model, optimizer, train_loader, place), epochs, place)
    classifier = encoder_surgery(model).double().to(place)
    sgd = torch.optim.SGD(classifier.parameters(), lr=0.1)
    results["lecture_classifier_epoch_s"] = _best_seconds(
        lambda: lecture_classifier_epoch(classifier, sgd, train_loader, test_loader, place), epochs, place)

    # Project path: the training setup of a run, data resident on the device.
    setup = TrainingSetup.build(config, raw)
    test = setup.test_split()
    pixels = setup.pixels(setup.train)
    # The default step (autograd) and the hand-written one, each warmed up (allocator,
    # kernels), then timed in alternation so that a slow spell of the machine hits both.
    autograd = setup.pretraining()
    handwritten = dataclasses.replace(setup.pretraining(), gradients="handwritten")
    pretrain(autograd), pretrain(handwritten)
    autograd_times, handwritten_times = [], []
    for _ in range(epochs):
        autograd_times.append(_best_seconds(lambda: pretrain(autograd), 1, place))
        handwritten_times.append(_best_seconds(lambda: pretrain(handwritten), 1, place))
    results["project_pretrain_epoch_s"] = min(autograd_times)
    results["handwritten_pretrain_epoch_s"] = min(handwritten_times)
    classifier_training = setup.classifier_training(encoder_surgery(autograd.model), test)
    results["project_classifier_epoch_s"] = _best_seconds(lambda: train_classifier(classifier_training), epochs,
                                                          place)

    if setup.place.dtype == torch.float32:
        results["autocast"] = precision_benchmark(setup.train, test, epochs, place)
    if place.type == "cuda":
        results["cuda_graphs"] = graph_benchmark(setup.train, test, epochs, place)

    samples = len(pixels)
    pretrain_gflops = PRETRAIN_FLOP_PER_SAMPLE * samples / results["project_pretrain_epoch_s"] / 1e9
    classifier_gflops = CLASSIFIER_FLOP_PER_SAMPLE * samples / results["project_classifier_epoch_s"] / 1e9
    results.update({
        "dtype": dtype,
        "pretrain_speedup": results["lecture_pretrain_epoch_s"] / results["project_pretrain_epoch_s"],
        "handwritten_pretrain_speedup": results["lecture_pretrain_epoch_s"] / results["handwritten_pretrain_epoch_s"],
        "classifier_speedup": results["lecture_classifier_epoch_s"] / results["project_classifier_epoch_s"],
        "pretrain_gflops": pretrain_gflops,
        "pretrain_fraction_of_peak": pretrain_gflops / results["matmul_peak_gflops"],
        "classifier_gflops": classifier_gflops,
        "classifier_fraction_of_peak": classifier_gflops / results["matmul_peak_gflops"],
    })
    return results


def reference_pretrain_epoch(model: DenoisingAutoencoder, optimizer: torch.optim.Optimizer, pixels: torch.Tensor,
                             batch_size: int, sparsity_weight: float, generator: torch.Generator) -> None:
    """The plainest autograd epoch of the same training: what anyone would write first."""
    for index in torch.randperm(len(pixels), generator=generator, device=pixels.device).split(batch_size):
        clean = pixels[index]
        noise = torch.randn(clean.shape, generator=generator, device=pixels.device)
        reconstruction, hidden = model((clean + noise * 0.2 + 0.1).clamp(0, 1))
        loss = F.mse_loss(reconstruction, clean) + sparsity_weight * hidden.abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def speed_ratio(samples: int = 6_000, rounds: int = 9, seed: int = 0) -> float:
    """How many times faster the project's pretraining epoch is than
    ``reference_pretrain_epoch`` on the same random data: the median over ``rounds`` of the
    ratio of two epochs timed back to back in this process. A ratio of neighbours, so a
    slower machine, or a busy spell that lasts longer than a round, cancels out. The CI
    speed guard (tests/test_speed.py) compares it with the recorded one."""
    device = torch.device("cpu")
    config = _epoch_config(device)
    generator = torch.Generator().manual_seed(seed)
    images = Split(torch.randint(0, 256, (samples, 28, 28), dtype=torch.uint8, generator=generator),
                   torch.zeros(samples, dtype=torch.long))
    project_run = TrainingSetup.of_images(config, images).pretraining()
    pixels = project_run.pixels
    reference_model = DenoisingAutoencoder()
    reference_optimizer = torch.optim.Adam(reference_model.parameters(), lr=config.pretrain.lr)
    ratios = []
    for round_ in range(rounds + 1):  # round 0 warms up
        reference = _best_seconds(lambda: reference_pretrain_epoch(
            reference_model, reference_optimizer, pixels, 1000, config.pretrain.sparsity_weight, generator), 1, device)
        project = _best_seconds(lambda: pretrain(project_run), 1, device)
        if round_:
            ratios.append(reference / project)
    return statistics.median(ratios)
