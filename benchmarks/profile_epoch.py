"""Where an epoch's time goes: torch.profiler over one epoch of the project's path on the
full MNIST (docs/benchmarks.md quotes its tables).

    python benchmarks/profile_epoch.py --data-dir ../shared/data [--phase pretrain|classifier|both]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from dae_core import train as loops
from dae_core.config import build_config
from dae_core.data import load_split, locate
from dae_core.model import DenoisingAutoencoder, encoder_surgery


def pretrain_epoch(raw: Path, dtype: torch.dtype) -> Callable[[], object]:
    pixels = load_split(raw, True).flat_pixels(dtype)
    config = build_config("lecture", {"pretrain": {"epochs": 1}}).pretrain
    model = DenoisingAutoencoder().to(dtype)
    optimizer = loops.make_pretrain_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    run = loops.PretrainRun(model, optimizer, pixels, generator, config, 1000)
    return lambda: loops.pretrain(run)


def classifier_epoch(raw: Path, dtype: torch.dtype) -> Callable[[], object]:
    train, test = load_split(raw, True), load_split(raw, False)
    pixels, test_pixels = train.flat_pixels(dtype), test.flat_pixels(dtype)
    model = encoder_surgery(DenoisingAutoencoder()).to(dtype)
    optimizer = loops.make_classifier_optimizer(model, 0.1)
    generator = torch.Generator().manual_seed(0)
    run = loops.ClassifierRun(model, optimizer, pixels, train.labels, 1, 1000, generator,
                              test=(test_pixels, test.labels))
    return lambda: loops.train_classifier(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--phase", default="both", choices=["pretrain", "classifier", "both"])
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    raw = locate(args.data_dir, "mnist", allow_download=False)
    phases = {"pretrain": pretrain_epoch, "classifier": classifier_epoch}
    for name, make_epoch in phases.items():
        if args.phase not in (name, "both"):
            continue
        epoch = make_epoch(raw, dtype)
        epoch()  # warm-up: thread pool, allocator, lazy imports
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            epoch()
        print(f"\n{name} epoch\n")
        print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
