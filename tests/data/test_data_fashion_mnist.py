"""The real Fashion-MNIST files of Debian's package dataset-fashion-mnist.

Skipped when the files are absent, except under CI (env CI set), which installs the package.
"""

import os

import numpy as np
import pytest

from bayescomp.data import idx, load_dataset

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def idx_paths():
    paths, reason = idx.find_idx_files(DEBIAN_DIR, idx.MNIST_IDX_FILES)
    if paths is None:
        message = (f"Fashion-MNIST not in {DEBIAN_DIR} ({reason}); "
                   "apt-get install dataset-fashion-mnist")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return paths


def test_idx_files_hold_the_published_splits(idx_paths):
    x_train, y_train = idx.read_idx_split(idx_paths.train_images, idx_paths.train_labels)
    x_test, y_test = idx.read_idx_split(idx_paths.test_images, idx_paths.test_labels)

    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int32
    # Fashion-MNIST is exactly balanced: 6000 train and 1000 test images per class.
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), np.full(10, 1000))
    assert x_train.min() == 0 and x_train.max() == 255


def test_load_dataset_finds_debian_files_and_preprocesses(idx_paths):
    data = load_dataset("fashion_mnist", download=False)

    assert data.source == DEBIAN_DIR
    assert data.name == "fashion_mnist" and data.num_classes == 10
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int32
    # "reference": the mean training image is subtracted, so each pixel averages to 0.
    np.testing.assert_allclose(data.x_train.mean(axis=0, dtype=np.float64), 0.0, atol=1e-6)
    # The test split is shifted by the same (training) mean, so it does not average to 0.
    raw_test, _ = idx.read_idx_split(idx_paths.test_images, idx_paths.test_labels)
    raw_train, _ = idx.read_idx_split(idx_paths.train_images, idx_paths.train_labels)
    mean_image = raw_train.mean(axis=0, dtype=np.float64) / 255.0
    np.testing.assert_allclose(data.x_test, raw_test / 255.0 - mean_image, atol=1e-6)


def test_fashion_mnist_files_given_as_mnist_are_refused(idx_paths):
    # The two datasets ship as identical IDX files of identical shapes; only their content
    # tells them apart (mean training pixel 0.2860 here, 0.1307 for MNIST).
    from bayescomp.errors import DataError

    with pytest.raises(DataError,
                       match=r"mean training pixel of 0\.2860.*looks like fashion_mnist"):
        load_dataset("mnist", data_dir=DEBIAN_DIR, download=False)


@pytest.fixture(scope="module")
def fashion_arrays(idx_paths):
    """``(x_train, y_train, x_test, y_test)`` of the Debian files, read once for the module."""
    return (*idx.read_idx_split(idx_paths.train_images, idx_paths.train_labels),
            *idx.read_idx_split(idx_paths.test_images, idx_paths.test_labels))


def _save_subset(directory, name, x_train, y_train, x_test, y_test):
    np.savez(directory / f"{name}.npz", x_train=x_train[..., 0], y_train=y_train,
             x_test=x_test[..., 0], y_test=y_test)


@pytest.mark.parametrize("wrong_split", ["train", "test"])
def test_a_fashion_mnist_subset_given_as_mnist_is_refused(fashion_arrays, tmp_path, wrong_split):
    # Issue 23: the check used to run only on a full 60,000-image training split.
    from bayescomp.errors import DataError

    x_train, y_train, x_test, y_test = fashion_arrays
    if wrong_split == "train":
        # (a non-empty test split: an empty one is refused first, as no test error exists)
        subset = (x_train[:500], y_train[:500], x_test[:50], y_test[:50])
    else:  # an MNIST-shaped train split that passes, and a Fashion test split that must not
        blank = x_train[:300] * 0
        blank[:, 8:20, 12:16] = 255  # a "1": mean 0.06, off the border
        subset = (blank, y_train[:300], x_test[:100], y_test[:100])
    _save_subset(tmp_path, "mnist", *subset)
    with pytest.raises(DataError, match=rf"mnist {wrong_split} split .* looks like "
                                        "fashion_mnist"):
        load_dataset("mnist", data_dir=str(tmp_path), download=False)


def test_one_dark_fashion_class_is_still_fashion_mnist(fashion_arrays, tmp_path):
    # Sandals (class 5) have a mean pixel of 0.136, inside MNIST's range; their outline reaches
    # the border like every Fashion-MNIST image, which tells them apart.
    from bayescomp.errors import DataError

    x_train, y_train = fashion_arrays[:2]
    sandals = np.flatnonzero(y_train == 5)[:200]
    subset = (x_train[sandals[:150]], y_train[sandals[:150]], x_train[sandals[150:]],
              y_train[sandals[150:]])
    _save_subset(tmp_path, "fashion_mnist", *subset)
    assert load_dataset("fashion_mnist", data_dir=str(tmp_path)).x_train.shape[0] == 150
    _save_subset(tmp_path, "mnist", *subset)
    with pytest.raises(DataError, match="looks like fashion_mnist"):
        load_dataset("mnist", data_dir=str(tmp_path))
