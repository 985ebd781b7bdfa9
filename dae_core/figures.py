"""The experiment's pictures, drawn with matplotlib's object API: each ``Figure`` renders
to PNG by itself (no pyplot, no backend switch, no display needed).

Every figure has a fixed size in inches at ``DPI`` and is saved without tight
cropping, so its pixel size is known in advance; files are written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dae_core.checkpoint import atomic_write

DPI = 100
MOSAIC_INCHES = (8.0, 8.6)
WIDE_INCHES = (10.0, 4.0)
SQUARE_INCHES = (6.0, 5.6)
FRONTS_INCHES = (9.0, 7.0)
_SIDE = 28


def _canvas(inches: tuple[float, float], *grid: int, **options: Any) -> tuple[Figure, Any]:
    """A figure of ``inches`` and its axes (``Figure.subplots`` arguments)."""
    figure = Figure(figsize=inches)
    return figure, figure.subplots(*grid, **options)


def _save(figure: Figure, path: Path) -> Path:
    # zlib level 1: PNG encoding at the default level 6 was half of a mosaic's drawing
    # time; level 1 takes 40% of that, and its files came out no larger (the mosaics are
    # noise-like, which the extra effort barely compresses).
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    with atomic_write(path) as stream:
        stream.write(buffer.getvalue())
    return Path(path)


def tile_grid(rows: np.ndarray) -> np.ndarray:
    """(K, 784) -> one (G*29+1, G*29+1) image of G x G 28x28 tiles with 1-pixel zero gutters."""
    count = rows.shape[0]
    grid = math.ceil(math.sqrt(count))
    tiles = rows.reshape(count, _SIDE, _SIDE).astype(np.float64)
    size = grid * (_SIDE + 1) + 1
    canvas = np.zeros((size, size))
    for k in range(count):
        top, left = 1 + (k // grid) * (_SIDE + 1), 1 + (k % grid) * (_SIDE + 1)
        canvas[top : top + _SIDE, left : left + _SIDE] = tiles[k]
    return canvas


def _symmetric_limit(values: np.ndarray) -> float:
    # A shared scale clipped at the 99.5th percentile: learned strokes stand out while
    # weights still at their small random init stay grey. Per-tile stretching would
    # blow that init noise up to full contrast and hide which units learned anything.
    return float(np.percentile(np.abs(values), 99.5)) or 1.0


def weight_mosaic(weights: np.ndarray, path: Path, title: str) -> Path:
    """Each row of (K, 784) ``weights`` as a 28x28 tile (400 filters -> 20 x 20 grid)."""
    limit = _symmetric_limit(weights)
    figure, axes = _canvas(MOSAIC_INCHES)
    image = axes.imshow(tile_grid(weights), cmap="gray", vmin=-limit, vmax=limit,
                        interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    axes.set_title(title)
    axes.axis("off")
    return _save(figure, path)


def weight_change_mosaic(before: np.ndarray, after: np.ndarray, path: Path, title: str) -> Path:
    """after - before on one symmetric colour scale: red grew, blue shrank."""
    change = tile_grid(after - before)
    limit = _symmetric_limit(change)
    figure, axes = _canvas(MOSAIC_INCHES)
    image = axes.imshow(change, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    axes.set_title(title)
    axes.axis("off")
    return _save(figure, path)


def reconstructions(
    clean: np.ndarray, noisy: np.ndarray, reconstructed: np.ndarray, path: Path
) -> Path:
    """Three rows of (n, 784) images: clean, the autoencoder's noisy input, its output."""
    count = clean.shape[0]
    figure, axes = _canvas(WIDE_INCHES, 3, count, squeeze=False)
    for row, (label, images) in enumerate(
        (("clean", clean), ("noisy input", noisy), ("reconstruction", reconstructed))
    ):
        for column in range(count):
            axis = axes[row][column]
            axis.imshow(images[column].reshape(_SIDE, _SIDE), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row][0].set_ylabel(label)
    return _save(figure, path)


def pretrain_curve(mse: Sequence[float], path: Path) -> Path:
    figure, axes = _canvas(WIDE_INCHES)
    epochs = np.arange(1, len(mse) + 1)
    axes.plot(epochs, mse, marker="o")
    axes.set(xlabel="epoch", ylabel="train reconstruction MSE", yscale="log",
             title="Denoising autoencoder pretraining")
    axes.grid(True, alpha=0.3)
    return _save(figure, path)


