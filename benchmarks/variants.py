"""The optimisation variants of docs/benchmarks.md, measured side by side in one process:
a pretraining epoch with the autograd step and other Adam variants (default / foreach),
against the project's two steps (``runtime.pretrain_gradients``: the default
``AutogradStep`` and the ``HandwrittenStep``) and the autograd step through torch.compile
(``runtime.compile_step = "default"``); and MLflow model logging with inferred vs stated
pip requirements.

Epochs are interleaved (one epoch of each variant per round) so that a slow spell of the
machine hits every variant alike; the table gives the best and the median round.

    python benchmarks/variants.py --data-dir ../shared/data [--rounds 5] [--skip-compile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dae_core.config import build_config
from dae_core.data import batch_indices, load_split, locate
from dae_core.model import DenoisingAutoencoder, encoder_surgery, l1_sparsity
from dae_core.noise import corrupt
from dae_core.train import PretrainRun, pretrain

CONFIG = build_config("lecture", {"pretrain": {"epochs": 1}}).pretrain


def autograd_epoch(pixels: torch.Tensor, adam_options: dict) -> Callable[[], None]:
    """The autograd step written out, for Adam options the project does not use."""
    torch.manual_seed(0)
    model = DenoisingAutoencoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=CONFIG.lr, **adam_options)
    generator = torch.Generator().manual_seed(0)

    def epoch() -> None:
        for index in batch_indices(len(pixels), 1000, generator, pixels.device):
            clean = pixels[index]
            reconstruction, hidden = model(corrupt(clean, CONFIG.noise, generator))
            loss = F.mse_loss(reconstruction, clean) + CONFIG.sparsity_weight * l1_sparsity(hidden)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def project_epoch(pixels: torch.Tensor, gradients: str, compile_step: str = "none") -> Callable[[], None]:
    torch.manual_seed(0)
    model = DenoisingAutoencoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=CONFIG.lr, fused=True)
    generator = torch.Generator().manual_seed(0)
    run = PretrainRun(model, optimizer, pixels, generator, CONFIG, 1000, gradients=gradients,
                      compile_step=compile_step)
    return lambda: pretrain(run)


def timed(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def model_logging(stated: bool) -> float:
    import mlflow
    import numpy as np

    uri = f"sqlite:///{tempfile.mkdtemp()}/m.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    run = client.create_run(client.create_experiment("logging"))
    model = encoder_surgery(DenoisingAutoencoder()).eval()
    example = np.zeros((2, 784), dtype=np.float32)
    torch_pin = [f"torch=={torch.__version__.split('+')[0]}"]
    mlflow.pytorch.log_model(model, name="warm-up", input_example=example, serialization_format="pt2",
                             pip_requirements=torch_pin, run_id=run.info.run_id)
    started = time.perf_counter()
    mlflow.pytorch.log_model(model, name="classifier", input_example=example, serialization_format="pt2",
                             pip_requirements=torch_pin if stated else None, run_id=run.info.run_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-logging", action="store_true")
    args = parser.parse_args()
    pixels = load_split(locate(args.data_dir, "mnist", allow_download=False), True).flat_pixels(torch.float32)
    variants = {
        "autograd step, Adam default": autograd_epoch(pixels, {}),
        "autograd step, Adam foreach=True": autograd_epoch(pixels, {"foreach": True}),
        "AutogradStep, Adam fused=True (the project's default)": project_epoch(pixels, "autograd"),
        "HandwrittenStep, Adam fused=True (pretrain_gradients=handwritten)": project_epoch(pixels, "handwritten"),
    }
    if not args.skip_compile:
        variants["AutogradStep through torch.compile, Adam fused=True (compile_step=default)"] = project_epoch(
            pixels, "autograd", compile_step="default")
    first = {label: timed(run) for label, run in variants.items()}  # warm-up; includes any compile
    rounds: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.rounds):
        for label, run in variants.items():
            rounds[label].append(timed(run))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    print("| variant | first epoch | best | median |\n|---|---|---|---|")
    for label, times in rounds.items():
        print(f"| {label} | {first[label]:.2f} s | {min(times):.3f} s | {statistics.median(times):.3f} s |")
    if not args.skip_logging:
        print(f"| log_model, pip requirements inferred | {model_logging(stated=False):.1f} s |")
        print(f"| log_model, pip requirements stated | {model_logging(stated=True):.1f} s |")


if __name__ == "__main__":
    main()
