"""A data set as arrays: train and test splits, checked once where they enter.

``Dataset`` is what every training and evaluation takes. Any arrays of its form make one; the
application shell's ``jaxdigits.data`` reads MNIST-style files into it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Iterable

import numpy as np

from jaxdigits.core.errors import ConfigError, DataError

# The datasets ``load_mnist`` knows by name; your own arrays may carry any name.
DATASETS = ("mnist", "fashion_mnist")
# MNIST's images are MNIST_SIDE x MNIST_SIDE pixels: 784 inputs.
MNIST_SIDE = 28


class DataWarning(UserWarning):
    """Data that loads but is not what its name says, or looks wrong."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits, and optionally a validation split: images ``(N, inputs) float``
    (MNIST: ``(N, 784) float32`` in [0, 1]) and labels ``(N,) int32`` in ``0..num_classes-1``;
    ``name`` is recorded with every run.

    Any arrays of this form make a dataset: images of shape ``(N, H, W)`` are flattened, and
    ``num_classes`` defaults to the largest label + 1. Shapes, dtypes and labels are checked
    here, with one clear ``DataError`` for a problem. Iterating gives the train and test arrays.
    ``held_out(n)`` makes the last ``n`` training images a validation split, as the lesson's
    loader does (50,000 / 10,000); your own validation arrays may be given instead.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    name: str = "custom"
    num_classes: int | None = None
    validation_images: np.ndarray | None = None
    validation_labels: np.ndarray | None = None

    def __post_init__(self):
        if (self.validation_images is None) != (self.validation_labels is None):
            raise DataError("give validation_images and validation_labels together, or neither")
        splits = ("train", "test") + (("validation",) if self.validation_images is not None else ())
        arrays = {}
        for split in splits:
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = _checked_split(
                split, getattr(self, f"{split}_images"), getattr(self, f"{split}_labels"))
        if len(arrays["train_images"]) == 0:
            raise DataError("the training split holds no images")
        for split in splits[1:]:
            if arrays[f"{split}_images"].shape[1] != arrays["train_images"].shape[1]:
                raise DataError(f"train images have {arrays['train_images'].shape[1]} inputs, {split} images "
                                f"{arrays[f'{split}_images'].shape[1]}; every split needs the same input size")
        beyond = arrays["test_labels"][arrays["test_labels"] > arrays["train_labels"].max()]
        if self.num_classes is None and len(beyond):
            warnings.warn(f"test_labels: classes up to {int(beyond.max())} lie beyond every training class "
                          f"(up to {int(arrays['train_labels'].max())}); pass num_classes= to say how many there are",
                          DataWarning, stacklevel=3)
        labels = np.concatenate([arrays[f"{split}_labels"] for split in splits])
        classes = self.num_classes if self.num_classes is not None else int(labels.max()) + 1
        if int(labels.min()) < 0 or int(labels.max()) >= classes or classes < 2:
            raise DataError(f"labels must lie in 0..{classes - 1} with at least 2 classes; found {labels.min()}..{labels.max()}")
        if self.num_classes is None:
            _warn_missing_classes(arrays["train_labels"], classes)
        for key, value in arrays.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "num_classes", int(classes))

    def __iter__(self):
        return iter((self.train_images, self.train_labels, self.test_images, self.test_labels))

    @property
    def inputs(self) -> int:
        """The input size (784 for MNIST)."""
        return int(self.train_images.shape[1])

    @property
    def has_validation(self) -> bool:
        return self.validation_images is not None

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> "Dataset":
        """The first ``num_train`` training and ``num_test`` test examples (``None`` keeps all)."""
        return dataclasses.replace(
            self, train_images=self.train_images[:num_train], train_labels=self.train_labels[:num_train],
            test_images=self.test_images[:num_test], test_labels=self.test_labels[:num_test],
        )

    def held_out(self, count: int) -> "Dataset":
        """The last ``count`` training examples as the validation split, never trained on; the
        first ``N - count`` remain the training split. ``count=0`` returns the dataset as it is."""
        if count == 0:
            return self
        if self.has_validation:
            raise ConfigError(f"validation {count}: this dataset has validation arrays of its own; use validation 0")
        if not 0 < count < len(self.train_images):
            raise ConfigError(f"validation {count}: hold out fewer than the {len(self.train_images)} training images")
        keep = len(self.train_images) - count
        return dataclasses.replace(self, train_images=self.train_images[:keep], train_labels=self.train_labels[:keep],
                                   validation_images=self.train_images[keep:], validation_labels=self.train_labels[keep:])

    def describe(self) -> dict:
        """Name, sizes and SHA-256 of the arrays: recorded with a run, checked on resume."""
        validation = (self.validation_images, self.validation_labels) if self.has_validation else ()
        return {
            "name": self.name, "inputs": self.inputs, "classes": self.num_classes,
            "train_examples": int(len(self.train_images)), "test_examples": int(len(self.test_images)),
            **({"validation_examples": int(len(self.validation_images))} if self.has_validation else {}),
            "sha256": sha256_arrays((*self, *validation)),
        }


def _warn_missing_classes(train_labels: np.ndarray, classes: int) -> None:
    """Say so when labels such as ``{3, 5, 8}`` leave classes unused: the network would get
    ``max + 1`` outputs, most of them for classes no image has."""
    missing = np.setdiff1d(np.arange(classes), train_labels)
    if len(missing):
        shown = ", ".join(map(str, missing[:8].tolist())) + (", ..." if len(missing) > 8 else "")
        warnings.warn(f"train_labels: classes {shown} of 0..{classes - 1} never occur, so the network gets {classes} "
                      f"outputs; relabel to 0..{classes - len(missing) - 1} (np.unique(labels, return_inverse=True)) "
                      "or pass num_classes= to keep them", DataWarning, stacklevel=4)


def _checked_split(split: str, images, labels) -> tuple[np.ndarray, np.ndarray]:
    """One split's images ``(N, inputs)`` floats and labels ``(N,) int32``, or a ``DataError``."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim > 2:
        images = images.reshape(len(images), -1)
    if images.ndim != 2:
        raise DataError(f"{split}_images: shape {images.shape}, expected (N, inputs)")
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{split}_images: dtype {images.dtype}, expected floats (e.g. uint8 pixels / 255)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{split}_labels: shape {labels.shape}, expected ({len(images)},): one class per image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{split}_labels: dtype {labels.dtype}, expected integer classes")
    if not np.isfinite(images).all():
        raise DataError(f"{split}_images: hold NaN or infinite values; every pixel must be a finite number")
    return images, labels.astype(np.int32, copy=False)


def sha256_arrays(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 over arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}:{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()
