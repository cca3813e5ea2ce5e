"""MNIST and Fashion-MNIST are told apart on subsets and on both splits (issue 23).

The images here are drawn to have the two properties the check measures (see
:mod:`bayescomp.data.identity`): MNIST-like digits sit inside the central 20x20 box, Fashion-like
products span the whole field. Real Fashion-MNIST subsets are tested in
``test_data_fashion_mnist.py``.
"""

import numpy as np
import pytest

from bayescomp.data import identity, load_dataset, sources
from bayescomp.errors import DataError


def _mnist_like(count, seed=0):
    """Digits: about 100 lit pixels inside the central 16x16, nothing near the border."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 6:22, 6:22] = (rng.random((count, 16, 16)) < 0.4) * 255
    return images


def _fashion_like(count, seed=0):
    """Products: a gray block spanning the full height, mean pixel about 0.29."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, :, 6:22] = rng.integers(100, 160, (count, 28, 16))
    return images


def _sandal_like(count, seed=0):
    """A dark Fashion class: thin straps across the full width, mean pixel about 0.14."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 11:16, :] = rng.integers(150, 255, (count, 5, 28))
    return images


def _save_npz(directory, name, x_train, x_test):
    np.savez(directory / f"{name}.npz", x_train=x_train, y_train=np.arange(len(x_train)) % 10,
             x_test=x_test, y_test=np.arange(len(x_test)) % 10)


def test_the_drawn_images_have_the_published_means():
    assert 0.11 < _mnist_like(200).mean() / 255 < 0.15
    assert 0.27 < _fashion_like(200).mean() / 255 < 0.31
    assert 0.11 < _sandal_like(200).mean() / 255 < 0.16


@pytest.mark.parametrize("loaded_as, images, looks_like", [
    ("mnist", _fashion_like, "fashion_mnist"),
    ("fashion_mnist", _mnist_like, "mnist"),
])
def test_a_subset_of_the_other_dataset_is_refused(tmp_path, loaded_as, images, looks_like):
    _save_npz(tmp_path, loaded_as, images(300), images(50, seed=1))
    with pytest.raises(DataError, match=rf"the {loaded_as} train split .*\(300 images\) has a mean"
                                        rf" training pixel .* looks like {looks_like} \(.*\), "
                                        rf"not {loaded_as}.*data={looks_like}"):
        load_dataset(loaded_as, data_dir=str(tmp_path))


def test_the_test_split_is_checked_too(tmp_path):
    _save_npz(tmp_path, "mnist", _mnist_like(300), _fashion_like(50))
    with pytest.raises(DataError, match=r"the mnist test split .*\(50 images\) has a mean test "
                                        r"pixel .* looks like fashion_mnist"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_each_dataset_accepts_its_own_look(tmp_path):
    _save_npz(tmp_path, "mnist", _mnist_like(300), _mnist_like(50, seed=1))
    _save_npz(tmp_path, "fashion_mnist", _fashion_like(300), _fashion_like(50, seed=1))
    assert load_dataset("mnist", data_dir=str(tmp_path)).x_train.shape[0] == 300
    assert load_dataset("fashion_mnist", data_dir=str(tmp_path)).x_test.shape[0] == 50


def test_a_dark_fashion_class_is_not_taken_for_mnist(tmp_path):
    # Its mean alone (0.14) could be MNIST's; its images reach the border like every Fashion class.
    _save_npz(tmp_path, "fashion_mnist", _sandal_like(100), _sandal_like(30, seed=1))
    load_dataset("fashion_mnist", data_dir=str(tmp_path))
    _save_npz(tmp_path, "mnist", _sandal_like(100), _sandal_like(30, seed=1))
    with pytest.raises(DataError, match="looks like fashion_mnist"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_data_that_looks_like_neither_is_not_judged(tmp_path):
    # Uniform noise (mean 0.5): neither dataset; the check only catches the look-alike mix-up.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    for name in ("mnist", "fashion_mnist"):
        _save_npz(tmp_path, name, noise, noise[:50])
        load_dataset(name, data_dir=str(tmp_path))


def test_too_small_splits_are_not_judged(tmp_path):
    count = identity.MIN_IMAGES - 1
    _save_npz(tmp_path, "mnist", _fashion_like(count), _fashion_like(count))
    load_dataset("mnist", data_dir=str(tmp_path))
    _save_npz(tmp_path, "mnist", _fashion_like(identity.MIN_IMAGES), _fashion_like(count))
    with pytest.raises(DataError, match="looks like fashion_mnist"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_only_the_look_alikes_have_signatures():
    assert {name for name, spec in sources.REGISTRY.items() if spec.signature} == {
        "mnist", "fashion_mnist"}
