"""MNIST files (``jaxdigits.data``): IDX round trips, the real MNIST, the TFDS download path (a
loopback mirror, offline, without tensorflow-datasets), and broken or hostile data.

Each broken file or folder gets its own one-line ``DataError`` naming the file; special files
(named pipes, symlink loops, folders, ``/dev/zero``) are named for what they are. The IDX reader
is also fuzzed (random bytes, random truncations, random header fields, raw and gzip): it returns
a well-formed array or raises ``DataError``, finishes quickly, and its memory follows the bytes
the file really holds, never the sizes its header claims. Nothing here touches the real network:
"offline" is a loopback port where nothing listens.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxdigits as jd
from jaxdigits import cli
from jaxdigits import data as data_module
from jaxdigits.core.errors import DataError
from jaxdigits.data import IDX_FILES, load_idx_folder, read_idx
from tests.conftest import deadline, idx_bytes, synthetic_dataset, write_idx, write_idx_folder
from tests.helpers import SPECIAL, _dev_zero, _fifo, assert_cli_refuses, assert_one_line_naming, needs_posix

TRAIN_IMAGES = IDX_FILES["train_images"]
TRAIN_LABELS = IDX_FILES["train_labels"]


# --- reading IDX files and folders ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8) % 10
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"i{suffix}", images), ndim=3), images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"l{suffix}", labels), ndim=1), labels)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_loads_into_the_common_form(tmp_path, compress):
    original = synthetic_dataset(30, 12)
    loaded = load_idx_folder(write_idx_folder(tmp_path, original, compress=compress))
    assert loaded.train_images.shape == (30, 784) and loaded.train_images.dtype == np.float32
    assert loaded.test_labels.shape == (12,) and loaded.test_labels.dtype == np.int32
    assert 0.0 <= loaded.train_images.min() and loaded.train_images.max() <= 1.0
    np.testing.assert_allclose(loaded.train_images, np.round(original.train_images * 255) / 255, atol=1e-6)
    np.testing.assert_array_equal(loaded.test_labels, original.test_labels)


def test_load_mnist_reads_the_env_folder(tiny_data_dir, monkeypatch):
    monkeypatch.setenv("JAXDIGITS_DATA_DIR", str(tiny_data_dir))
    assert len(jd.load_mnist().train_labels) == 200
    with pytest.raises(jd.ConfigError, match="unknown dataset"):
        jd.load_mnist(name="cifar")
    monkeypatch.setenv("JAXDIGITS_DATA_DIR", str(tiny_data_dir / "missing"))
    with pytest.raises(jd.DataError, match=r"^JAXDIGITS_DATA_DIR=.*missing: does not exist; set it to a folder"):
        jd.load_mnist()
    assert len(jd.load_mnist(tiny_data_dir).train_labels) == 200  # --data-dir wins over the variable


def test_env_folder_is_mnist_and_other_datasets_are_looked_for_beside_it(tmp_path, monkeypatch):
    mnist_folder = write_idx_folder(tmp_path / "mnist", synthetic_dataset(30, 10))
    monkeypatch.setenv("JAXDIGITS_DATA_DIR", str(mnist_folder))
    with pytest.raises(jd.DataError, match="no fashion_mnist folder beside it"):
        jd.load_mnist(name="fashion_mnist")
    write_idx_folder(tmp_path / "fashion_mnist", synthetic_dataset(20, 10, seed=1))
    assert len(jd.load_mnist(name="fashion_mnist").train_labels) == 20
    assert len(jd.load_mnist().train_labels) == 30


def test_real_mnist_matches_the_published_files(mnist_dir, mnist):
    assert mnist.train_images.shape == (60000, 784) and mnist.test_images.shape == (10000, 784)
    assert np.bincount(mnist.train_labels).tolist()[:2] == [5923, 6742]
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    raw = data_module.find_idx_file(mnist_dir, IDX_FILES["train_labels"])
    body = idx_bytes(read_idx(raw, ndim=1))
    assert hashlib.sha256(body).hexdigest().startswith("65a50cbb")


def test_fashion_files_given_as_mnist_are_recorded_as_fashion(fashion_mnist_dir, tmp_path, capsys):
    code = cli.main(["train", "--epochs", "1", "--hidden", "8", "--batch-size", "100", "--data-dir", str(fashion_mnist_dir),
                     "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0
    assert "these files are fashion_mnist, not mnist" in captured.err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["dataset"] == "fashion_mnist"
    mnist_dir = fashion_mnist_dir.parent / "mnist"
    assert cli.main(["evaluate", str(tmp_path / "run"), "--data-dir", str(mnist_dir)]) == 2
    assert "trained on fashion_mnist and these files are mnist" in capsys.readouterr().err


# --- broken files and folders ---------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A valid gzip-compressed IDX folder of 30 training and 12 test examples."""
    return write_idx_folder(tmp_path / "data", synthetic_dataset(30, 12), compress=True)