def classifier_curves(train_loss: Sequence[float], test_accuracy: Sequence[float], path: Path) -> Path:
    figure, (loss_axes, accuracy_axes) = _canvas(WIDE_INCHES, 1, 2)
    epochs = np.arange(1, len(train_loss) + 1)
    loss_axes.plot(epochs, train_loss, marker="o")
    loss_axes.set(xlabel="epoch", ylabel="train NLL loss", title="Classifier training loss")
    accuracy_axes.plot(epochs, test_accuracy, marker="o", color="tab:green")
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def per_class_bars(per_class: Sequence[float], path: Path) -> Path:
    figure, axes = _canvas(WIDE_INCHES)
    bars = axes.bar(range(len(per_class)), per_class, color="tab:blue")
    axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set(xlabel="digit", ylabel="test accuracy (%)", xticks=range(len(per_class)),
             ylim=(min(per_class) - 5 if len(per_class) else 0, 100), title="Per-class accuracy")
    return _save(figure, path)


def confusion_heatmap(confusion: np.ndarray, path: Path) -> Path:
    figure, axes = _canvas(SQUARE_INCHES)
    image = axes.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    peak = confusion.max() or 1
    for (true, predicted), count in np.ndenumerate(confusion):
        colour = "white" if count > peak / 2 else "black"
        axes.text(predicted, true, str(count), ha="center", va="center", fontsize=7, color=colour)
    axes.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10),
             title="Confusion matrix (test)")
    return _save(figure, path)


def overlay_bands(bands: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, ylabel: str,
                  title: str, log_scale: bool = False, palette: Sequence[str] = ()) -> Path:
    """One line per cell (mean over seeds) with a +-1 std band. A cell listed in ``palette``
    gets the colour of its place there, so that it keeps its colour in every figure of a
    comparison (the MSE figure has no no-pretraining curve) and across comparisons."""
    figure, axes = _canvas(WIDE_INCHES)
    figure.set_layout_engine("constrained")
    for cell, (mean, std) in bands.items():
        epochs = np.arange(1, len(mean) + 1)
        colour = f"C{palette.index(cell) % 10}" if cell in palette else None
        (line,) = axes.plot(epochs, mean, marker="o", markersize=3, label=cell, color=colour)
        axes.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=line.get_color())
    axes.set(xlabel="epoch", ylabel=ylabel, title=title)
    if log_scale:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    # Beside the axes: with nine cells a legend inside covers curves.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(figure, path)


def drift_panels(batch_brightness: np.ndarray, trained_brightness: Sequence[float], batch_classes: Sequence[float],
                 test_classes: Sequence[float], verdict: str, path: Path) -> Path:
    """A scored batch against its model's reference: per-image brightness (histograms, as
    densities) and the predicted class distribution beside the test set's."""
    figure, (inputs, classes) = _canvas(WIDE_INCHES, 1, 2)
    bins = np.linspace(0, max(0.5, float(np.max(batch_brightness, initial=0)), max(trained_brightness, default=0)),
                       31)
    inputs.hist(trained_brightness, bins=bins, density=True, alpha=0.5, label="training images (sample)")
    inputs.hist(batch_brightness, bins=bins, density=True, alpha=0.5, label="this batch")
    inputs.set(xlabel="mean pixel value per image", ylabel="density", title="Inputs")
    inputs.legend(loc="upper center")
    digits = np.arange(len(test_classes))
    classes.bar(digits - 0.2, test_classes, width=0.4, label="test set")
    classes.bar(digits + 0.2, batch_classes, width=0.4, label="this batch")
    classes.set(xticks=digits, xlabel="predicted digit", ylabel="fraction of images", title="Predictions")
    classes.legend(loc="upper center")
    figure.suptitle(f"Batch against the model's reference: {verdict}")
    return _save(figure, path)


