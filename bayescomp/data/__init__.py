"""Datasets: finding them, reading them and preprocessing them into NHWC float32 arrays.

Usage::

    from bayescomp.data import load_dataset
    data = load_dataset("fashion_mnist")          # Debian's files, a TFDS dir, or a download
    data.x_train.shape                            # (60000, 28, 28, 1), float32
    print(data.source)                            # where it came from

Where each dataset is looked for is described in :mod:`bayescomp.data.sources`; the
preprocessing methods in :mod:`bayescomp.data.preprocess`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bayescomp.data import preprocess as _preprocess
from bayescomp.data import synthetic as _synthetic
from bayescomp.data.sources import REGISTRY, DatasetSpec, find_raw, get_spec, input_spec, names

__all__ = ["Dataset", "DatasetSpec", "REGISTRY", "input_spec", "load_dataset", "names"]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A preprocessed dataset held in memory.

    Attributes:
        name: Registry key, e.g. ``"fashion_mnist"``.
        x_train: ``float32`` training images, NHWC, shape ``(N_train, H, W, C)``, preprocessed.
        y_train: ``int32`` training labels, shape ``(N_train,)``.
        x_test: ``float32`` test images, shape ``(N_test, H, W, C)``, preprocessed the same way.
        y_test: ``int32`` test labels, shape ``(N_test,)``.
        num_classes: Labels lie in ``0 .. num_classes - 1`` (for ``image_folder``, the number
            of class folders).
        source: Where it was loaded from: a path, ``"tfds:<name> (<dir>)"`` or ``"synthetic"``.
        black_pixel: A black pixel after the same preprocessing, per channel (averaged over
            positions where the preprocessing depends on them): the fill of zero padding in
            training-time augmentation (:mod:`bayescomp.data.augment`).
        augment_by_default: Whether ``data.augment: null`` turns augmentation on (the CIFAR
            family and image folders) or off (MNIST-like data).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    black_pixel: tuple[float, ...] = ()
    augment_by_default: bool = False


def load_dataset(name: str, *, data_dir: str | None = None, tfds_data_dir: str | None = None,
                 download: bool = True, preprocess: str = "reference", seed: int = 0) -> Dataset:
    """Finds, reads and preprocesses a dataset.

    Args:
        name: A key of :data:`REGISTRY` (see :func:`names`).
        data_dir: A directory holding the data (IDX files, ``<name>.npz``, CIFAR's python
            batches, an image folder, a TFDS-prepared ``<name>/``; for ``cifar10_jpeg`` also
            the archive itself); if given, nothing else is searched. Required by
            ``image_folder``.
        tfds_data_dir: TFDS data dir to read a prepared dataset from and download into;
            defaults to ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.
        download: Let TFDS download and prepare the dataset if it is found nowhere (needs
            TensorFlow and network access).
        preprocess: ``"reference"`` or ``"none"``; see :mod:`bayescomp.data.preprocess`.
        seed: Only used by ``"synthetic"``, whose samples it determines (``data_dir`` and the
            TFDS arguments are ignored for it); real datasets are returned in stored order.

    Returns:
        The :class:`Dataset`: ``float32`` NHWC images, ``int32`` labels.

    Raises:
        ConfigError: If ``name`` or ``preprocess`` is unknown.
        DataError: If the data cannot be found (the message lists the places looked at and how
            to get it) or is corrupt.
    """
    spec = get_spec(name)
    _preprocess.check_method(preprocess)  # Before the possibly slow search.
    if spec.name.startswith("synthetic"):
        raw = _synthetic.make_synthetic(seed, image_shape=spec.image_shape)
    else:
        raw = find_raw(spec, data_dir=data_dir, tfds_data_dir=tfds_data_dir, download=download)
    x_train, x_test = _preprocess.preprocess(raw.x_train, raw.x_test, method=preprocess,
                                             family=spec.family)
    # One black image through the same preprocessing (train statistics): the padding fill.
    _, black = _preprocess.preprocess(raw.x_train, np.zeros((1, *raw.x_train.shape[1:]), np.uint8),
                                      method=preprocess, family=spec.family)
    return Dataset(name=spec.name, x_train=x_train, y_train=raw.y_train, x_test=x_test,
                   y_test=raw.y_test, num_classes=spec.num_classes or raw.num_classes, source=raw.source,
                   black_pixel=tuple(float(v) for v in black.mean(axis=(0, 1, 2))),
                   augment_by_default=spec.family == "cifar")
