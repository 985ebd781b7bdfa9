"""Pictures made MNIST-like: polarity, size, aspect, centring, colour, transparency, bad files."""

from __future__ import annotations

import io
import os
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from dae_core.images import CENTRE, DIGIT_BOX, ImageUnreadable, read_digits, to_mnist
from tests.conftest import png_declaring, write_idx


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


# Generated pictures: every mode Pillow has, every format it writes, damaged copies of each,
# and forged headers. The promise (docs/reliability.md): a picture is read as the same digit
# whatever its mode, bit depth or format; anything else is refused in one line naming the
# file, and never with another exception (the batch's other files are still scored).

TWO_LEVEL = st.builds(lambda width, height, dx, dy, dark_ink: _seven(width, height, *((0, 255) if dark_ink else
                                                                                          (255, 0)), (dx, dy)),
                      st.integers(24, 160), st.integers(24, 160), st.integers(-4, 4), st.integers(-4, 4),
                      st.booleans())
# What each format Pillow writes holds of each mode (checked: its writer converts the rest, or
# garbles it, as I;16B into PNG, F into GIF, any picture into ICO's icon sizes; IM, deprecated,
# left out).
LOSSLESS = {"PNG": ("1", "L", "P", "RGB", "RGBA", "LA", "I;16"),
            "TIFF": ("1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "I", "I;16", "F", "CMYK", "YCbCr", "LAB"),
            "BMP": ("1", "L", "P", "RGB", "RGBA"), "GIF": ("1", "L", "P", "RGB"),
            "PPM": ("1", "L", "RGB", "I", "I;16", "F"),
            "TGA": ("1", "L", "P", "RGB", "RGBA", "LA"), "WEBP": ("L", "RGB", "RGBA"), "PCX": ("1", "L", "P", "RGB"),
            "SGI": ("L", "RGB", "RGBA"),
            "DDS": ("L", "RGB", "RGBA", "LA"), "QOI": ("RGB", "RGBA"), "JPEG2000": ("L", "RGB", "RGBA", "LA", "I;16"),
            "XBM": ("1",), "SPIDER": ("L", "F")}
LOSSY = {"JPEG": ("L", "RGB", "CMYK", "YCbCr")}
SUFFIX = {"PNG": ".png", "TIFF": ".tiff", "BMP": ".bmp", "GIF": ".gif", "PPM": ".ppm", "TGA": ".tga",
          "WEBP": ".webp", "PCX": ".pcx", "SGI": ".sgi", "DDS": ".dds", "QOI": ".qoi",
          "JPEG2000": ".jp2", "XBM": ".xbm", "SPIDER": ".spi", "JPEG": ".jpg"}


def _in_mode(grey: Image.Image, mode: str) -> Image.Image:
    """The same drawing (an 'L' picture) held in ``mode``, as an editor would save it."""
    values = np.asarray(grey)
    if mode.startswith("I;16"):  # from bytes: Pillow's conversion between I;16 modes clips at 255
        order = ">u2" if mode == "I;16B" else "=u2" if mode == "I;16N" else "<u2"
        return Image.frombytes(mode, grey.size, (values.astype(np.uint16) * 257).astype(order).tobytes())
    if mode == "F":
        return Image.fromarray(values.astype(np.float32) / 255.0)  # float32 arrays are F
    if mode == "LAB":
        from PIL import ImageCms

        srgb_to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                              "RGB", "LAB")
        return ImageCms.applyTransform(grey.convert("RGB"), srgb_to_lab)
    if mode == "PA":
        return grey.convert("P").convert("PA")
    return grey.convert(mode, dither=Image.Dither.NONE) if mode == "1" else grey.convert(mode)


MODES = ("1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "CMYK", "YCbCr",
         "LAB", "HSV")


@pytest.mark.parametrize("mode", MODES)
@given(drawing=TWO_LEVEL)
def test_the_same_drawing_in_any_mode_or_bit_depth_is_the_same_digit(drawing, mode):
    assert np.abs(to_mnist(_in_mode(drawing, mode)) - to_mnist(drawing)).max() < 0.03, mode


@pytest.mark.parametrize("mode", ("RGBA", "LA", "PA", "P"))
@given(drawing=TWO_LEVEL)
def test_ink_on_nothing_reads_as_ink_on_white_paper_in_every_mode_with_transparency(drawing, mode):
    on_paper = drawing if np.median(np.asarray(drawing)) > 127 else Image.eval(drawing, lambda value: 255 - value)
    ink = Image.new("RGBA", on_paper.size, (0, 0, 0, 0))
    ink.putalpha(Image.eval(on_paper, lambda value: 255 - value))
    if mode == "P":  # entry 0 transparent (where the paper would be), entry 1 black ink
        held = Image.fromarray((np.asarray(on_paper) < 128).astype(np.uint8)).convert("L").convert("P")
        held.putpalette([255, 255, 255, 0, 0, 0])
        held.info["transparency"] = 0
    else:
        held = ink.convert(mode)
    assert np.abs(to_mnist(held) - to_mnist(on_paper)).max() < 0.03, mode