def tuning_history(numbers: Sequence[int], values: Sequence[float], minimize: bool, objective: str, path: Path,
                   title: str) -> Path:
    """A study's complete trials in the order they ran: each trial's value and the best so far."""
    figure, axes = _canvas(WIDE_INCHES)
    best = (np.minimum if minimize else np.maximum).accumulate(np.asarray(values, dtype=float)) if len(values) \
        else np.array([])
    axes.plot(numbers, values, "o", label="trial")
    axes.step(numbers, best, where="post", color="tab:red", label="best so far")
    axes.set(xlabel="trial", ylabel=f"validation {objective}", title=title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _save(figure, path)


def tuning_slices(params: dict[str, Sequence[float]], log_scale: set[str], numbers: Sequence[int],
                  values: Sequence[float], objective: str, path: Path, title: str) -> Path:
    """Each searched field against the value its complete trials reached, one panel a field,
    coloured by trial number (later trials yellower)."""
    figure, axes = _canvas(WIDE_INCHES, 1, max(1, len(params)), squeeze=False)
    figure.set_layout_engine("constrained")
    for panel, (key, points) in zip(axes[0], params.items(), strict=False):
        scatter = panel.scatter(points, values, c=numbers, cmap="viridis")
        panel.set(xlabel=key, ylabel=f"validation {objective}", xscale="log" if key in log_scale else "linear")
        panel.grid(True, alpha=0.3)
    if params:
        figure.colorbar(scatter, ax=axes[0][-1], label="trial")
    figure.suptitle(title)
    return _save(figure, path)


def tuning_front(trials: tuple[Sequence[float], Sequence[float]], front: tuple[Sequence[float], Sequence[float]],
                 named: dict[str, tuple[float, float]], labels: tuple[str, str], path: Path, title: str) -> Path:
    """A multi-objective study on its first two objectives: every complete trial, the front
    (the trials no other beats) joined in order, and its named points ringed, named in the
    legend (a label beside a point at the plot's edge would be cut)."""
    figure, axes = _canvas(SQUARE_INCHES)
    axes.scatter(*trials, color="tab:gray", alpha=0.5, label="trial")
    axes.plot(*front, "o-", color="tab:red", label="front")
    for (name, (x, y)), marker in zip(named.items(), ("s", "D", "^", "v"), strict=False):
        axes.plot([x], [y], marker, markersize=14, markerfacecolor="none", markeredgewidth=1.5, linestyle="none",
                  label=name)
    axes.set(xlabel=f"validation {labels[0]}", ylabel=f"validation {labels[1]}", title=title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _save(figure, path)


# One seeded point of a front: its name; (mean, CI low, CI high) of clean and of noisy
# accuracy; and each seed's (clean, noisy).
SeededPoint = tuple[str, tuple[float, float, float], tuple[float, float, float], list[tuple[float, float]]]


def fronts_with_seed_bands(validation: dict[str, tuple[Sequence[float], Sequence[float]]],
                           seeded: dict[str, list[SeededPoint]], path: Path, title: str) -> Path:
    """Several recipes' trade-offs in one figure, a colour per recipe: each one's front on
    the validation split (dotted) and its points trained over seeds and scored on the test
    set (solid, joined in order of clean accuracy, with their 95% intervals over seeds as
    error bars and each seed as a faint dot). The axes frame the fronts and the means: an
    interval or a seed far outside them runs off the plot rather than shrink the rest."""
    figure, axes = _canvas(FRONTS_INCHES)
    framed_x: list[float] = []
    framed_y: list[float] = []
    for index, recipe in enumerate(validation | seeded):
        colour = f"C{index}"
        if recipe in validation:
            axes.plot(*validation[recipe], ":", marker=".", color=colour, alpha=0.6,
                      label=f"{recipe} (validation front)")
            framed_x += list(validation[recipe][0])
            framed_y += list(validation[recipe][1])
        points = sorted(seeded.get(recipe, []), key=lambda point: point[1][0])
        if not points:
            continue
        means_x, means_y = [p[1][0] for p in points], [p[2][0] for p in points]
        framed_x += means_x
        framed_y += means_y
        axes.plot(means_x, means_y, "o-", color=colour, label=f"{recipe} (test, mean over seeds)")
        # Two names can point to one trial (a front of two points has its knee on an end):
        # its runs are the same, so it is drawn once under both names.
        names: dict[tuple[float, float], list[str]] = {}
        for name, (x, *_), (y, *_), _ in points:
            names.setdefault((x, y), []).append(name)
        for name, (x, x_low, x_high), (y, y_low, y_high), seeds in points:
            if names[(x, y)][0] != name:
                continue
            if all(map(math.isfinite, (x_low, x_high, y_low, y_high))):
                axes.errorbar([x], [y], xerr=[[x - x_low], [x_high - x]], yerr=[[y - y_low], [y_high - y]],
                              color=colour, alpha=0.5, capsize=3, linestyle="none")
            axes.scatter([s[0] for s in seeds], [s[1] for s in seeds], color=colour, alpha=0.35, s=12)
            axes.annotate(" = ".join(names[(x, y)]), (x, y), xytext=(5, 5), textcoords="offset points",
                          fontsize="x-small", color=colour)
    if framed_x:
        margin_x = max(0.5, 0.1 * (max(framed_x) - min(framed_x)))
        margin_y = max(0.5, 0.1 * (max(framed_y) - min(framed_y)))
        axes.set_xlim(min(framed_x) - margin_x, max(framed_x) + margin_x)
        axes.set_ylim(min(framed_y) - margin_y, max(framed_y) + margin_y)
    axes.set(xlabel="clean accuracy (%)", ylabel="accuracy on noisy digits (%)", title=title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", fontsize="x-small")
    return _save(figure, path)
