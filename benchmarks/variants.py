"""The optimisation variants of docs/benchmarks.md, measured side by side in one process:
pretraining-epoch time with Adam default / foreach / fused / fused + torch.compile, and
MLflow model logging with inferred vs stated pip requirements.

    python benchmarks/variants.py --data-dir ../shared/data [--skip-compile]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dae_core.config import build_config
from dae_core.data import load_split, locate
from dae_core.model import DenoisingAutoencoder, encoder_surgery
from dae_core.train import pretrain


def epoch_variant(pixels: torch.Tensor, label: str, adam_options: dict, compiled: bool = False) -> None:
    config = build_config("lecture", {"pretrain": {"epochs": 1}}).pretrain
    torch.manual_seed(0)
    model = DenoisingAutoencoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **adam_options)
    generator = torch.Generator().manual_seed(0)
    runner = torch.compile(model) if compiled else model
    started = time.perf_counter()
    pretrain(runner, optimizer, pixels, config, 1000, generator)
    first = time.perf_counter() - started
    times = []
    for _ in range(3):
        started = time.perf_counter()
        pretrain(runner, optimizer, pixels, config, 1000, generator)
        times.append(time.perf_counter() - started)
    print(f"| {label} | first epoch {first:.2f} s | best of 3 {min(times):.2f} s |", flush=True)


def model_logging(stated: bool) -> float:
    import mlflow
    import numpy as np

    uri = f"sqlite:///{tempfile.mkdtemp()}/m.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    run = client.create_run(client.create_experiment("logging"))
    model = encoder_surgery(DenoisingAutoencoder()).eval()
    example = np.zeros((2, 784), dtype=np.float32)
    requirements = [f"torch=={torch.__version__.split('+')[0]}"] if stated else None
    mlflow.pytorch.log_model(model, name="warm-up", input_example=example, serialization_format="pt2",
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                             run_id=run.info.run_id)
    started = time.perf_counter()
    mlflow.pytorch.log_model(model, name="classifier", input_example=example, serialization_format="pt2",
                             pip_requirements=requirements, run_id=run.info.run_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    pixels = load_split(locate(args.data_dir, "mnist", allow_download=False), True).flat_pixels(torch.float32)
    epoch_variant(pixels, "Adam default", {})
    epoch_variant(pixels, "Adam foreach=True", {"foreach": True})
    epoch_variant(pixels, "Adam fused=True", {"fused": True})
    if not args.skip_compile:
        epoch_variant(pixels, "torch.compile + fused Adam", {"fused": True}, compiled=True)
    print(f"| log_model, pip requirements inferred | {model_logging(stated=False):.1f} s |")
    print(f"| log_model, pip requirements stated | {model_logging(stated=True):.1f} s |")


if __name__ == "__main__":
    main()
