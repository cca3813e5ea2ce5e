"""Preprocessing: statistics from the training split, applied to both splits."""

import numpy as np
import pytest

from bayescomp.data import preprocess as preprocessing
from bayescomp.errors import ConfigError


def _raw(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_reference_mnist_subtracts_mean_training_image():
    x_train, x_test = _raw((200, 28, 28, 1), 0), _raw((50, 28, 28, 1), 1)

    train, test = preprocessing.preprocess(x_train, x_test, method="reference", family="mnist")

    assert train.dtype == test.dtype == np.float32
    assert train.shape == x_train.shape and test.shape == x_test.shape
    np.testing.assert_allclose(train.mean(axis=0, dtype=np.float64), 0.0, atol=1e-6)
    mean_image = x_train.mean(axis=0, dtype=np.float64) / 255.0
    np.testing.assert_allclose(train, x_train / 255.0 - mean_image, atol=1e-6)
    np.testing.assert_allclose(test, x_test / 255.0 - mean_image, atol=1e-6)


def test_reference_cifar_standardises_channels_with_training_statistics():
    x_train = _raw((100, 32, 32, 3), 2)
    x_train[..., 2] //= 4  # give the channels different statistics
    x_test = _raw((20, 32, 32, 3), 3)

    train, test = preprocessing.preprocess(x_train, x_test, method="reference", family="cifar")

    assert train.dtype == test.dtype == np.float32
    np.testing.assert_allclose(train.mean(axis=(0, 1, 2), dtype=np.float64), 0.0, atol=1e-6)
    np.testing.assert_allclose(train.std(axis=(0, 1, 2), dtype=np.float64), 1.0, atol=1e-5)
    scaled = x_train / 255.0
    mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))
    np.testing.assert_allclose(test, (x_test / 255.0 - mean) / std, atol=1e-5)


def test_reference_cifar_keeps_constant_channel_finite():
    x_train = _raw((10, 32, 32, 3), 4)
    x_train[..., 1] = 7
    train, test = preprocessing.preprocess(x_train, x_train[:2], method="reference",
                                           family="cifar")
    assert np.isfinite(train).all() and np.isfinite(test).all()
    np.testing.assert_allclose(train[..., 1], 0.0, atol=1e-6)


def test_none_only_scales_to_unit_interval():
    x_train, x_test = _raw((20, 28, 28, 1), 5), _raw((5, 28, 28, 1), 6)
    x_train[0, 0, 0, 0], x_train[0, 0, 1, 0] = 0, 255
    train, test = preprocessing.preprocess(x_train, x_test, method="none", family="mnist")
    assert train.dtype == np.float32
    assert train.min() == 0.0 and train.max() == 1.0
    np.testing.assert_allclose(test, x_test / 255.0, rtol=1e-6)


def test_signed_maps_pixels_to_minus_one_one_as_the_bc_tutorial():
    # Hand-computed: the BC tutorial's 2 * (x - 0.5) on ToTensor's x/255, so 0 -> -1,
    # 255 -> 1 and 51 -> 2 * 0.2 - 1 = -0.6; the same map on both splits, no statistics.
    x_train, x_test = _raw((20, 28, 28, 1), 5), _raw((5, 28, 28, 1), 6)
    x_train[0, 0, 0, 0], x_train[0, 0, 1, 0], x_train[0, 0, 2, 0] = 0, 255, 51
    train, test = preprocessing.preprocess(x_train, x_test, method="signed", family="mnist")
    assert train.dtype == np.float32 and test.dtype == np.float32
    np.testing.assert_allclose(train[0, 0, :3, 0], [-1.0, 1.0, -0.6], rtol=1e-6)
    np.testing.assert_allclose(test, 2.0 * (x_test / 255.0 - 0.5), rtol=1e-6, atol=1e-6)


def test_unknown_method_raises_config_error_listing_methods():
    with pytest.raises(ConfigError, match="unknown data.preprocess 'zca'; known methods: none, "
                                          "reference, signed"):
        preprocessing.preprocess(_raw((2, 28, 28, 1), 0), _raw((1, 28, 28, 1), 0),
                                 method="zca", family="mnist")
