"""Hostile inputs: each is refused with one line naming the file, quickly, or read correctly.

Special files (named pipes, symlink loops, folders, ``/dev/zero``) given as IDX files, PNGs or
checkpoints; the TFDS download path on a machine that is offline or without tensorflow-datasets;
PNGs of every mode, decompression and metadata bombs, images without a digit; checkpoints with a
huge sparse tail or with NaN weights under a valid digest. Nothing here touches the real network:
"offline" is a loopback port where nothing listens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import io
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits import data as data_module
from jaxdigits import images as images_module
from jaxdigits.checkpoint import (
    PARAMS_FILE, PARAMS_FORMAT, TRAINING_FORMAT, load_arrays, load_params, save_arrays, save_params,
)
from jaxdigits.core.config import TrainConfig
from jaxdigits.data import IDX_FILES, read_idx
from jaxdigits.files import check_regular_file
from jaxdigits.images import load_digit_image
from jaxdigits.core.errors import CheckpointError, DataError
from tests.conftest import deadline, synthetic_dataset, write_idx_folder

TRAIN_IMAGES = IDX_FILES["train_images"]




def assert_one_line_naming(exc: BaseException, path: Path | str) -> str:
    message = str(exc)
    assert "\n" not in message and message.strip() == message
    assert str(path) in message
    return message


def assert_cli_refuses(args: list[str], path: Path, expected: str, capsys) -> None:
    """``jaxdigits ARGS`` exits 1 with one stderr line naming ``path`` and saying ``expected``."""
    with deadline(60):
        assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"jaxdigits {args[0]}: error: {path}: ")
    assert expected in captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-epoch run on synthetic data."""
    from jaxdigits.training import train

    out = tmp_path_factory.mktemp("hostile") / "run"
    train(TrainConfig(epochs=1), dataclasses.replace(synthetic_dataset(), name="mnist"), out_dir=out)
    return out


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _symlink_loop(path: Path) -> Path:
    other = path.with_name(path.name + ".other")
    os.symlink(other, path)
    os.symlink(path, other)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _dev_zero(path: Path) -> Path:
    os.symlink("/dev/zero", path)
    return path


def _dangling(path: Path) -> Path:
    os.symlink(path.with_name("nowhere"), path)
    return path


SPECIAL = {
    "named pipe": (_fifo, "not a regular file (a named pipe (FIFO))"),
    "symlink loop": (_symlink_loop, "symlink loop"),
    "folder": (_folder, "not a regular file (a folder)"),
    "/dev/zero": (_dev_zero, "not a regular file (a character device)"),
    "dangling symlink": (_dangling, "broken symlink"),
}


needs_posix = pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX only")



# --- special files as data ------------------------------------------------------------------------


@needs_posix
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_file_as_an_idx_file_is_named_for_what_it_is(tmp_path, kind):
    make, expected = SPECIAL[kind]
    path = make(tmp_path / TRAIN_IMAGES)
    with deadline(5), pytest.raises(DataError) as raised:
        read_idx(path, ndim=3)
    assert expected in assert_one_line_naming(raised.value, path)


@needs_posix
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_file_in_a_data_folder_is_not_reported_as_missing(tmp_path, kind):
    folder = write_idx_folder(tmp_path / "data", synthetic_dataset(20, 10), compress=False)
    (folder / TRAIN_IMAGES).unlink()
    make, expected = SPECIAL[kind]
    path = make(folder / TRAIN_IMAGES)
    with deadline(5), pytest.raises(DataError) as raised:
        jd.load_mnist(folder)
    assert expected in assert_one_line_naming(raised.value, path)


@needs_posix
def test_a_regular_file_beside_a_special_one_is_still_found(tmp_path):
    folder = write_idx_folder(tmp_path / "data", synthetic_dataset(20, 10), compress=True)
    _fifo(folder / TRAIN_IMAGES)  # the uncompressed name is a pipe, the .gz one is fine
    with deadline(5):
        assert len(jd.load_mnist(folder).train_images) == 20


@needs_posix
def test_check_regular_file_is_general(tmp_path):
    regular = tmp_path / "grid.json"
    regular.write_text("{}")
    assert check_regular_file(str(regular), "grid file") == regular
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'pipe'}: not a regular file .*give the grid file itself$"):
        check_regular_file(_fifo(tmp_path / "pipe"), "grid file", CheckpointError)
    with pytest.raises(DataError, match=f"^{tmp_path / 'absent.json'}: no such grid file$"):
        check_regular_file(tmp_path / "absent.json", "grid file", DataError)


@needs_posix
def test_cli_evaluate_refuses_dev_zero_as_an_idx_file(run_dir, tmp_path, capsys):
    folder = write_idx_folder(tmp_path / "data", synthetic_dataset(20, 10), compress=False)
    (folder / TRAIN_IMAGES).unlink()
    zero = _dev_zero(folder / TRAIN_IMAGES)
    assert_cli_refuses(["evaluate", str(run_dir), "--data-dir", str(folder)], zero, "a character device", capsys)



