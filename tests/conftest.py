"""Shared fixtures: the real data (from $JAXDIGITS_DATA_DIR) and a small synthetic data set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from jaxdigits.data import DATA_DIR_ENV, Dataset, load_idx_folder

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
