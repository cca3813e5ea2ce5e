"""Turning raw ``uint8`` images into network inputs.

Methods:

``"reference"``
    As in the reference code of the papers bayescomp reproduces.

    * MNIST family (mnist, fashion_mnist, synthetic): pixels scaled to [0, 1], then the mean
      *training* image is subtracted from both splits, as in the data reader of Sparse
      Variational Dropout (Molchanov et al. 2017, ICML; github.com/bayesgroup/
      variational-dropout-sparsifies-dnn, ``data/reader.py``). Note: that reader divides by
      256, not 255; bayescomp uses 255 (see :data:`PIXEL_SCALE`), a 0.4% difference in scale.
    * CIFAR family (cifar10, cifar100): per-channel standardisation with the training set's mean
      and standard deviation. The Sparse VD reader instead ZCA-whitens CIFAR (regularisation
      1e-5, fitted on the raw 0..255 training images); ZCA is not implemented yet.

``"none"``
    Pixels scaled to [0, 1] only.

``"signed"``
    Pixels scaled to [-1, 1]: ``2 (x/255 - 1/2)``, as in the Bayesian Compression tutorial's
    ``example.py`` (Louizos & Ullrich, github.com/KarenUllrich/Tutorial_BayesianCompressionForDL,
    ``transforms.ToTensor(), lambda x: 2 * (x - 0.5)``); the preprocessing of the authors' BC-GNJ
    reference runs. Unlike ``"reference"`` it keeps the background at a constant -1 instead of
    centring each pixel, which changes the scale of the first layer's weights and hence their
    posterior-derived bit precision.

Statistics are always computed on the training split alone and applied unchanged to the test
split, so no information flows from the test set into training.
"""

from __future__ import annotations

import numpy as np

from bayescomp.errors import ConfigError

METHODS = ("none", "reference", "signed")

# Raw pixels are divided by this. (The Sparse VD MNIST reader used 256.)
PIXEL_SCALE = 255.0


def check_method(method: str) -> None:
    """Raises ConfigError unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ConfigError(f"unknown data.preprocess {method!r}; known methods: "
                          f"{', '.join(METHODS)}; set data.preprocess to one of them")


def _scaled(images: np.ndarray) -> np.ndarray:
    return np.divide(images, np.float32(PIXEL_SCALE), dtype=np.float32)


def _uint8_channel_mean_std(images: np.ndarray,
                            chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``uint8`` images, in [0, 1] pixel units.

    From each channel's histogram of the 256 pixel values, counted over chunks of pixels (one
    ``bincount`` per chunk, channel ``c`` offset to bins ``256 c ..``): exact, and several times
    faster than summing float64 copies of the images.
    """
    num_channels = images.shape[-1]
    pixels = images.reshape(-1, num_channels)
    offsets = np.arange(num_channels, dtype=np.int32) * 256
    counts = np.zeros(256 * num_channels, np.int64)
    for start in range(0, pixels.shape[0], chunk):
        bins = pixels[start:start + chunk].astype(np.int32) + offsets
        counts += np.bincount(bins.ravel(), minlength=256 * num_channels)
    probabilities = counts.reshape(num_channels, 256) / max(pixels.shape[0], 1)
    values = np.arange(256, dtype=np.float64)
    mean = probabilities @ values
    variance = np.maximum(probabilities @ np.square(values) - np.square(mean), 0.0)
    return mean / PIXEL_SCALE, np.sqrt(variance) / PIXEL_SCALE


def _channel_mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation in float64, shapes ``(C,)``.

    Accumulated over chunks of images so that no float64 copy of the whole set is made
    (CIFAR's training set is 0.6 GB in float32).
    """
    total = np.zeros(images.shape[-1], np.float64)
    total_of_squares = np.zeros(images.shape[-1], np.float64)
    for start in range(0, images.shape[0], chunk):
        block = images[start:start + chunk].astype(np.float64)
        total += block.sum(axis=(0, 1, 2))
        total_of_squares += np.square(block).sum(axis=(0, 1, 2))
    count = images.size // images.shape[-1]
    mean = total / count
    # Pixels lie in [0, 1], so E[x^2] - E[x]^2 in float64 loses nothing that matters.
    variance = np.maximum(total_of_squares / count - np.square(mean), 0.0)
    return mean, np.sqrt(variance)


def preprocess(x_train: np.ndarray, x_test: np.ndarray, *, method: str,
               family: str) -> tuple[np.ndarray, np.ndarray]:
    """Preprocesses both splits with statistics of the training split.

    Args:
        x_train: ``uint8`` training images, shape ``(N_train, H, W, C)``.
        x_test: ``uint8`` test images, shape ``(N_test, H, W, C)``.
        method: ``"reference"``, ``"signed"`` or ``"none"``; see the module docstring.
        family: ``"mnist"`` (mean-image subtraction) or ``"cifar"`` (per-channel
            standardisation); only used by ``"reference"``.

    Returns:
        ``(x_train, x_test)`` as ``float32`` arrays of the input shapes. With ``"reference"``
        the training images average to 0 (per pixel for the MNIST family, per channel with unit
        standard deviation for CIFAR), up to float32 rounding.

    Raises:
        ConfigError: If ``method`` is unknown.
    """
    check_method(method)
    train, test = _scaled(x_train), _scaled(x_test)
    if method == "signed":
        return 2.0 * train - 1.0, 2.0 * test - 1.0  # 2 (x - 1/2) on [0, 1] pixels
    if method == "none" or train.shape[0] == 0:
        return train, test
    if family == "mnist":
        # Float64 accumulation: a float32 sum over 60000 images loses about 3 digits.
        mean_image = train.mean(axis=0, dtype=np.float64).astype(np.float32)
        train -= mean_image
        test -= mean_image
        return train, test
    if family == "cifar":
        mean, std = (_uint8_channel_mean_std(x_train) if x_train.dtype == np.uint8
                     else _channel_mean_std(train))
        std = np.where(std > 0, std, 1.0)  # A constant channel is only centred.
        train -= mean.astype(np.float32)
        train /= std.astype(np.float32)
        test -= mean.astype(np.float32)
        test /= std.astype(np.float32)
        return train, test
    raise ValueError(f"unknown dataset family {family!r}")  # A registry bug, not a user error.
