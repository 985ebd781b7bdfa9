"""Pictures people have, made to look like MNIST digits.

MNIST's digits were size-normalised to fit a 20x20 box keeping their aspect ratio, then
centred by centre of mass in a 28x28 field, light ink on a dark ground. A photo, a scan
or a drawing is none of that; ``to_mnist`` makes it so, the same way, before the
classifier sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dae_core.data import DataError, read_idx
from dae_core.shapes import IMAGE_SIDE

DIGIT_BOX = 20  # MNIST's size normalisation: the digit's longer side, in pixels
# Where MNIST puts a digit's centre of mass: row and column 14.0 (mean over the training
# set, std 0.29), not the field's middle 13.5. Half a pixel off halves the overlap of thin
# strokes with what the classifier learned.
CENTRE = 14.0
INK = 0.1  # after contrast stretching, pixels above this count as the digit's strokes


class ImageUnreadable(DataError):
    """A file that is neither a picture Pillow can open nor an IDX file of images."""

    fix = ""  # one line naming the file: the batch's other files are still scored


@dataclass(frozen=True)
class Digits:
    names: list[str]  # the file, with ``[index]`` for each image of an IDX file
    pixels: np.ndarray  # (N, 28, 28) float32 in [0, 1], light digits on dark


def _grey(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1]; transparency becomes white paper (a drawing on nothing)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _light_on_dark(grey: np.ndarray) -> np.ndarray:
    """Ink light, ground dark, contrast stretched to [0, 1]. The ground is what the border
    mostly is: a light border means a dark digit on light paper, which is inverted."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 0.5:
        grey = 1.0 - grey
        border = 1.0 - border
    ground = float(np.median(border))
    span = float(grey.max()) - ground
    if span <= 1e-6:
        return np.zeros_like(grey)  # a blank picture: nothing to centre
    return np.clip((grey - ground) / span, 0.0, 1.0)


def _fit_and_centre(digit: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale the longer side to 20 px (aspect kept), then place it in 28x28
    with its centre of mass at the centre, as MNIST was made."""
    rows, cols = np.nonzero(digit > INK)
    if rows.size == 0:
        return np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    crop = digit[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    boxed = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    boxed = np.clip(boxed, 0.0, 1.0)
    field = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    total = float(boxed.sum())
    height, width = boxed.shape
    if total > 0:
        centre_row = float((boxed.sum(axis=1) * np.arange(height)).sum()) / total
        centre_col = float((boxed.sum(axis=0) * np.arange(width)).sum()) / total
    else:
        centre_row, centre_col = (height - 1) / 2, (width - 1) / 2
    top, left = int(round(CENTRE - centre_row)), int(round(CENTRE - centre_col))
    # A lopsided digit may be pushed past the edge by its centre of mass: clip to the field.
    top, left = min(max(top, 0), IMAGE_SIDE - height), min(max(left, 0), IMAGE_SIDE - width)
    field[top:top + height, left:left + width] = boxed
    return field


def to_mnist(image: Image.Image) -> np.ndarray:
    """Any picture of one digit -> (28, 28) float32 in [0, 1], light on dark, MNIST-framed."""
    return _fit_and_centre(_light_on_dark(_grey(image)))


def _is_idx(path: Path) -> bool:
    with open(path, "rb") as stream:
        head = stream.read(4)
    return len(head) == 4 and head[:3] == b"\x00\x00\x08"


def read_digits(path: Path) -> Digits:
    """The digits of one file: a picture (PNG, JPEG, ... any size, either polarity) or an
    IDX file of 28x28 images (already MNIST-framed: only scaled to [0, 1]). Raises
    ``ImageUnreadable`` naming the file."""
    path = Path(path)
    try:
        if _is_idx(path):
            images = read_idx(path, ndim=3)
            if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
                raise ImageUnreadable(f"{path}: IDX images are {images.shape[1:]}, expected (28, 28)")
            return Digits([f"{path}[{index}]" for index in range(len(images))], images.astype(np.float32) / 255.0)
        with Image.open(path) as image:
            image.load()
            return Digits([str(path)], to_mnist(image)[None])
    except UnidentifiedImageError:
        raise ImageUnreadable(f"{path}: not a picture (PNG, JPEG, ...) nor an IDX file of images") from None
    except OSError as error:
        raise ImageUnreadable(f"{path}: cannot read ({error.strerror or error})") from None
    except DataError as error:
        raise ImageUnreadable(str(error)) from None
