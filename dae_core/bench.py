"""Side-by-side timing in one process: the lecture's data path against this project's,
per pretraining and per classifier epoch, and the fraction of the machine's measured
float32 matmul peak that a pretraining epoch reaches. Pretraining is timed with the
default autograd step and with the hand-written one (``runtime.pretrain_gradients``).

The lecture's path: torchvision MNIST with ToTensor, a shuffling DataLoader (batch 1000),
float64 tensors, noise drawn per batch on the host. The project's path: the split read
once as uint8, moved to the device once, batches gathered by a seeded permutation.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dae_core.config import build_config
from dae_core.data import load_split, locate
from dae_core.model import DenoisingAutoencoder, encoder_surgery
from dae_core.runtime import resolve_device, resolve_dtype
from dae_core.train import (
    make_classifier_optimizer,
    make_pretrain_optimizer,
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


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Best float32 GEMM rate over ``repeats`` square products."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
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


def run_benchmark(data_root: Path, epochs: int = 2, dtype: str = "float32", device: str = "auto") -> dict[str, Any]:
    place = resolve_device(device)
    precision = resolve_dtype(dtype)
    root = Path(data_root)
    raw = locate(root, "mnist", allow_download=False)
    config = build_config("lecture", {"pretrain": {"epochs": epochs}, "classifier": {"epochs": epochs},
                                      "runtime": {"device": place.type, "dtype": dtype}})
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
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

    # Project path: data resident on the device in the chosen precision.
    train = load_split(raw, True).to(place)
    test = load_split(raw, False).to(place)
    pixels, test_pixels = train.flat_pixels(precision), test.flat_pixels(precision)
    one_epoch = config.pretrain.model_copy(update={"epochs": 1})
    generator = torch.Generator(device=place).manual_seed(0)

    def pretrain_epoch(gradients: str) -> tuple[DenoisingAutoencoder, Callable[[], Any]]:
        model = DenoisingAutoencoder().to(place, precision)
        optimizer = make_pretrain_optimizer(model, config.pretrain)
        return model, lambda: pretrain(model, optimizer, pixels, one_epoch, 1000, generator, gradients=gradients)

    # The default step (autograd) and the hand-written one, each warmed up (allocator,
    # kernels), then timed in alternation so that a slow spell of the machine hits both.
    (model, autograd_epoch), (_, handwritten_epoch) = pretrain_epoch("autograd"), pretrain_epoch("handwritten")
    autograd_epoch(), handwritten_epoch()
    autograd_times, handwritten_times = [], []
    for _ in range(epochs):
        autograd_times.append(_best_seconds(autograd_epoch, 1, place))
        handwritten_times.append(_best_seconds(handwritten_epoch, 1, place))
    results["project_pretrain_epoch_s"] = min(autograd_times)
    results["handwritten_pretrain_epoch_s"] = min(handwritten_times)
    classifier = encoder_surgery(model).to(place, precision)
    sgd = make_classifier_optimizer(classifier, 0.1)
    results["project_classifier_epoch_s"] = _best_seconds(
        lambda: train_classifier(classifier, sgd, pixels, train.labels, test_pixels, test.labels, 1, 1000,
                                 generator), epochs, place)

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