def gz(folder: Path, key: str) -> Path:
    return folder / f"{IDX_FILES[key]}.gz"


def rewrite(path: Path, change) -> Path:
    path.write_bytes(change(path.read_bytes()))
    return path


def recompressed(path: Path, change) -> Path:
    """Apply ``change`` to the decompressed IDX bytes of a ``.gz`` file and compress again."""
    path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes()))))
    return path


def flip_crc(raw: bytes) -> bytes:
    """A gzip file whose CRC-32 trailer no longer matches its (intact) data."""
    return raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:]


def deny(monkeypatch, target: Path) -> None:
    """Make ``target`` unreadable: chmod where permissions apply, else fail its opening as the OS would."""
    if os.geteuid() != 0:
        target.chmod(0)
        return
    # root ignores permission bits, so fail the system calls that read it, as the OS would
    real_open, real_listdir = builtins.open, os.listdir

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    def guarded_listdir(path="."):
        if Path(path) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_listdir(path)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "listdir", guarded_listdir)


def _wrong_image_side(folder):
    path = gz(folder, "train_images")
    images = read_idx(path)
    write_idx(path, images[:, :27, :])
    return path


def _wrong_label_ndim(folder):
    path = gz(folder, "train_labels")
    write_idx(path, read_idx(path).reshape(-1, 1))
    return path


def _label_ten(folder):
    path = gz(folder, "test_labels")
    labels = read_idx(path).copy()
    labels[3] = 10
    write_idx(path, labels)
    return path


def _fewer_labels(folder):
    path = gz(folder, "train_labels")
    write_idx(path, read_idx(path)[:-1])
    return path


def _no_images(folder):
    write_idx(gz(folder, "train_images"), np.zeros((0, 28, 28), np.uint8))
    write_idx(gz(folder, "train_labels"), np.zeros((0,), np.uint8))
    return gz(folder, "train_images")


def _raw_and_truncated(folder):
    path = gz(folder, "train_images")
    raw = folder / TRAIN_IMAGES
    raw.write_bytes(gzip.decompress(path.read_bytes())[:-100])
    path.unlink()
    return raw


