"""Where a pretraining epoch's time goes: torch.profiler over one epoch of the project's
path on the full MNIST (docs/benchmarks.md quotes its table).

    python benchmarks/profile_epoch.py --data-dir ../shared/data [--dtype float32] [--rows 15]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from dae_core.config import build_config
from dae_core.data import load_split, locate
from dae_core.model import DenoisingAutoencoder
from dae_core.train import make_pretrain_optimizer, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    pixels = load_split(locate(args.data_dir, "mnist", allow_download=False), True).flat_pixels(dtype)
    config = build_config("lecture", {"pretrain": {"epochs": 1}}).pretrain
    model = DenoisingAutoencoder().to(dtype)
    optimizer = make_pretrain_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    pretrain(model, optimizer, pixels, config, 1000, generator)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        pretrain(model, optimizer, pixels, config, 1000, generator, history={"mse": [], "loss": []})
    print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
