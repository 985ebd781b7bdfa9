"""Pictures made MNIST-like: polarity, size, aspect, centring, colour, transparency, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dae_core.images import CENTRE, DIGIT_BOX, ImageUnreadable, read_digits, to_mnist
from tests.conftest import write_idx


def _seven(width: int, height: int, ink: int, paper: int, offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """A thick '7' drawn off-centre on a canvas of any size."""
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    left, top = width // 5 + offset[0], height // 6 + offset[1]
    size = min(width, height) // 2
    draw.line([(left, top), (left + size, top), (left + size // 3, top + int(1.6 * size))], fill=ink,
              width=max(2, size // 6))
    return image


def _centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    total = pixels.sum()
    return ((pixels.sum(1) * np.arange(28)).sum() / total, (pixels.sum(0) * np.arange(28)).sum() / total)


@pytest.mark.parametrize("size", [(97, 61), (40, 300), (1000, 777), (28, 28)])
def test_any_size_becomes_an_mnist_frame_light_on_dark(size):
    pixels = to_mnist(_seven(*size, ink=20, paper=235, offset=(7, -3)))
    assert pixels.shape == (28, 28) and pixels.dtype == np.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0.9
    rows, cols = np.nonzero(pixels > 0.1)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= DIGIT_BOX + 1
    assert np.allclose(_centre_of_mass(pixels), CENTRE, atol=1.0)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert np.median(border) == 0 and pixels[:3].max() == 0, "a dark ground; a 7's heavy top sits low"


def test_dark_on_light_and_light_on_dark_give_the_same_digit():
    scan = to_mnist(_seven(120, 90, ink=30, paper=220))
    screen = to_mnist(_seven(120, 90, ink=220, paper=30))
    assert np.abs(scan - screen).max() < 1e-5


def test_colour_and_transparency_are_handled_like_grey_paper():
    grey = _seven(80, 80, ink=0, paper=255)
    colour = Image.merge("RGB", [grey, grey, grey])
    # A drawing on nothing: black strokes, transparent elsewhere.
    drawing = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    drawing.putalpha(Image.eval(grey, lambda value: 255 - value))
    assert np.abs(to_mnist(colour) - to_mnist(grey)).max() < 1e-5
    assert np.abs(to_mnist(drawing) - to_mnist(grey)).max() < 1e-5


def test_an_mnist_digit_stays_what_it_was():
    digit = np.asarray(to_mnist(_seven(200, 200, ink=255, paper=0)) * 255, dtype=np.uint8)
    again = to_mnist(Image.fromarray(digit))
    assert np.corrcoef(again.ravel(), digit.ravel() / 255.0)[0, 1] > 0.99


def test_a_blank_picture_is_an_empty_frame():
    assert to_mnist(Image.new("L", (50, 30), 200)).max() == 0


def test_files_pictures_idx_and_unreadable_ones(tmp_path):
    _seven(64, 48, ink=10, paper=240).convert("RGB").save(tmp_path / "scan.jpg")
    write_idx(tmp_path / "images.idx", np.full((3, 28, 28), 255, np.uint8))
    (tmp_path / "notes.png").write_text("not a picture")
    _seven(64, 48, ink=10, paper=240).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])

    assert read_digits(tmp_path / "scan.jpg").pixels.shape == (1, 28, 28)
    idx = read_digits(tmp_path / "images.idx")
    assert idx.names == [f"{tmp_path / 'images.idx'}[{i}]" for i in range(3)] and idx.pixels.max() == 1.0
    for name in ("notes.png", "cut.png", "missing.png"):
        with pytest.raises(ImageUnreadable, match=name):
            read_digits(tmp_path / name)
