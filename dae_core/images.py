"""Pictures people have, made to look like MNIST digits.

MNIST's digits were size-normalised to fit a 20x20 box keeping their aspect ratio, then
centred by centre of mass in a 28x28 field, light ink on a dark ground. A photo, a scan
or a drawing is none of that; ``to_mnist`` makes it so, the same way, before the
classifier sees it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from dae_core.data import DataError, read_idx
from dae_core.shapes import IMAGE_SIDE

DIGIT_BOX = 20  # MNIST's size normalisation: the digit's longer side, in pixels
# Where MNIST puts a digit's centre of mass: row and column 14.0 (mean over the training
# set, std 0.29), not the field's middle 13.5. Half a pixel off halves the overlap of thin
# strokes with what the classifier learned.
CENTRE = 14.0
INK = 0.1  # after contrast stretching, pixels above this count as the digit's strokes
# A digit needs a few hundred pixels and a phone's photo has 12 to 48 million. Larger
# pictures are refused by the size their header declares, before any decoding: Pillow's
# own guard warns only past 89 million and stops at 179 million, a frame of gigabytes.
MAX_PIXELS = 64_000_000
# Modes of more than 8 bits a channel, read as numbers rather than converted (Pillow's
# conversion to 8 bits clips I;16's 0..65535 at 255: every 16-bit picture came out white).
WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageUnreadable(DataError):
    """A file that is neither a picture Pillow can open nor an IDX file of images."""

    fix = ""  # one line naming the file: the batch's other files are still scored


@dataclass(frozen=True)
class Digits:
    names: list[str]  # the file, with ``[index]`` for each image of an IDX file
    pixels: np.ndarray  # (N, 28, 28) float32 in [0, 1], light digits on dark


def _grey(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] whatever the mode and bit depth; transparency becomes white paper
    (a drawing on nothing)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_MODES:
        return _wide_grey(image)
    if image.mode == "LAB":  # Pillow converts LAB to nothing else itself: through ICC profiles
        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                              "LAB", "RGB")
        image = ImageCms.applyTransform(image, lab_to_srgb)
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _wide_grey(image: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float picture in [0, 1]: I;16 on its 65535, the others on
    the smallest of 1 (floats), 255 and 65535 that holds their values (an 8-bit picture kept
    as integers reads as 8 bits), else their maximum."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max(initial=0.0))
    if image.mode.startswith("I;16"):
        full = 65535.0
    else:
        full = next(limit for limit in (1.0 if image.mode == "F" else 255.0, 255.0, 65535.0, max(top, 1.0))
                    if top <= limit)
    return np.clip(values / full, 0.0, 1.0).astype(np.float32)


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
    return _framed(_grey(image))


def _framed(grey: np.ndarray) -> np.ndarray:
    return _fit_and_centre(_light_on_dark(grey))


def _is_idx(path: Path) -> bool:
    with open(path, "rb") as stream:
        head = stream.read(4)
    return len(head) == 4 and head[:3] == b"\x00\x00\x08"


def read_digits(path: Path) -> Digits:
    """The digits of one file: a picture (PNG, JPEG, ... any size up to ``MAX_PIXELS``,
    any mode and bit depth, either polarity; an animation's first frame) or an IDX file of
    28x28 images (already MNIST-framed: only scaled to [0, 1]). Raises ``ImageUnreadable``
    naming the file and why, for every file it cannot read."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageUnreadable(f"{path}: {'not a file' if path.exists() else 'no such file'}")
        if _is_idx(path):
            return _idx_digits(path)
        return Digits([str(path)], _framed(_decoded_grey(path))[None])
    except OSError as error:
        raise ImageUnreadable(f"{path}: cannot read ({error.strerror or error})") from None
    except ImageUnreadable:
        raise
    except DataError as error:  # its fix is for training data; this one names the file alone
        raise ImageUnreadable(error.message) from None


def _idx_digits(path: Path) -> Digits:
    images = read_idx(path, ndim=3)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ImageUnreadable(f"{path}: IDX images are {images.shape[1:]}, expected (28, 28)")
    if not len(images):
        raise ImageUnreadable(f"{path}: an IDX file of no images")
    return Digits([f"{path}[{index}]" for index in range(len(images))], images.astype(np.float32) / 255.0)


def _decoded_grey(path: Path) -> np.ndarray:
    """The picture's first frame in grey (``_grey``), decoded once its header says it is of
    a digit's size."""
    # Pillow warns of what it reads past (corrupt EXIF, a bomb's size): the size is refused
    # below and a damaged file named, in words, so its warnings would only repeat them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode_grey(path)


def _decode_grey(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageUnreadable(f"{path}: {width}x{height} pixels, too large to be a digit (at most "
                                      f"{MAX_PIXELS // 1_000_000} million are read; crop or scale it down)")
            if width * height == 0:
                raise ImageUnreadable(f"{path}: a picture of {width}x{height} pixels")
            image.load()
            return _grey(image)
    except UnidentifiedImageError:
        raise ImageUnreadable(f"{path}: not a picture (PNG, JPEG, ...) nor an IDX file of images") from None
    except Image.DecompressionBombError as error:
        raise ImageUnreadable(f"{path}: too large to be a digit ({error})") from None
    except ImageUnreadable:
        raise
    # A damaged file makes Pillow's decoders raise almost anything (OSError, SyntaxError,
    # ValueError, EOFError, struct.error, IndexError, ...; its own fuzzing accepts any
    # Exception): each is this file's fault, named, and the others are still read.
    except Exception as error:
        raise ImageUnreadable(f"{path}: a damaged picture ({type(error).__name__}: {error})") from None
