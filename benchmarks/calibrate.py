"""How the lecture preset's unstated settings were found (docs/reproduction.md).

Part 1 compares readings of the lecture's "L1 penalty with weight 0.1" on the
pretraining MSE curve; part 2 finds the vanilla-SGD pretraining rate whose MSE plateaus near the lecture's
"about 0.01"; part 3 sweeps the classifier's SGD learning rate (which the
lecture does not show) on an encoder pretrained with the preset. Prints a table per
part next to the lecture's printed numbers. Full MNIST on 2 CPU cores: ~20 minutes.

    python benchmarks/calibrate.py --data-dir ../shared/data [--part pretrain|sgd|classifier]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from dae_core.config import build_config
from dae_core.data import batch_indices, load_split, locate
from dae_core.model import DenoisingAutoencoder
from dae_core.noise import corrupt
from dae_core.runtime import make_generator, seeded
from dae_core.stages import classifier_stage, pretrain_stage, surgery_stage

LECTURE_MSE = {1: 0.0740, 2: 0.0427, 3: 0.0316, 6: 0.0173, 10: 0.0112, 12: 0.0096, 17: 0.0075, 20: 0.0067}
LECTURE_CLASSIFIER = {1: (1.115, 87.14), 2: (0.525, 89.37), 5: (0.349, 91.24), 10: (0.288, 92.07)}

# name -> penalty on the hidden code h (B, 400) that is multiplied by the weight.
PENALTIES = {
    "none": lambda h: h.new_zeros(()),
    "sum per sample (as written)": lambda h: h.abs().sum(dim=1).mean(),
    "mean over batch and units": lambda h: h.abs().mean(),
}


def pretrain_variant(pixels: torch.Tensor, penalty, weight: float, epochs: int,
                     optimizer_class=torch.optim.Adam, lr: float = 1e-3) -> list[float]:
    config = build_config("lecture")
    with seeded(config.seed, "autoencoder-init"):
        model = DenoisingAutoencoder()
    optimizer = optimizer_class(model.parameters(), lr=lr)
    generator = make_generator(config.seed, "pretrain", pixels.device)
    curve = []
    for _ in range(epochs):
        total = torch.zeros(())
        steps = 0
        for index in batch_indices(len(pixels), 1000, generator, pixels.device):
            clean = pixels[index]
            reconstruction, hidden = model(corrupt(clean, config.pretrain.noise, generator))
            mse = F.mse_loss(reconstruction, clean)
            optimizer.zero_grad()
            (mse + weight * penalty(hidden)).backward()
            optimizer.step()
            total += mse.detach()
            steps += 1
        curve.append(total.item() / steps)
    return curve


def part_pretrain(raw: Path, epochs: int) -> None:
    pixels = load_split(raw, train=True).flat_pixels(torch.float32)
    print("| penalty | weight | " + " | ".join(f"MSE ep {e}" for e in LECTURE_MSE) + " |")
    print("|---|---|" + "---|" * len(LECTURE_MSE))
    print("| lecture (printed) | 0.1 | " + " | ".join(f"{v:.4f}" for v in LECTURE_MSE.values()) + " |")
    variants = [("none", 0.0), ("sum per sample (as written)", 0.1)] + [
        ("mean over batch and units", w) for w in (1e-4, 1e-3, 1e-2, 1e-1)]
    for name, weight in variants:
        short = epochs if "as written" not in name else min(epochs, 3)
        curve = pretrain_variant(pixels, PENALTIES[name], weight, short)
        cells = [f"{curve[e - 1]:.4f}" if e <= len(curve) else "-" for e in LECTURE_MSE]
        print(f"| {name} | {weight:g} | " + " | ".join(cells) + " |", flush=True)


def part_sgd(raw: Path, epochs: int, rates: list[float]) -> None:
    """Vanilla SGD pretraining (the comparison's sgd cells): which rate matches the
    lecture's remark that its MSE never gets below about 0.01?"""
    pixels = load_split(raw, train=True).flat_pixels(torch.float32)
    print("| SGD lr | " + " | ".join(f"MSE ep {e}" for e in LECTURE_MSE) + " |")
    print("|---|" + "---|" * len(LECTURE_MSE))
    for rate in rates:
        curve = pretrain_variant(pixels, PENALTIES["none"], 0.0, epochs, torch.optim.SGD, rate)
        print(f"| {rate:g} | " + " | ".join(f"{curve[e - 1]:.4f}" for e in LECTURE_MSE) + " |", flush=True)


def part_classifier(raw: Path, rates: list[float]) -> None:
    work = Path(tempfile.mkdtemp(prefix="dae-calibrate-"))
    base = build_config("lecture", {"runtime": {"device": "cpu"}})
    pretrain_stage(base, raw, work / "autoencoder.pt", work / "pretrain.state.pt")
    surgery_stage(base, work / "autoencoder.pt", work / "initial.pt")
    print("| lr | " + " | ".join(f"ep {e} loss ; acc" for e in LECTURE_CLASSIFIER) + " |")
    print("|---|" + "---|" * len(LECTURE_CLASSIFIER))
    printed = " | ".join(f"{loss:.3f} ; {acc:.2f}" for loss, acc in LECTURE_CLASSIFIER.values())
    print(f"| lecture (printed) | {printed} |")
    for rate in rates:
        config = build_config("lecture", {"classifier": {"lr": rate}, "runtime": {"device": "cpu"}})
        history = classifier_stage(config, raw, work / "initial.pt", work / f"classifier-{rate}.pt",
                                   work / f"classifier-{rate}.state.pt").history
        cells = [f"{history.train_loss[e - 1]:.3f} ; {history.test_accuracy[e - 1]:.2f}"
                 for e in LECTURE_CLASSIFIER]
        print(f"| {rate:g} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--part", choices=["pretrain", "classifier", "sgd", "all"], default="all")
    parser.add_argument("--sgd-rates", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0])
    args = parser.parse_args()
    raw = locate(args.data_dir, "mnist", allow_download=False)
    if args.part in ("pretrain", "all"):
        part_pretrain(raw, args.epochs)
    if args.part in ("sgd", "all"):
        part_sgd(raw, args.epochs, args.sgd_rates)
    if args.part in ("classifier", "all"):
        part_classifier(raw, args.rates)


if __name__ == "__main__":
    main()
