"""Digits drawn outside MNIST: a PNG read safely, and a drawing framed as MNIST's digits were.

``load_digit_image`` turns a PNG of any size (dark digit on light, or the reverse) into the
``(784,) float32`` input ``predict`` takes; ``frame_digit`` does the framing for a grey array
(the live page's drawings too). Problems raise ``DataError`` naming the file.
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from jaxdigits.core.dataset import MNIST_SIDE
from jaxdigits.core.errors import DataError
from jaxdigits.data import one_line
from jaxdigits.files import open_regular_file

_INK = 0.1  # a pixel this far from the background (after normalising it to 0) is ink
_DIGIT_BOX = 20  # MNIST digits were scaled to fit a 20x20 box, then centred in 28x28
_MIN_INK_PIXELS = 10  # fewer inked pixels in that box is specks, not a digit (MNIST has 34+)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_digit_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG (any size, dark or light background) as one MNIST-style ``(784,) float32`` image.

    The image is read as grey in [0, 1] (``_read_grey_image``) and framed as the MNIST digits were
    (``frame_digit``). Anything that cannot be a digit (not a regular file, not an image, too
    large, blank, only specks) raises ``DataError`` with a one-line message naming ``path``.
    """
    grey = _read_grey_image(path)
    try:
        return frame_digit(grey)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def _read_grey_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as ``(H, W) float32`` grey in [0, 1], whatever its PNG mode.

    16-bit grey is scaled by 65535 (not clipped to 8 bits); transparency is composited over a
    backdrop that contrasts with the ink, so black ink on a transparent background (colour
    uniform, alpha varying: the alpha is the ink) reads as that ink. Images over Pillow's
    decompression-bomb limit and PNGs whose text or ICC chunks decompress to too much are refused
    before their pixels are decoded.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with open_regular_file(path, "PNG image", DataError) as f, Image.open(f) as image:
                if image.width == 0 or image.height == 0:
                    raise DataError(f"{path}: image has no pixels ({image.width}x{image.height})")
                image.load()
                return _grey_pixels(image)
        except DataError:
            raise
        except UnidentifiedImageError:
            raise DataError(f"{path}: cannot read image ({_unidentified(path)})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(
                f"{path}: image too large to read safely ({one_line(exc)}); crop or scale the digit down"
            ) from None
        except ValueError as exc:
            if "MAX_TEXT" in str(exc):
                raise DataError(
                    f"{path}: a text or ICC-profile chunk decompresses to too much data; "
                    "save the image again without metadata"
                ) from None
            raise DataError(f"{path}: cannot read image ({one_line(exc)})") from None
        except MemoryError:
            raise DataError(f"{path}: image too large to read in memory; crop or scale the digit down") from None
        except (OSError, SyntaxError, EOFError, IndexError, TypeError, zlib.error) as exc:
            # Pillow reports broken files in all these ways (UnidentifiedImageError is an OSError)
            raise DataError(f"{path}: cannot read image ({one_line(exc)})") from None


def _unidentified(path: str | os.PathLike) -> str:
    """Why Pillow did not recognise ``path``: a PNG of zero size, or no image at all."""
    try:
        with open_regular_file(path, "PNG image", DataError) as f:
            head = f.read(24)
    except DataError:
        head = b""
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if width == 0 or height == 0:
            return f"a PNG of {width}x{height} pixels, which has no pixels"
    return "not a PNG or any other image format Pillow knows"


def _grey_pixels(image) -> np.ndarray:
    """A decoded Pillow image as ``(H, W) float32`` grey in [0, 1] (see ``_read_grey_image``)."""
    if image.mode in _SIXTEEN_BIT_MODES:  # 16-bit greyscale PNGs open as I;16 (or I)
        return np.clip(np.asarray(image, dtype=np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        return np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    if image.mode not in _ALPHA_MODES and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    # With transparency: what is drawn depends on the backdrop, chosen from the colours.
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)  # as Pillow's "L"
    alpha = rgba[..., 3]
    if float(alpha.max()) == 0.0:  # fully transparent: nothing is drawn
        return np.zeros_like(luma)
    if float(alpha.min()) == float(alpha.max()):  # evenly opaque: the alpha changes nothing
        return np.clip(luma, 0.0, 1.0)
    visible = luma[alpha >= 0.1]
    if visible.size and float(np.percentile(visible, 99) - np.percentile(visible, 1)) <= 0.1:
        # One colour, alpha varying: the alpha is the ink. Put it on the opposite backdrop, so
        # dark ink lands on white and light ink on black.
        backdrop = 1.0 if float(visible.mean()) < 0.5 else 0.0
    else:
        # Ink of several shades: the transparent parts stand for the background, in the colour
        # they hold (a palette image whose white is transparent stays black on white).
        hidden = 1.0 - alpha
        backdrop = float((luma * hidden).sum() / hidden.sum())
    return np.clip(luma * alpha + backdrop * (1.0 - alpha), 0.0, 1.0)


def frame_digit(grey: np.ndarray) -> np.ndarray:
    """Frame a drawn digit as the MNIST digits were: ``(H, W)`` grey in [0, 1] -> ``(784,) float32``.

    The background (the median of the border pixels) is made 0 and the ink 1 (so dark ink on a
    light background is inverted); the ink is cropped, scaled so its longer side is 20 pixels,
    its strongest pixel made 1, and placed in a 28x28 frame with its centre of mass at the centre
    (shifted no further than keeps all the ink in the frame). Pure: reusable for any source of
    pixels, such as a drawing canvas. Raises ``DataError`` (message without a file name) for an
    image that holds no digit: empty, blank, or specks too small for their spread.
    """
    from PIL import Image

    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise DataError(f"expected a 2-D grey image (H, W), got shape {grey.shape}")
    if grey.size == 0:
        raise DataError(f"image has no pixels ({grey.shape[1]}x{grey.shape[0]})")
    if not np.isfinite(grey).all():
        raise DataError("image holds non-finite values")
    grey = np.clip(grey, 0.0, 1.0)
    background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if background > 0.5:
        grey, background = 1.0 - grey, 1.0 - background
    grey = np.clip((grey - background) / max(1.0 - background, 1e-6), 0.0, 1.0)
    rows, cols = np.nonzero(grey > _INK)
    if len(rows) == 0:
        raise DataError("image is blank; draw a digit on a plain background")
    ink = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = _DIGIT_BOX / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(ink, dtype=np.float32)).resize(size, Image.Resampling.LANCZOS))
    small = np.clip(small, 0.0, 1.0)
    peak = float(small.max())
    if peak <= 0.0 or int((small > _INK * peak).sum()) < _MIN_INK_PIXELS:
        raise DataError(
            f"the marks are too small for their spread to be a digit ({len(rows)} inked pixels across "
            f"{ink.shape[1]}x{ink.shape[0]}); crop the image to the digit or draw it with a thicker pen"
        )
    small = small / peak
    ys, xs = np.indices(small.shape)
    total = float(small.sum())
    centre = MNIST_SIDE / 2
    top = int(np.floor(centre - float((ys * small).sum()) / total + 0.5))
    left = int(np.floor(centre - float((xs * small).sum()) / total + 0.5))
    top = min(max(top, 0), MNIST_SIDE - small.shape[0])
    left = min(max(left, 0), MNIST_SIDE - small.shape[1])
    frame = np.zeros((MNIST_SIDE, MNIST_SIDE), np.float32)
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame.reshape(-1)
