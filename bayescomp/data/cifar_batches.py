"""The official CIFAR-10 and CIFAR-100 "python version" batches, read without running them.

Krizhevsky (2009, "Learning Multiple Layers of Features from Tiny Images") distributes CIFAR as
``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/
cifar.html), which unpack to::

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch   (10,000 images each)
    cifar-100-python/train, test                                   (50,000 and 10,000 images)

Each file is a Python 2 pickle of a dict: ``data`` is a ``uint8`` numpy array of shape
``(N, 3072)``, one row per image holding the 1024 red, then green, then blue values of the
32x32 image in row-major order; ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100) is a list
of ``N`` ints. The page's own reader is ``pickle.load(fo, encoding='bytes')``.

A pickle is a program: loading one with :mod:`pickle` may call any importable function, so a
file that only claims to be a CIFAR batch could run code. These files are read with
:class:`RestrictedUnpickler`, whose ``find_class`` resolves exactly the three globals a pickled
numpy array needs (the array reconstructor, ``numpy.ndarray`` and ``numpy.dtype``) and refuses
everything else; dicts, lists, ints and strings are pickle opcodes that import nothing. What it
returns is then checked (types, shapes, dtypes, label ranges), and every problem ends in one
:class:`~bayescomp.errors.DataError` naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
import typing

import numpy as np
from numpy._core.multiarray import _reconstruct  # numpy >= 2; numpy.core in numpy 1

from bayescomp.errors import DataError

_HOME_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
_IMAGE_SHAPE_CHW = (3, 32, 32)
_ROW_LENGTH = 3 * 32 * 32


class PythonBatches(typing.NamedTuple):
    """Where the batches of one dataset are and what they hold.

    Attributes:
        directory: The directory the official archive unpacks to.
        archive: The official archive's file name, for messages.
        train_files: Training batch files, concatenated in this order.
        test_files: Test batch files.
        label_key: The dict key of the labels used (CIFAR-100: the 100 fine labels).
    """

    directory: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str


CIFAR10_BATCHES = PythonBatches(
    directory="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{index}" for index in range(1, 6)),
    test_files=("test_batch",), label_key="labels")

CIFAR100_BATCHES = PythonBatches(
    directory="cifar-100-python", archive="cifar-100-python.tar.gz",
    train_files=("train",), test_files=("test",), label_key="fine_labels")


#: The only globals a batch may name, as (module, name) -> object. The official files were
#: written by Python 2's numpy as ``numpy.core.multiarray._reconstruct``; numpy 2 writes
#: ``numpy._core.multiarray._reconstruct`` (protocols 2 to 4).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global that :class:`RestrictedUnpickler` does not allow."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build plain containers and numpy arrays, and call nothing else.

    Every function or class a pickle wants to call goes through ``find_class`` (the pickle
    documentation's "Restricting Globals"); only :data:`_ALLOWED_GLOBALS` pass. ``persistent_load``
    keeps the base class's refusal.
    """

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise RefusedGlobal(f"{module}.{name}")
        return allowed


def load_batch(path: str) -> dict:
    """Unpickles one batch file with :class:`RestrictedUnpickler`.

    Args:
        path: The file.

    Returns:
        The unpickled dict, with ``bytes`` keys decoded to ``str``.

    Raises:
        DataError: The file cannot be read, is not a pickle, is truncated, names a global other
            than numpy's array reconstruction, or does not hold a dict.
    """
    redo = f"download {os.path.basename(path)}'s archive again from {_HOME_PAGE} and unpack it"
    try:
        with open(path, "rb") as file:
            content = file.read()
    except OSError as error:
        raise DataError(f"cannot read CIFAR batch {path}: {error.strerror or error}; check that "
                        "it exists and is readable") from error
    try:
        # encoding="bytes": Python 2 str objects (keys, the arrays' raw data) come back as bytes.
        loaded = RestrictedUnpickler(io.BytesIO(content), encoding="bytes").load()
    except RefusedGlobal as error:
        raise DataError(f"CIFAR batch {path} asks to call {error}, which no CIFAR batch does; it "
                        f"was not loaded (it may have been tampered with); {redo}") from None
    except Exception as error:  # Any failure inside a pickle is the file's fault; say which.
        truncated = isinstance(error, EOFError) or "truncated" in str(error)
        problem = ("is truncated" if truncated
                   else f"is not a valid pickle ({type(error).__name__}: {error})")
        raise DataError(f"CIFAR batch {path} {problem}; {redo}") from None
    if not isinstance(loaded, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(loaded).__name__}, not the dict of a "
                        f"CIFAR batch; {redo}")
    return {key.decode("latin-1") if isinstance(key, bytes) else key: value
            for key, value in loaded.items()}


