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
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(folder: Path, port: int = 0):
    """A loopback HTTP server of ``folder``, as the MNIST mirror would serve it; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_QuietHandler, directory=str(folder)))
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
    with serving(mirror) as base_url:
        sources = _sources(base_url, mirror, corrupt)
        if failure == "missing file":
            (mirror / f"{IDX_FILES['test_labels']}.gz").unlink()
        monkeypatch.setattr(data_module, "tfds_sources", lambda name: sources)
        with deadline(60), pytest.raises(DataError, match="could not download mnist.*--data-dir") as raised:
            jd.load_mnist(None)
    assert "\n" not in str(raised.value)
    leftovers = [name for name in _left_in(no_data_dir) if ".tmp." in name or "incomplete" in name]
    assert leftovers == [theirs.name]


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