# --- checkpoints ----------------------------------------------------------------------------------


@needs_posix
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_file_as_a_checkpoint_is_named_for_what_it_is(tmp_path, kind):
    make, expected = SPECIAL[kind]
    path = make(tmp_path / PARAMS_FILE)
    with deadline(5), pytest.raises(CheckpointError) as raised:
        load_arrays(path, PARAMS_FORMAT)
    assert expected in assert_one_line_naming(raised.value, path)
    with deadline(5), pytest.raises(CheckpointError) as raised:  # through the public loader too
        load_params(path)
    assert_one_line_naming(raised.value, path)


def _tensors(value: float = 0.5) -> dict[str, np.ndarray]:
    return {"params.0.w": np.full((784, 16), value, np.float32), "params.0.b": np.zeros(16, np.float32)}


def test_a_checkpoint_with_a_huge_sparse_tail_is_refused_without_reading_it(tmp_path):
    path = tmp_path / PARAMS_FILE
    save_arrays(path, _tensors(), PARAMS_FORMAT, {"note": "valid"})
    load_arrays(path, PARAMS_FORMAT)  # valid before the tail is added
    with open(path, "r+b") as f:
        f.truncate(40 * 2**30)  # 40 GiB, sparse: costs no disk
    tracemalloc.start()
    start = time.monotonic()
    try:
        with deadline(10), pytest.raises(CheckpointError) as raised:
            load_arrays(path, PARAMS_FORMAT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 2 and peak < 1 << 20
    assert "bytes after the" in assert_one_line_naming(raised.value, path)


def test_a_checkpoint_header_declaring_more_data_than_the_file_holds_is_refused(tmp_path):
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}}).encode()
    path = tmp_path / PARAMS_FILE
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="header declares 4294967296 data bytes, the file holds 64") as raised:
            load_arrays(path, PARAMS_FORMAT)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
    assert_one_line_naming(raised.value, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_under_a_valid_digest_are_refused(tmp_path, bad):
    path = tmp_path / PARAMS_FILE
    tensors = _tensors()
    tensors["params.0.w"][3, 7] = bad
    save_arrays(path, tensors, PARAMS_FORMAT, {"note": "digest is valid"})
    with pytest.raises(CheckpointError) as raised:
        load_arrays(path, PARAMS_FORMAT)
    message = assert_one_line_naming(raised.value, path)
    assert message == f"{path}: holds non-finite values in params.0.w; the run diverged or the file was edited"
    # training state too (optimizer moments), and integer tensors are not checked for finiteness
    save_arrays(path, {"opt_state.1": np.array([1.0, bad], np.float32), "rng.seed_key": np.arange(2, dtype=np.uint32)},
                TRAINING_FORMAT, {})
    with pytest.raises(CheckpointError, match="non-finite values in opt_state.1"):
        load_arrays(path, TRAINING_FORMAT)


def test_cli_predict_refuses_nan_weights(run_dir, tmp_path, capsys):
    network, info = load_params(run_dir)
    network[0]["w"] = network[0]["w"].at[0, 0].set(np.nan)
    path = tmp_path / PARAMS_FILE
    save_params(path, network, info)
    png = tmp_path / "digit.png"
    png.write_bytes(b"")  # never read: the params are refused first
    assert_cli_refuses(["predict", str(path), str(png)], path, "holds non-finite values in params.0.w", capsys)



# --- the TFDS download path, offline or without tensorflow-datasets -------------------------------


def _closed_port() -> int:
    with socket.socket() as s:  # a loopback port with nothing listening: refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sources(base_url: str, folder: Path, corrupt: frozenset = frozenset()):
    from tensorflow_datasets.core.download import checksums

    urls = {key: f"{base_url}{stem}.gz" for key, stem in IDX_FILES.items()}
    infos = {}
    for key, url in urls.items():
        info = checksums.compute_url_info(folder / f"{IDX_FILES[key]}.gz")
        checksum = "0" * 64 if key in corrupt else info.checksum
        infos[url] = checksums.UrlInfo(size=info.size, checksum=checksum, filename=info.filename)
    return urls, infos


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging, and notes each path asked for in ``requested``."""

    def __init__(self, *args, requested: list, **kwargs):
        self.requested = requested
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.requested.append(self.path.lstrip("/"))
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(folder: Path, requested: list | None = None):
    """A loopback HTTP server of ``folder``, as the MNIST mirror would serve it; yields its base URL.

    The names of the files asked for are appended to ``requested``.
    """
    handler = functools.partial(_QuietHandler, directory=str(folder), requested=[] if requested is None else requested)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_data_dir(tmp_path, monkeypatch) -> Path:
    """No --data-dir and no $JAXDIGITS_DATA_DIR; TFDS's cache in a fresh folder (returned)."""
    monkeypatch.delenv("JAXDIGITS_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    return tmp_path / "tfds" / "downloads"


def _left_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_offline_without_a_data_folder_fails_fast_and_leaves_nothing(tmp_path, no_data_dir, monkeypatch):
    mirror = write_idx_folder(tmp_path / "mirror", synthetic_dataset(20, 10))
    sources = _sources(f"http://127.0.0.1:{_closed_port()}/", mirror)
    monkeypatch.setattr(data_module, "tfds_sources", lambda name: sources)
    start = time.monotonic()
    with deadline(20), pytest.raises(DataError) as raised:
        jd.load_mnist(None)
    assert time.monotonic() - start < 15
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message
    assert "cannot reach 127.0.0.1:" in message
    assert "pass --data-dir DIR (or set JAXDIGITS_DATA_DIR)" in message
    assert _left_in(no_data_dir.parent) == []


def test_a_download_host_that_never_answers_is_given_up_on_quickly(tmp_path, no_data_dir, monkeypatch):
    mirror = write_idx_folder(tmp_path / "mirror", synthetic_dataset(20, 10))
    with socket.socket() as silent:  # listens, but with its one-connection queue full: never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        filler = socket.create_connection(silent.getsockname(), timeout=1)
        sources = _sources(f"http://127.0.0.1:{silent.getsockname()[1]}/", mirror)
        monkeypatch.setattr(data_module, "tfds_sources", lambda name: sources)
        monkeypatch.setattr(data_module, "PROBE_TIMEOUT_S", 0.5)
        start = time.monotonic()
        with deadline(10), pytest.raises(DataError, match=r"cannot reach 127\.0\.0\.1:\d+: no answer within 0\.5 s.*--data-dir"):
            jd.load_mnist(None)
        filler.close()
    assert time.monotonic() - start < 5
    assert _left_in(no_data_dir.parent) == []


@pytest.mark.parametrize("failure", ["checksum mismatch", "missing file"])
def test_a_failed_download_removes_only_its_own_temporaries(tmp_path, no_data_dir, monkeypatch, failure):
    mirror = write_idx_folder(tmp_path / "mirror", synthetic_dataset(20, 10))
    corrupt = frozenset({"train_labels"}) if failure == "checksum mismatch" else frozenset()
    theirs = no_data_dir / "another-download.tmp.0123abcd"  # another process's, in flight
    theirs.mkdir(parents=True)
    requested = []
    with serving(mirror, requested) as base_url:
        sources = _sources(base_url, mirror, corrupt)
        if failure == "missing file":
            (mirror / f"{IDX_FILES['test_labels']}.gz").unlink()
        monkeypatch.setattr(data_module, "tfds_sources", lambda name: sources)
        with deadline(60), pytest.raises(DataError, match="could not download mnist.*--data-dir") as raised:
            jd.load_mnist(None)
    assert "\n" not in str(raised.value)
    leftovers = [name for name in _left_in(no_data_dir) if ".tmp." in name or "incomplete" in name]
    assert leftovers == [theirs.name]
    # one file at a time, nothing asked for after the failure: no download is left running (and
    # retrying for minutes against the mirror that is now gone)
    failing = "train_labels" if corrupt else "test_labels"
    keys = list(IDX_FILES)
    assert requested == [f"{IDX_FILES[key]}.gz" for key in keys[: keys.index(failing) + 1]]


def test_a_cached_download_loads_offline(tmp_path, no_data_dir, monkeypatch):
    mirror = write_idx_folder(tmp_path / "mirror", synthetic_dataset(20, 10))
    with serving(mirror) as base_url:
        sources = _sources(base_url, mirror)
        monkeypatch.setattr(data_module, "tfds_sources", lambda name: sources)
        first = jd.load_mnist(None)
    # the mirror is gone (its port closed): the files come from TFDS's cache, no probe needed
    with deadline(10):
        second = jd.load_mnist(None)
    np.testing.assert_array_equal(first.train_images, second.train_images)


def test_without_tensorflow_datasets_the_message_says_what_to_do(tiny_data_dir, no_data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    with pytest.raises(DataError) as raised:
        jd.load_mnist(None)
    message = str(raised.value)
    assert "\n" not in message
    assert "pass --data-dir DIR (or set JAXDIGITS_DATA_DIR)" in message and "install tensorflow-datasets" in message
    assert len(jd.load_mnist(tiny_data_dir).train_labels) == 200  # folders need no TFDS


def test_the_package_imports_and_reports_cleanly_without_tensorflow_datasets(tmp_path):
    script = (
        "import sys; sys.modules['tensorflow_datasets'] = None\n"
        "from jaxdigits import cli\n"
        "sys.exit(cli.main(['evaluate', sys.argv[1]]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAXDIGITS_DATA_DIR"}
    run = tmp_path / "run"
    run.mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True, text=True, timeout=120, env=env)
    # evaluate fails on the missing run first: the point is that every module imported
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr



# --- PNG input ------------------------------------------------------------------------------------


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