# (how to break a valid folder -> the file that is then named, what the message must say)
BREAKERS = {
    "gzip CRC error": (lambda f: rewrite(gz(f, "train_labels"), flip_crc), "corrupt gzip data (CRC check failed"),
    "corrupt deflate stream": (
        lambda f: rewrite(gz(f, "train_images"), lambda b: b[:40] + bytes(x ^ 0x55 for x in b[40:60]) + b[60:]),
        "corrupt gzip data",
    ),
    "truncated gzip": (lambda f: rewrite(gz(f, "train_images"), lambda b: b[: len(b) // 2]), "truncated"),
    "truncated raw file": (_raw_and_truncated, "truncated: header declares"),
    "truncated header": (lambda f: recompressed(gz(f, "test_images"), lambda b: b[:6]), "truncated inside its header"),
    "empty file": (lambda f: rewrite(gz(f, "test_labels"), lambda b: b""), "file is empty"),
    "wrong magic": (
        lambda f: recompressed(gz(f, "train_images"), lambda b: b"\x00\x00\x0d\x03" + b[4:]), "wrong magic number 0x00000d03"
    ),
    "not an IDX file": (lambda f: rewrite(gz(f, "test_images"), lambda b: b"\x89PNG\r\n\x1a\n" + b), "wrong magic number"),
    "wrong number of dimensions": (_wrong_label_ndim, "wrong dimensions: has 2, expected 1"),
    "wrong image size": (_wrong_image_side, "wrong image dimensions (27, 28)"),
    "trailing bytes": (lambda f: recompressed(gz(f, "test_labels"), lambda b: b + b"\x00"), "has bytes after"),
    "labels above 9": (_label_ten, "label 10 is out of range; labels must be 0..9"),
    "counts disagree": (_fewer_labels, "29 labels but train-images-idx3-ubyte.gz has 30 images"),
    "no images": (_no_images, "holds no images"),
}


@pytest.mark.parametrize("case", BREAKERS)
def test_each_broken_file_gets_its_own_message_naming_it(data_dir, case):
    breaker, message = BREAKERS[case]
    path = breaker(data_dir)
    with pytest.raises(DataError) as info:
        load_idx_folder(data_dir)
    text = str(info.value)
    assert text.startswith(f"{path}: "), text
    assert message in text
    assert "\n" not in text


def test_folder_problems_name_the_folder(tmp_path, data_dir, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"^{empty}: no {TRAIN_IMAGES}\\[.gz\\]; the folder must hold"):
        load_idx_folder(empty)
    with pytest.raises(DataError, match=f"^{tmp_path / 'missing'}: data folder does not exist"):
        load_idx_folder(tmp_path / "missing")
    a_file = gz(data_dir, "test_labels")
    with pytest.raises(DataError, match=f"^{a_file}: is not a folder"):
        load_idx_folder(a_file)
    shutil.rmtree(empty)
    empty.mkdir()
    (empty / TRAIN_IMAGES).mkdir()  # a folder where the file should be
    with pytest.raises(DataError, match=f"^{empty / TRAIN_IMAGES}: not a regular file"):
        read_idx(empty / TRAIN_IMAGES)


def test_an_unreadable_folder_is_not_reported_as_missing_files(data_dir, monkeypatch):
    locked = data_dir.parent / "locked"
    locked.mkdir()
    deny(monkeypatch, locked)
    try:
        with pytest.raises(DataError, match=f"^{locked}: cannot read data folder \\(Permission denied\\)"):
            load_idx_folder(locked)
    finally:
        locked.chmod(0o755)


def test_an_unreadable_file_is_named(data_dir, monkeypatch):
    path = gz(data_dir, "train_labels")
    deny(monkeypatch, path)
    try:
        with pytest.raises(DataError, match=f"^{path}: cannot read file \\(Permission denied\\)"):
            load_idx_folder(data_dir)
    finally:
        path.chmod(0o644)


def test_compression_is_recognised_by_content_not_name(tmp_path):
    labels = np.arange(20, dtype=np.uint8) % 10
    # browsers decompress MNIST downloads and keep the .gz name; the reverse happens too
    plain_named_gz = tmp_path / "labels.gz"
    plain_named_gz.write_bytes(idx_bytes(labels))
    gzip_named_plain = tmp_path / "labels"
    gzip_named_plain.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(plain_named_gz, ndim=1), labels)
    np.testing.assert_array_equal(read_idx(gzip_named_plain, ndim=1), labels)


def test_cli_reports_a_broken_data_folder_in_one_line(data_dir, tmp_path, capsys):
    rewrite(gz(data_dir, "train_labels"), flip_crc)
    code = cli.main(["train", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"jaxdigits train: error: {gz(data_dir, 'train_labels')}: corrupt gzip")
    assert not (tmp_path / "run").exists()  # nothing is created for a run that cannot start


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
def test_cli_evaluate_refuses_dev_zero_as_an_idx_file(run_dir, tmp_path, capsys):
    folder = write_idx_folder(tmp_path / "data", synthetic_dataset(20, 10), compress=False)
    (folder / TRAIN_IMAGES).unlink()
    zero = _dev_zero(folder / TRAIN_IMAGES)
    assert_cli_refuses(["evaluate", str(run_dir), "--data-dir", str(folder)], zero, "a character device", capsys)


# --- fuzzing read_idx -----------------------------------------------------------------------------


def held_bytes(data: bytes) -> int:
    """How many bytes ``data`` really holds: its length, or all that decompresses from it."""
    total, rest = 0, data
    while rest[:2] == b"\x1f\x8b":
        stream = zlib.decompressobj(wbits=31)
        try:
            total += len(stream.decompress(rest))
        except zlib.error:
            break
        if not stream.eof:
            break
        rest = stream.unused_data
    return max(total, len(data))


# The reader may hold what the file holds a few times over (the growing body, one chunk being
# decompressed), plus a fixed allowance; a reader that trusted the header's sizes would not.
MEMORY_ALLOWANCE = 1 << 20


def check_read(path: Path, data: bytes) -> None:
    """``read_idx`` returns a consistent array or raises ``DataError``; fast, with bounded memory."""
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with deadline(5):
            array = read_idx(path)
    except DataError as exc:
        assert str(exc).startswith(f"{path}: ")
        array = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= 3 * held_bytes(data) + MEMORY_ALLOWANCE, f"read_idx used {peak} bytes for {len(data)}"
    if array is not None:
        assert array.dtype == np.uint8
        assert array.size <= held_bytes(data)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=2048), compress=st.booleans())
def test_fuzz_random_bytes(tmp_path, data, compress):
    check_read(tmp_path / "fuzz", gzip.compress(data) if compress else data)


@FUZZ
@given(
    shape=st.lists(st.integers(0, 12), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    cut=st.floats(0, 1, exclude_max=True),
    compress=st.booleans(),
)
def test_fuzz_truncated_valid_files(tmp_path, shape, seed, cut, compress):
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    valid = idx_bytes(array)
    data = gzip.compress(valid) if compress else valid
    check_read(tmp_path / "fuzz", data[: int(cut * len(data))])
    # and the untruncated file reads back exactly
    (tmp_path / "whole").write_bytes(data)
    np.testing.assert_array_equal(read_idx(tmp_path / "whole"), array)


@st.composite
def idx_files(draw) -> bytes:
    """IDX bytes with random header fields: magic bytes (mostly valid), a number of dimensions,
    that many dimensions (or one more or fewer), each small or anywhere in the u32 range, then a
    body as long as the header declares, a byte more or less, or of any length."""
    valid = draw(st.integers(0, 3)) > 0
    magic = [0, 0, 8] if valid else [draw(st.sampled_from(o)) for o in ([0, 1], [0, 8], [8, 9, 0x0B, 0x0D])]
    ndim = draw(st.integers(0, 4) | st.integers(0, 255))
    count = draw(st.sampled_from([ndim, ndim, ndim, max(ndim - 1, 0), ndim + 1]))
    dims = draw(st.lists(st.integers(0, 3) | st.integers(0, 2**32 - 1), min_size=count, max_size=count))
    declared = int(np.prod(dims, dtype=object)) if dims else 0
    near = [n for n in (declared, declared, declared + 1, max(declared - 1, 0)) if n <= 4096]
    length = draw((st.sampled_from(near) if near else st.nothing()) | st.integers(0, 4096))
    body = draw(st.binary(min_size=length, max_size=length))
    return bytes([*magic, ndim]) + np.asarray(dims, dtype=">u4").tobytes() + body


@FUZZ
@given(data=idx_files(), compress=st.booleans())
def test_fuzz_random_header_fields(tmp_path, data, compress):
    check_read(tmp_path / "fuzz", gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_a_header_claiming_far_more_than_the_file_holds_costs_no_memory(tmp_path, compress):
    # 64 KiB of incompressible bytes under a header that claims 60 MB: within what a gzip file
    # of this size could hold, so only reading no more than is really there keeps memory small.
    body = np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    raw = bytes([0, 0, 8, 3]) + np.asarray([60_000, 1000, 1], dtype=">u4").tobytes() + body
    path = tmp_path / "claims"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"^{path}: truncated: header declares"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(raw) + MEMORY_ALLOWANCE


# --- the TFDS download path: a loopback mirror, offline, or without tensorflow-datasets -----------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging, and notes each path asked for in ``requested`` (if given)."""

    def __init__(self, *args, requested: list | None = None, **kwargs):
        self.requested = [] if requested is None else requested
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.requested.append(self.path.lstrip("/"))
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def idx_server(tmp_path):
    """A loopback HTTP server serving a folder of gzip IDX files, as the MNIST mirror would."""
    served = write_idx_folder(tmp_path / "mirror", synthetic_dataset(40, 10))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
    server.server_close()


def _sources(base_url: str, folder: Path, corrupt: bool | frozenset = frozenset()):
    """TFDS's URLs and checksums for the gzip IDX files of ``folder`` served at ``base_url``; the
    checksums of the files named in ``corrupt`` (of every file, with ``corrupt=True``) are wrong."""
    from tensorflow_datasets.core.download import checksums

    urls = {key: f"{base_url}{stem}.gz" for key, stem in IDX_FILES.items()}
    infos = {}
    for key, url in urls.items():
        info = checksums.compute_url_info(folder / f"{IDX_FILES[key]}.gz")
        checksum = "0" * 64 if corrupt is True or (corrupt and key in corrupt) else info.checksum
        infos[url] = checksums.UrlInfo(size=info.size, checksum=checksum, filename=info.filename)
    return urls, infos


def test_tfds_registry_names_the_mirror_and_checksums_without_tensorflow():
    import sys

    urls, infos = data_module.tfds_sources("mnist")
    assert set(urls) == set(IDX_FILES)
    assert all(url in infos and len(infos[url].checksum) == 64 for url in urls.values())
    fashion_urls, fashion_infos = data_module.tfds_sources("fashion_mnist")
    assert all(url in fashion_infos for url in fashion_urls.values())
    assert "tensorflow" not in sys.modules


def test_tfds_download_path_downloads_verifies_and_caches(idx_server, tmp_path, monkeypatch):
    base_url, served = idx_server
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.delenv("JAXDIGITS_DATA_DIR", raising=False)
    sources = _sources(base_url, served)
    monkeypatch.setattr(data_module, "tfds_sources", lambda name: sources)
    first = jd.load_mnist()
    assert first.train_images.shape == (40, 784)
    assert any((tmp_path / "tfds" / "downloads").iterdir())
    # The second load is served from TFDS's cache: the mirror can be gone.
    for path in served.iterdir():
        path.unlink()
    second = jd.load_mnist()
    np.testing.assert_array_equal(first.train_labels, second.train_labels)


def test_tfds_download_rejects_a_checksum_mismatch(idx_server, tmp_path, monkeypatch):
    base_url, served = idx_server
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data_module, "tfds_sources", lambda name: _sources(base_url, served, corrupt=True))
    with pytest.raises(jd.DataError, match="could not download mnist"):
        data_module.fetch_with_tfds("mnist")


def test_offline_download_names_data_dir(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening: refused at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    base = f"http://127.0.0.1:{closed}/"
    urls = {key: f"{base}{stem}.gz" for key, stem in IDX_FILES.items()}
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data_module, "tfds_sources", lambda name: (urls, {}))
    with pytest.raises(jd.DataError, match=r"offline, pass --data-dir DIR"):
        data_module.fetch_with_tfds("mnist")


def _closed_port() -> int:
    with socket.socket() as s:  # a loopback port with nothing listening: refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
