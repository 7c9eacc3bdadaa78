"""Data sets made from your own arrays (``jaxdigits.core.dataset``) are checked when made."""

from __future__ import annotations

import numpy as np
import pytest

import jaxdigits as jd
from tests.conftest import synthetic_dataset


def test_user_datasets_are_checked_when_made():
    images, labels = np.zeros((4, 9), np.float32), np.zeros(4, np.int32)
    with pytest.raises(jd.DataError, match="expected floats"):
        jd.Dataset(images.astype(np.uint8), labels, images, labels)
    with pytest.raises(jd.DataError, match=r"expected \(4,\)"):
        jd.Dataset(images, labels[:, None], images, labels)
    with pytest.raises(jd.DataError, match="same input size"):
        jd.Dataset(images, labels, images[:, :5], labels)
    with pytest.raises(jd.DataError, match="labels must lie in 0..2"):
        jd.Dataset(images, labels, images, labels + 3, num_classes=3)


def test_the_split_is_the_last_n_training_images_and_disjoint_from_training():
    SPLIT_DATA = synthetic_dataset(300, 80)
    split = SPLIT_DATA.held_out(100)
    np.testing.assert_array_equal(split.train_images, SPLIT_DATA.train_images[:200])
    np.testing.assert_array_equal(split.validation_images, SPLIT_DATA.train_images[200:])
    np.testing.assert_array_equal(split.validation_labels, SPLIT_DATA.train_labels[200:])
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    assert not rows(split.train_images) & rows(split.validation_images)
    assert SPLIT_DATA.held_out(0) is SPLIT_DATA and split.describe()["validation_examples"] == 100


def test_labels_that_leave_classes_unused_are_named_in_a_warning():
    import warnings

    images, labels = np.zeros((6, 4), np.float32), np.array([3, 5, 8, 3, 5, 8], np.int32)
    with pytest.warns(jd.DataWarning, match=r"classes 0, 1, 2, 4, 6, 7 of 0..8 never occur, so the network gets 9 outputs; relabel to 0..2"):
        data = jd.Dataset(images, labels, images, labels, name="3-5-8")
    assert data.num_classes == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jd.Dataset(images, labels, images, labels, num_classes=9)  # said on purpose: no warning
        jd.Dataset(images, np.unique(labels, return_inverse=True)[1].astype(np.int32), images, labels % 3)
