"""Shared fixtures: the real data (from $JAXDIGITS_DATA_DIR), a small synthetic data set, IDX
folders of it, and finished runs on it (trained in-process or by ``python -m jaxdigits``)."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxdigits.core.config import TrainConfig
from jaxdigits.core.dataset import Dataset
from jaxdigits.data import DATA_DIR_ENV, IDX_FILES, load_idx_folder

REQUIRE_DATA_ENV = "JAXDIGITS_REQUIRE_DATA"


def real_data_dir() -> Path:
    """The MNIST folder named by $JAXDIGITS_DATA_DIR; skips (or fails, in CI) when unset."""
    folder = os.environ.get(DATA_DIR_ENV)
    if folder and Path(folder).is_dir():
        return Path(folder)
    reason = f"needs the real MNIST: set {DATA_DIR_ENV} to a folder with the four IDX files"
    if os.environ.get(REQUIRE_DATA_ENV) == "1":
        pytest.fail(reason + f" ({REQUIRE_DATA_ENV}=1 makes this a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return real_data_dir()


@pytest.fixture(scope="session")
def mnist(mnist_dir) -> Dataset:
    return load_idx_folder(mnist_dir)


@pytest.fixture(scope="session")
def fashion_mnist_dir(mnist_dir) -> Path:
    """Fashion-MNIST beside the MNIST folder (``../fashion_mnist``), if there."""
    folder = mnist_dir.parent / "fashion_mnist"
    if not folder.is_dir():
        pytest.skip(f"no Fashion-MNIST folder beside {mnist_dir}")
    return folder


def synthetic_dataset(num_train: int = 200, num_test: int = 50, seed: int = 0) -> Dataset:
    """A tiny learnable data set: each class lights its own block of pixels, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = rng.uniform(0, 0.3, (n, 784)).astype(np.float32)
        for i, label in enumerate(labels):
            images[i, label * 78 : label * 78 + 78] += 0.7
        return np.clip(images, 0, 1), labels

    return Dataset(*make(num_train), *make(num_test))


@pytest.fixture
def tiny_data() -> Dataset:
    return synthetic_dataset()


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, raw bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_folder(folder: Path, dataset: Dataset, compress: bool = True) -> Path:
    """Write a ``Dataset`` as the four standard IDX files in ``folder`` (images rounded to bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for key, stem in IDX_FILES.items():
        values = getattr(dataset, key)
        if key.endswith("images"):
            values = np.round(values.reshape(-1, 28, 28) * 255)
        write_idx(folder / f"{stem}{suffix}", values)
    return folder


@pytest.fixture
def tiny_data_dir(tmp_path) -> Path:
    """A folder holding ``synthetic_dataset()`` as the four gzip-compressed IDX files."""
    return write_idx_folder(tmp_path / "tiny_idx", synthetic_dataset())


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


# --- command-line runs on small synthetic IDX data: tests/app/test_run_folder.py, test_cli.py and
# test_training.py


EPOCHS = 6


def jaxdigits(*args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m jaxdigits ARGS`` in a subprocess; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "jaxdigits", *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """200 training and 50 test images as raw IDX files: an epoch takes milliseconds."""
    return write_idx_folder(tmp_path_factory.mktemp("small") / "data", synthetic_dataset(200, 50), compress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_dir) -> Path:
    """An uninterrupted ``EPOCHS``-epoch command-line run on ``small_dir``."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = jaxdigits("train", "--data-dir", small_dir, "--out", out, "--epochs", EPOCHS)
    assert done.returncode == 0, done.stderr
    return out


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def isolated(tmp_path_factory, small_dir):
    """A fresh ``EPOCHS``-epoch run with an empty working folder, HOME and TMPDIR: returns the
    root, the environment, the tree before the run, the run's --out folder and a copy of it."""
    root = tmp_path_factory.mktemp("isolated")
    for name in ("cwd", "home", "tmp"):
        (root / name).mkdir()
    env = {**os.environ, "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
           "XDG_CACHE_HOME": str(root / "home" / ".cache")}
    out = root / "results" / "deep" / "run"
    before = tree(root)
    done = jaxdigits("train", "--data-dir", small_dir, "--out", out, "--epochs", EPOCHS, cwd=root / "cwd", env=env)
    assert done.returncode == 0, done.stderr
    return root, env, before, out, shutil.copytree(out, tmp_path_factory.mktemp("copy") / "run")


# --- a finished run that hostile inputs are given to: tests/app/test_data.py, test_images.py and
# test_cli.py (test_checkpoint.py and test_serve.py have a run_dir fixture of their own)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-epoch run on synthetic data."""
    from jaxdigits.training import train

    out = tmp_path_factory.mktemp("hostile") / "run"
    train(TrainConfig(epochs=1), dataclasses.replace(synthetic_dataset(), name="mnist"), out_dir=out)
    return out