def read_batch(path: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads one batch file into images and labels.

    Args:
        path: The batch file.
        label_key: ``"labels"`` or ``"fine_labels"``.
        num_classes: Labels must lie in ``0 .. num_classes - 1``.

    Returns:
        ``(images, labels)``: ``uint8`` images of shape ``(N, 32, 32, 3)`` (NHWC) and ``int32``
        labels of shape ``(N,)``.

    Raises:
        DataError: See :func:`load_batch`; also a missing key, wrong shapes or dtypes, or labels
            out of range.
    """
    batch = load_batch(path)
    redo = f"download {os.path.basename(path)}'s archive again from {_HOME_PAGE} and unpack it"
    missing = [key for key in ("data", label_key) if key not in batch]
    if missing:
        keys = ", ".join(sorted(map(str, batch))) or "nothing"
        raise DataError(f"CIFAR batch {path} lacks {' and '.join(missing)} (it holds {keys}); "
                        f"{redo}")
    data = batch["data"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != _ROW_LENGTH):
        found = (f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                 else f"a {type(data).__name__}")
        raise DataError(f"CIFAR batch {path} has {found} as data; expected uint8 of shape "
                        f"(N, {_ROW_LENGTH}); {redo}")
    try:
        labels = np.asarray(batch[label_key])
    except (TypeError, ValueError) as error:
        raise DataError(f"CIFAR batch {path} has {label_key} that are not a list of ints "
                        f"({error}); {redo}") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"CIFAR batch {path} has {label_key} of shape {labels.shape} and type "
                        f"{labels.dtype}; expected a list of ints; {redo}")
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"CIFAR batch {path} has {data.shape[0]} images but {labels.shape[0]} "
                        f"{label_key}; {redo}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"CIFAR batch {path} has {label_key} in [{labels.min()}, "
                        f"{labels.max()}]; expected 0..{num_classes - 1}; {redo}")
    # Rows are channel-major (all red, then green, then blue); bayescomp is NHWC.
    images = data.reshape(data.shape[0], *_IMAGE_SHAPE_CHW).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def find_batches(directory: str, batches: PythonBatches) -> tuple[dict[str, list[str]] | None,
                                                                  str]:
    """Looks for every batch file in ``directory``.

    Returns:
        ``({"train": paths, "test": paths}, "")`` when all exist, else ``(None, reason)``.
    """
    if not os.path.isdir(directory):
        return None, "no such directory"
    names = (*batches.train_files, *batches.test_files)
    missing = [name for name in names if not os.path.isfile(os.path.join(directory, name))]
    if len(missing) == len(names):
        return None, "no CIFAR python batches"
    if missing:
        return None, ("incomplete CIFAR python batches, missing " + ", ".join(missing)
                      + f" (unpack {batches.archive} again)")
    return {"train": [os.path.join(directory, name) for name in batches.train_files],
            "test": [os.path.join(directory, name) for name in batches.test_files]}, ""


def read_batches(paths: dict[str, list[str]], batches: PythonBatches,
                 num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads the files :func:`find_batches` found into ``(x_train, y_train, x_test, y_test)``."""
    arrays = []
    for split in ("train", "test"):
        parts = [read_batch(path, batches.label_key, num_classes) for path in paths[split]]
        arrays += [np.concatenate([images for images, _ in parts]),
                   np.concatenate([labels for _, labels in parts])]
    return tuple(arrays)
