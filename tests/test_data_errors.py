"""Broken data files and folders: each gets its own one-line ``DataError`` naming the file.

The IDX reader is also fuzzed (random bytes, random truncations, random header fields, raw and
gzip): it returns a well-formed array or raises ``DataError``, finishes quickly, and its memory
follows the bytes the file really holds, never the sizes its header claims.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import os
import shutil
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxdigits import cli
from jaxdigits.data import IDX_FILES, load_idx_folder, read_idx
from jaxdigits.core.errors import DataError
from tests.conftest import deadline, idx_bytes, synthetic_dataset, write_idx, write_idx_folder

TRAIN_IMAGES = IDX_FILES["train_images"]
TRAIN_LABELS = IDX_FILES["train_labels"]


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


# ---------------------------------------------------------------------------------------------
# Fuzzing read_idx




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
