"""PNG digits (``jaxdigits.images``): framed like MNIST, every PNG mode read as the same digit, and
anything that cannot be a digit refused in one line naming the file (special files,
decompression and metadata bombs, specks, damage), from the library and from ``predict``."""

from __future__ import annotations

import io
import random
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits import images as images_module
from jaxdigits.core.errors import DataError
from jaxdigits.images import load_digit_image
from tests.conftest import deadline
from tests.helpers import SPECIAL, _fifo, assert_cli_refuses, assert_one_line_naming, needs_posix


def _save_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_png_digits_are_framed_like_mnist(tmp_path, mnist):
    from PIL import Image

    digit = (mnist.test_images[0].reshape(28, 28) * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(digit).resize((140, 140), Image.Resampling.BILINEAR))
    dark = jd.load_digit_image(_save_png(tmp_path / "dark.png", big))
    light = jd.load_digit_image(_save_png(tmp_path / "light.png", 255 - big))
    assert dark.shape == (784,) and dark.dtype == np.float32
    np.testing.assert_allclose(dark, light, atol=0.02)
    # Re-framing keeps the digit close to the original MNIST rendering.
    assert np.corrcoef(dark, mnist.test_images[0])[0, 1] > 0.8
    with pytest.raises(jd.DataError, match="blank"):
        jd.load_digit_image(_save_png(tmp_path / "blank.png", np.full((30, 30), 255)))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(jd.DataError, match="cannot read image"):
        jd.load_digit_image(tmp_path / "bad.png")