FORMATS = [(kind, mode) for table in (LOSSLESS, LOSSY) for kind, modes in table.items() for mode in modes]


@pytest.mark.parametrize("saved", FORMATS, ids="-".join)
@given(drawing=TWO_LEVEL)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_format_pillow_writes_reads_back_as_the_same_digit(tmp_path, drawing, saved):
    kind, mode = saved
    path = tmp_path / f"digit-{mode.replace(';', '')}{SUFFIX[kind]}"
    options = {"WEBP": {"lossless": True}, "JPEG": {"quality": 95}}.get(kind, {})  # as a camera or scanner saves
    _in_mode(drawing, mode).save(path, kind, **options)
    (read,) = read_digits(path).pixels
    expected = to_mnist(drawing)
    if kind in LOSSY:  # its noise may move the rounded centre of mass by a pixel: still the same digit
        shifted = (np.roll(read, (rows, cols), axis=(0, 1)) for rows in (-1, 0, 1) for cols in (-1, 0, 1))
        assert max(np.corrcoef(candidate.ravel(), expected.ravel())[0, 1] for candidate in shifted) > 0.95, saved
    else:
        assert np.abs(read - expected).max() < 0.03, saved


def _saved_bytes(drawing: Image.Image, kind: str, mode: str) -> bytes:
    buffer = io.BytesIO()
    _in_mode(drawing, mode).save(buffer, kind)
    return buffer.getvalue()


def _read_or_refused(path) -> None:
    """The promise for any file: its digits, or ImageUnreadable in one line naming it."""
    try:
        digits = read_digits(path)
    except ImageUnreadable as refused:
        assert str(refused).startswith(str(path)) and "\n" not in str(refused), str(refused)
        return
    assert digits.pixels.shape[1:] == (28, 28) and len(digits.names) == len(digits.pixels) >= 1
    assert np.isfinite(digits.pixels).all() and 0 <= digits.pixels.min() and digits.pixels.max() <= 1


@pytest.mark.parametrize("saved", FORMATS, ids="-".join)
@given(drawing=TWO_LEVEL, data=st.data())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_damaged_picture_of_any_format_is_read_or_refused_in_one_line(tmp_path, drawing, saved, data):
    whole = bytearray(_saved_bytes(drawing, *saved))
    cut = data.draw(st.integers(0, len(whole)), label="kept bytes")
    damaged = whole[:cut]
    for _ in range(data.draw(st.integers(0, 4), label="bytes changed")):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / f"damaged{SUFFIX[saved[0]]}"
    path.write_bytes(bytes(damaged))
    _read_or_refused(path)


MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP",
         b"P5\n", b"\x00\x00\x08\x03", b"\x00\x00\x08\x01", b"")


@pytest.mark.parametrize("head", MAGIC)
@given(rest=st.binary(max_size=400))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_behind_any_known_header_are_read_or_refused_in_one_line(tmp_path, head, rest):
    path = tmp_path / "forged"
    path.write_bytes(head + rest)
    _read_or_refused(path)


@given(kind=st.integers(0, 255), dims=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=4),
       payload=st.integers(0, 3 * 28 * 28 + 5))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_idx_file_with_any_header_is_read_or_refused_in_one_line(tmp_path, kind, dims, payload):
    path = tmp_path / "images.idx"
    path.write_bytes(bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + bytes([kind]) * payload)
    _read_or_refused(path)


@pytest.mark.parametrize("side", [9000, 20000, 60000])
def test_a_picture_too_large_to_be_a_digit_is_refused_by_its_size_without_decoding(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(side, side))
    started = time.monotonic()
    with pytest.raises(ImageUnreadable, match="too large to be a digit") as refused:
        read_digits(path)
    assert time.monotonic() - started < 2, "refused from its header, not decoded"
    said = str(refused.value)
    assert str(path) in said and (f"{side}x{side} pixels" in said or "pixels) exceeds" in said), said


def test_folders_fifos_and_empty_files_are_refused_naming_them(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for name, says in (("pipe.png", "not a file"), ("empty.png", "not a picture"), ("folder.png", "not a file"),
                       ("gone.png", "no such file")):
        with pytest.raises(ImageUnreadable, match=says):
            read_digits(tmp_path / name)


@pytest.mark.parametrize("kind", ["GIF", "PNG", "WEBP", "TIFF"])
def test_an_animation_is_read_by_its_first_frame(tmp_path, kind):
    first, second = _seven(60, 60, 0, 255), Image.new("L", (60, 60), 255)
    path = tmp_path / f"animated{SUFFIX[kind]}"
    first.convert("RGB").save(path, kind, save_all=True, append_images=[second.convert("RGB")],
                              **({"lossless": True} if kind == "WEBP" else {}))
    with Image.open(path) as opened:
        assert getattr(opened, "n_frames", 1) == 2
    assert np.abs(read_digits(path).pixels[0] - to_mnist(first)).max() < 0.03
