"""A tiny generated dataset for tests and smoke runs (no files, no network).

Ten classes of 28x28x1 ``uint8`` images, shaped like MNIST so that every MNIST model runs on
it (``synthetic``), or of 32x32x3 images shaped like CIFAR for the CIFAR models
(``synthetic_cifar``). Each class has a fixed random binary template (the same for every seed, so that the task
does not change with the seed); an image is its class template at a random brightness plus
Gaussian pixel noise. The classes are linearly separable, so even a small MLP beats chance
(10%) within a few dozen steps.
"""

from __future__ import annotations

import numpy as np

from bayescomp.data.sources import RawData

IMAGE_SHAPE = (28, 28, 1)
CIFAR_IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
NUM_TRAIN = 512
NUM_TEST = 256

# Seeds the class templates; independent of the run's seed on purpose (see module docstring).
_TEMPLATE_SEED = 20170523
_TEMPLATE_DENSITY = 0.25  # fraction of "on" pixels per template
_NOISE_STD = 0.35  # per-pixel Gaussian noise, in units of the full pixel range


def class_templates(image_shape=IMAGE_SHAPE) -> np.ndarray:
    """Returns the fixed class templates, ``float32`` in {0, 1}, shape ``(10, *image_shape)``."""
    rng = np.random.default_rng(_TEMPLATE_SEED)
    return (rng.random((NUM_CLASSES, *image_shape)) < _TEMPLATE_DENSITY).astype(np.float32)


def _sample(rng: np.random.Generator, templates: np.ndarray,
            count: int) -> tuple[np.ndarray, np.ndarray]:
    # Balanced classes, in random order.
    labels = rng.permutation(np.arange(count) % NUM_CLASSES).astype(np.int32)
    brightness = rng.uniform(0.6, 1.0, size=(count, 1, 1, 1)).astype(np.float32)
    noise = rng.normal(0.0, _NOISE_STD, size=(count, *templates.shape[1:])).astype(np.float32)
    images = np.clip(templates[labels] * brightness + noise, 0.0, 1.0)
    return np.round(images * 255.0).astype(np.uint8), labels


def make_synthetic(seed: int = 0, *, num_train: int = NUM_TRAIN,
                   num_test: int = NUM_TEST, image_shape=IMAGE_SHAPE) -> RawData:
    """Generates the synthetic dataset.

    Args:
        seed: Seeds the noise, brightness and label order; the same seed gives identical arrays.
        num_train: Number of training images.
        num_test: Number of test images.
        image_shape: ``(h, w, c)`` of the images.

    Returns:
        Raw data: ``uint8`` images of shape ``(num_train, *image_shape)`` and
        ``(num_test, *image_shape)``, ``int32`` labels in ``0..9`` (balanced), source
        ``"synthetic"``.
    """
    templates = class_templates(tuple(image_shape))
    rng = np.random.default_rng(seed)
    x_train, y_train = _sample(rng, templates, num_train)
    x_test, y_test = _sample(rng, templates, num_test)
    return RawData(x_train, y_train, x_test, y_test, source="synthetic")