@needs_posix
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_file_as_a_png_is_named_for_what_it_is(tmp_path, kind):
    make, expected = SPECIAL[kind]
    path = make(tmp_path / "digit.png")
    with deadline(5), pytest.raises(DataError) as raised:
        load_digit_image(path)
    assert expected in assert_one_line_naming(raised.value, path)


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _crafted_png(width: int, height: int, extra: bytes = b"", depth: int = 8) -> bytes:
    """A greyscale PNG with any IHDR size (even 0 or huge) and a tiny IDAT."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
    rows = b"\x00" * (min(width, 64) + 1) * min(height, 64)
    return b"\x89PNG\r\n\x1a\n" + header + extra + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def ink(mnist) -> np.ndarray:
    """A real MNIST digit enlarged to 140x140: ``(140, 140) float64`` ink in [0, 1] (1 = ink)."""
    from PIL import Image

    digit = Image.fromarray(mnist.test_images[0].reshape(28, 28).astype(np.float32))
    return np.clip(np.asarray(digit.resize((140, 140), Image.Resampling.BILINEAR), np.float64), 0, 1)


def _variants(ink: np.ndarray) -> dict:
    """The same digit in several PNG modes, each as a Pillow image."""
    from PIL import Image

    ink8 = np.round(ink * 255).astype(np.uint8)
    paper = 255 - ink8  # black ink on white paper
    clear = np.zeros(ink8.shape, np.uint8)
    white = np.full(ink8.shape, 255, np.uint8)
    palette = Image.fromarray(paper).convert("P")
    return {
        "RGB": Image.fromarray(np.stack([paper] * 3, -1)),
        "RGBA black ink on transparent": Image.fromarray(np.stack([clear, clear, clear, ink8], -1)),
        "RGBA white ink on transparent": Image.fromarray(np.stack([white, white, white, ink8], -1)),
        "LA black ink on transparent": Image.fromarray(np.stack([clear, ink8], -1)),
        "LA opaque": Image.fromarray(np.stack([paper, white], -1)),
        "P with transparent paper": (palette, {"transparency": 255}),
        "L with tRNS": (Image.fromarray(paper), {"transparency": 255}),
        "RGB with tRNS": (Image.fromarray(np.stack([paper] * 3, -1)), {"transparency": (255, 255, 255)}),
        "white ink on black": Image.fromarray(ink8),
    }


def _save(path: Path, variant) -> Path:
    image, options = variant if isinstance(variant, tuple) else (variant, {})
    image.save(path, **options)
    return path


@pytest.mark.parametrize("mode", list(_variants(np.zeros((2, 2)))))
def test_every_png_mode_reads_as_the_same_digit(tmp_path, ink, mode):
    from PIL import Image

    opaque = load_digit_image(_save(tmp_path / "opaque.png", Image.fromarray(255 - np.round(ink * 255).astype(np.uint8))))
    np.testing.assert_allclose(opaque, images_module.frame_digit(1.0 - np.round(ink * 255) / 255), atol=1e-6)
    path = _save(tmp_path / "variant.png", _variants(ink)[mode])
    np.testing.assert_allclose(load_digit_image(path), opaque, atol=1e-4)


def test_a_sixteen_bit_png_is_scaled_not_clipped(tmp_path, ink):
    from PIL import Image

    eight = Image.fromarray(np.round((1 - ink) * 255).astype(np.uint8))
    sixteen = Image.fromarray(np.round((1 - ink) * 65535).astype(np.uint16))
    path = tmp_path / "sixteen.png"
    sixteen.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")  # a real 16-bit greyscale PNG
    np.testing.assert_allclose(load_digit_image(path), load_digit_image(_save(tmp_path / "eight.png", eight)), atol=1 / 255)


def test_frame_digit_frames_like_mnist_and_is_what_load_digit_image_uses(tmp_path, mnist):
    from PIL import Image

    digit = mnist.test_images[0].reshape(28, 28)
    framed = images_module.frame_digit(digit)
    assert framed.shape == (784,) and framed.dtype == np.float32
    assert np.corrcoef(framed, mnist.test_images[0])[0, 1] > 0.9
    path = _save(tmp_path / "digit.png", Image.fromarray(np.round(digit * 255).astype(np.uint8)))
    np.testing.assert_array_equal(load_digit_image(path), images_module.frame_digit(np.round(digit * 255) / 255))
    # a digit in a corner of a big canvas is framed whole, in the middle, none of it wrapped round
    canvas = np.zeros((300, 300))
    canvas[:28, -28:] = digit
    np.testing.assert_allclose(images_module.frame_digit(canvas), framed, atol=1e-5)
    for bad, message in [(np.zeros((0, 5)), "no pixels"), (np.zeros((3, 3, 3)), "2-D"),
                         (np.full((5, 5), np.nan), "non-finite"), (np.zeros((9, 9)), "blank")]:
        with pytest.raises(DataError, match=message):
            images_module.frame_digit(bad)


def _specks(path: Path) -> Path:
    from PIL import Image

    canvas = np.full((2000, 2000), 255, np.uint8)
    canvas[100, 100] = canvas[1900, 1900] = 0
    Image.fromarray(canvas).save(path)
    return path


def _large_bomb(path: Path) -> Path:  # over Pillow's limit: a warning, made the refusal
    path.write_bytes(_crafted_png(12_000, 12_000, depth=1))
    return path


def _huge_bomb(path: Path) -> Path:  # over twice the limit: Pillow's own error
    path.write_bytes(_crafted_png(50_000, 50_000, depth=1))
    return path


def _ztxt_bomb(path: Path) -> Path:  # 16 KiB of zTXt that inflates to 16 MiB
    body = b"Comment\x00\x00" + zlib.compress(b"\x00" * (16 << 20), 9)
    path.write_bytes(_crafted_png(28, 28, _chunk(b"zTXt", body)))
    return path


def _itxt_flood(path: Path) -> Path:  # 80 chunks of just under 1 MiB: 80 MiB of text in all
    one = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * ((1 << 20) - 1), 9))
    path.write_bytes(_crafted_png(28, 28, one * 80))
    return path


def _icc_bomb(path: Path) -> Path:
    body = b"icc\x00\x00" + zlib.compress(b"\x00" * (16 << 20), 9)
    path.write_bytes(_crafted_png(28, 28, _chunk(b"iCCP", body)))
    return path


def _zero_size(path: Path) -> Path:
    path.write_bytes(_crafted_png(0, 28))
    return path


def _transparent(path: Path) -> Path:
    from PIL import Image

    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(path)
    return path


def _truncated(path: Path) -> Path:
    from PIL import Image

    raw = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _text(path: Path) -> Path:
    path.write_text("a digit, honestly\n")
    return path


NO_DIGIT = {
    "two specks on a large canvas": (_specks, "too small for their spread to be a digit"),
    "over the decompression-bomb limit": (_large_bomb, "too large to read safely"),
    "far over the decompression-bomb limit": (_huge_bomb, "too large to read safely"),
    "zTXt bomb": (_ztxt_bomb, "text or ICC-profile chunk decompresses to too much data"),
    "text chunk flood": (_itxt_flood, "text or ICC-profile chunk decompresses to too much data"),
    "iCCP bomb": (_icc_bomb, "text or ICC-profile chunk decompresses to too much data"),
    "zero size": (_zero_size, "0x28 pixels, which has no pixels"),
    "fully transparent": (_transparent, "image is blank"),
    "truncated": (_truncated, "cannot read image"),
    "not an image": (_text, "cannot read image (not a PNG"),
}


@pytest.mark.parametrize("case", NO_DIGIT)
def test_pngs_that_cannot_be_a_digit_are_refused_in_one_line(tmp_path, case):
    make, expected = NO_DIGIT[case]
    path = make(tmp_path / "digit.png")
    tracemalloc.start()
    try:
        with deadline(10), pytest.raises(DataError) as raised:
            load_digit_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert expected in assert_one_line_naming(raised.value, path)
    assert peak < 200 << 20  # no bomb was decoded (the specks' canvas is 4 MB)


def test_one_long_thin_stroke_is_still_a_digit(tmp_path):
    from PIL import Image

    canvas = np.full((2000, 2000), 255, np.uint8)
    canvas[200:1800, 1000] = 0  # a 1-pixel "1", drawn large
    framed = load_digit_image(_save(tmp_path / "one.png", Image.fromarray(canvas)))
    frame = framed.reshape(28, 28)
    assert (frame[:, 14] > 0.5).sum() == 20 and frame.sum() == pytest.approx(frame[:, 14].sum())


def test_randomly_damaged_pngs_read_or_are_refused(tmp_path):
    from PIL import Image

    image = np.zeros((28, 28), np.uint8)
    image[5:22, 11:16] = 255
    good = _png_bytes(Image.fromarray(image))
    rng = random.Random(0)
    path = tmp_path / "damaged.png"
    with deadline(30):
        for _ in range(300):
            raw = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            path.write_bytes(bytes(raw[: rng.randrange(len(raw))] if rng.random() < 0.3 else raw))
            try:
                assert load_digit_image(path).shape == (784,)
            except DataError as exc:
                assert_one_line_naming(exc, path)


# --- predict on the command line ------------------------------------------------------------------


@needs_posix
def test_cli_predict_refuses_a_named_pipe_as_the_png(run_dir, tmp_path, capsys):
    pipe = _fifo(tmp_path / "digit.png")
    assert_cli_refuses(["predict", str(run_dir), str(pipe)], pipe, "not a regular file (a named pipe", capsys)


def test_cli_predict_refuses_two_specks(run_dir, tmp_path, capsys):
    path = _specks(tmp_path / "specks.png")
    assert_cli_refuses(["predict", str(run_dir), str(path)], path, "too small for their spread", capsys)


def test_cli_predict_refuses_a_bomb(run_dir, tmp_path, capsys):
    path = _huge_bomb(tmp_path / "bomb.png")
    assert_cli_refuses(["predict", str(run_dir), str(path)], path, "too large to read safely", capsys)


def test_cli_predict_reads_a_transparent_canvas(run_dir, tmp_path, ink, capsys):
    path = _save(tmp_path / "canvas.png", _variants(ink)["RGBA black ink on transparent"])
    assert cli.main(["predict", str(run_dir), str(path)]) == 0
    assert capsys.readouterr().out.startswith("digit ")
