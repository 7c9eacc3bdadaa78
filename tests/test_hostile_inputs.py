"""Hostile inputs: each is refused with one line naming the file, quickly, or read correctly.

Special files (named pipes, symlink loops, folders, ``/dev/zero``) given as IDX files, PNGs or
checkpoints; the TFDS download path on a machine that is offline or without tensorflow-datasets;
PNGs of every mode, decompression and metadata bombs, images without a digit; checkpoints with a
huge sparse tail or with NaN weights under a valid digest. Nothing here touches the real network:
"offline" is a loopback port where nothing listens.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import random
import signal
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
from jaxdigits.checkpoint import (
    PARAMS_FILE, PARAMS_FORMAT, TRAINING_FORMAT, load_arrays, load_params, save_arrays, save_params,
)
from jaxdigits.config import TrainConfig
from jaxdigits.data import IDX_FILES, check_regular_file, load_digit_image, read_idx
from jaxdigits.errors import CheckpointError, DataError
from tests.conftest import synthetic_dataset, write_idx_folder

TRAIN_IMAGES = IDX_FILES["train_images"]


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (rather than hang) when the block runs longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
    from jaxdigits.train import train

    out = tmp_path_factory.mktemp("hostile") / "run"
    train(TrainConfig(epochs=1), synthetic_dataset(), out_dir=out)
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
        check_regular_file(tmp_path / "absent.json", "grid file")


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
    params, config, info = load_params(run_dir)
    params[0]["w"] = params[0]["w"].at[0, 0].set(np.nan)
    path = tmp_path / PARAMS_FILE
    save_params(path, params, config, info)
    png = tmp_path / "digit.png"
    png.write_bytes(b"")  # never read: the params are refused first
    assert_cli_refuses(["predict", str(path), str(png)], path, "holds non-finite values in params.0.w", capsys)

