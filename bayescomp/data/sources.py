"""Where datasets come from: the registry and the search for raw data.

A dataset is looked for, in this order:

1. ``data_dir``, if given. It replaces the places below: if the data is not in it, loading fails
   (a path the user typed that does not hold the data is a mistake to report, not to work
   around). Accepted inside it: the four MNIST-style IDX files (each raw or ``.gz``) directly or
   in a ``<name>/`` (or ``fashion-mnist/``-style) subdirectory; a ``<name>.npz`` with uint8
   ``x_train, x_test`` and integer ``y_train, y_test``; CIFAR's official python batches
   (``cifar-10-batches-py/``, ``cifar-100-python/``, or ``data_dir`` itself being that folder;
   :mod:`bayescomp.data.cifar_batches`); an image folder ``train/<class>/``, ``test/<class>/``
   or a tar archive of one (:mod:`bayescomp.data.image_folder`) for the datasets read from image
   files; or a TFDS data dir holding a prepared ``<name>/<version>/`` (``data_dir`` may also be
   that ``<name>/`` or ``<version>/`` itself). For a dataset with an archive (``cifar10_jpeg``),
   ``data_dir`` may also be the archive file.
2. The dataset's standard local directories (:attr:`DatasetSpec.standard_dirs`, e.g. Debian's
   ``/usr/share/datasets/fashion-mnist/`` from the package ``dataset-fashion-mnist``, or
   ``~/data`` for ``cifar10_jpeg``).
3. A TFDS data dir (``tfds_data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``)
   holding an already prepared dataset, read without TensorFlow through TFDS's random-access
   data sources.
4. A TFDS download (``download=True``). TFDS needs TensorFlow to prepare the image datasets
   (it encodes PNGs with it), so this step is skipped when TensorFlow is not installed.

``image_folder`` is only ever read from ``data_dir``, which it requires.

``cifar10_jpeg`` (CIFAR-10 re-encoded as JPEG, shipped as ``cifar10-jpeg.tar.gz``) is read
straight from the archive rather than asking users to unpack it first: one step fewer, 60,000
small files never land on a disk, and since nothing is extracted, no member name can write
anywhere (members are still checked, :func:`bayescomp.data.image_folder.read_archive`). The
archive is streamed once and the decoded arrays cached, so later runs read one ``.npz``. An
unpacked ``cifar10-jpeg/`` tree is accepted too and gives the same arrays.

If all fail, one :class:`~bayescomp.errors.DataError` lists every place looked at, why each
failed, and how to get the data. IDX, ``.npz``, CIFAR batch or image files that are found but
corrupt raise at once: silently falling back to another copy would hide the problem. A
prepared TFDS dataset that TFDS cannot read is only reported as that place's reason, since the
cause is often the environment (e.g. a TFRecord dataset without TensorFlow) rather than the
files.

Raw data is returned as ``uint8`` images, NHWC, and ``int32`` labels; preprocessing is separate
(:mod:`bayescomp.data.preprocess`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import re
import typing
import zipfile

import numpy as np

from bayescomp.data import cifar_batches, identity, idx, image_folder
from bayescomp.errors import ConfigError, DataError, unknown_name_error


class ArchiveLayout(typing.NamedTuple):
    """A dataset distributed as one tar archive of an image folder.

    Attributes:
        file_name: The archive's file name, looked for in ``data_dir`` and the standard places.
        top: The folder all its members lie in (``<top>/train/<class>/...``); an unpacked copy
            is accepted as ``<dir>/<top>/``.
    """

    file_name: str
    top: str


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What bayescomp knows about one dataset.

    Attributes:
        name: Registry key; equal to the TFDS name for the datasets TFDS has.
        description: One line, with the reference.
        image_shape: ``(H, W, C)`` of one image, or ``None`` when the data says
            (``image_folder``).
        num_classes: Number of label values ``0 .. num_classes - 1``, or ``None`` when the data
            says (``image_folder``: the number of class folders).
        family: ``"mnist"`` or ``"cifar"``; selects the "reference" preprocessing (image folders
            are standardised per channel, like CIFAR).
        tfds_name: TFDS dataset name, or ``None`` if TFDS does not provide it.
        idx_files: The IDX file names if the dataset is distributed as IDX files.
        python_batches: The official CIFAR python batches, if the dataset has them.
        image_files: Whether the dataset is read from an image folder (or an archive of one).
        archive: The tar archive the dataset is distributed as, if any (``image_files`` only).
        class_names: The class folder names in label order, where they are known; an image
            folder with other classes is refused.
        split_sizes: ``(N_train, N_test)`` where the dataset has fixed sizes that an image
            folder must match (a partial unpacking is refused instead of trained on).
        standard_dirs: Local directories where a system package (or this project's machines)
            put the data, checked in order; ``~`` is expanded.
        how_to_get: Ways to obtain the data, shown when it cannot be found.
        signature: What its images look like (:mod:`bayescomp.data.identity`), for datasets
            that have a look-alike: MNIST and Fashion-MNIST ship as identical IDX files of
            identical shapes, so a ``data.dir`` holding the other one would otherwise load
            silently and be reported (and tabled against published numbers) under the wrong
            name.
    """

    name: str
    description: str
    image_shape: tuple[int, int, int] | None
    num_classes: int | None
    family: str
    tfds_name: str | None = None
    idx_files: idx.IdxFiles | None = None
    python_batches: cifar_batches.PythonBatches | None = None
    image_files: bool = False
    archive: ArchiveLayout | None = None
    class_names: tuple[str, ...] | None = None
    split_sizes: tuple[int, int] | None = None
    standard_dirs: tuple[str, ...] = ()
    how_to_get: tuple[str, ...] = ()
    signature: identity.Signature | None = None


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _tfds_hint(name: str) -> str:
    return (f"or `pip install tensorflow` and run once with network access so TFDS can download "
            f"and prepare {name!r} (later runs need neither)")


REGISTRY: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        description="MNIST handwritten digits (LeCun et al. 1998)",
        image_shape=(28, 28, 1),
        num_classes=10,
        family="mnist",
        tfds_name="mnist",
        idx_files=idx.MNIST_IDX_FILES,
        standard_dirs=("/usr/share/datasets/mnist",),
        # Not measured here (no MNIST on these machines): the full training split's 0.1307,
        # widened for class mixtures (a "1" is thin, a "0" heavy); digits are centred in a
        # 20x20 box, so few reach the outer ring (see bayescomp.data.identity).
        signature=identity.Signature(pixel_mean=(0.04, 0.22), ring_fraction=(0.0, 0.5)),
        how_to_get=(
            "put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory and pass "
            "data.dir=/that/directory",
            _tfds_hint("mnist"),
        ),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        description="Fashion-MNIST clothing images (Xiao et al. 2017, arXiv:1708.07747)",
        image_shape=(28, 28, 1),
        num_classes=10,
        family="mnist",
        tfds_name="fashion_mnist",
        idx_files=idx.MNIST_IDX_FILES,
        standard_dirs=("/usr/share/datasets/fashion-mnist",),
        # Measured on the Debian files: class means 0.136 (sandal) .. 0.391 (coat), 99.97 % of
        # the images reach the outer ring (>= 99.8 % in every class).
        signature=identity.Signature(pixel_mean=(0.12, 0.41), ring_fraction=(0.9, 1.0)),
        how_to_get=(
            "on Debian/Ubuntu `sudo apt-get install dataset-fashion-mnist` (installs the IDX "
            "files in /usr/share/datasets/fashion-mnist/)",
            "or put the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a directory and pass "
            "data.dir=/that/directory",
            _tfds_hint("fashion_mnist"),
        ),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        description="CIFAR-10 (Krizhevsky 2009)",
        image_shape=(32, 32, 3),
        num_classes=10,
        family="cifar",
        tfds_name="cifar10",
        python_batches=cifar_batches.CIFAR10_BATCHES,
        how_to_get=(
            "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
            "unpack it into a directory (it makes cifar-10-batches-py/) and pass "
            "data.dir=/that/directory",
            "or save the arrays as cifar10.npz (uint8 x_train (50000, 32, 32, 3), y_train, "
            "x_test, y_test) in a directory and pass data.dir=/that/directory",
            _tfds_hint("cifar10"),
        ),
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        description="CIFAR-100, 100 fine labels (Krizhevsky 2009)",
        image_shape=(32, 32, 3),
        num_classes=100,
        family="cifar",
        tfds_name="cifar100",
        python_batches=cifar_batches.CIFAR100_BATCHES,
        how_to_get=(
            "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
            "unpack it into a directory (it makes cifar-100-python/) and pass "
            "data.dir=/that/directory",
            "or save the arrays as cifar100.npz (uint8 x_train (50000, 32, 32, 3), fine labels "
            "y_train, x_test, y_test) in a directory and pass data.dir=/that/directory",
            _tfds_hint("cifar100"),
        ),
    ),
    "cifar10_jpeg": DatasetSpec(
        name="cifar10_jpeg",
        description=("CIFAR-10 (Krizhevsky 2009) re-encoded as JPEG at quality 75: not CIFAR-10; "
                     "about a point of accuracy lower"),
        image_shape=(32, 32, 3),
        num_classes=10,
        family="cifar",
        image_files=True,
        archive=ArchiveLayout(file_name="cifar10-jpeg.tar.gz", top="cifar10-jpeg"),
        class_names=CIFAR10_CLASSES,
        split_sizes=(50_000, 10_000),
        standard_dirs=("~/data",),
        how_to_get=(
            "pass data.dir=/dir/with/cifar10-jpeg.tar.gz (or the archive's own path, or a "
            "directory where it is unpacked: cifar10-jpeg/train/<class>/*.jpg), or put the "
            "archive in ~/data/",
        ),
    ),
    "image_folder": DatasetSpec(
        name="image_folder",
        description="your images: data.dir/train/<class>/*.png|jpg and data.dir/test/<class>/*",
        image_shape=None,
        num_classes=None,
        family="cifar",
        image_files=True,
        how_to_get=(
            "put the images in train/<class>/ and test/<class>/ folders (PNG or JPEG, all of "
            "one size) and pass data.dir=/the/folder/holding/train/and/test",
        ),
    ),
    "synthetic": DatasetSpec(
        name="synthetic",
        description="tiny generated 10-class dataset for tests and smoke runs",
        image_shape=(28, 28, 1),
        num_classes=10,
        family="mnist",
    ),
    "synthetic_cifar": DatasetSpec(
        name="synthetic_cifar",
        description="tiny generated 10-class 32x32x3 dataset for smoke runs of CIFAR models",
        image_shape=(32, 32, 3),
        num_classes=10,
        family="cifar",
    ),
}


def names() -> list[str]:
    """Returns the registered dataset names, sorted."""
    return sorted(REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """Returns the registry entry of ``name``; raises ConfigError listing the names if unknown."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_name_error("dataset", name, REGISTRY) from None


@dataclasses.dataclass(frozen=True)
class RawData:
    """A dataset before preprocessing.

    Attributes:
        x_train: ``uint8`` images, shape ``(N_train, H, W, C)``.
        y_train: ``int32`` labels, shape ``(N_train,)``.
        x_test: ``uint8`` images, shape ``(N_test, H, W, C)``.
        y_test: ``int32`` labels, shape ``(N_test,)``.
        source: Where it was read from, for humans.
        num_classes: Labels lie in ``0 .. num_classes - 1`` (the spec's, or the number of class
            folders).
        class_names: The class folder names in label order, for data read from image files.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None


def default_tfds_data_dir(tfds_data_dir: str | None = None) -> str:
    """Returns ``tfds_data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    chosen = tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(os.fspath(chosen))


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported (TFDS needs it to prepare image datasets)."""
    return importlib.util.find_spec("tensorflow") is not None


# --------------------------------------------------------------------------------------------
# Validation shared by all readers


def _validated(spec: DatasetSpec, x_train, y_train, x_test, y_test, source: str,
               class_names: tuple[str, ...] | None = None) -> RawData:
    """Checks raw arrays against ``spec`` and returns them as :class:`RawData`.

    Images may come as ``(N, H, W)`` when ``C == 1``; labels may come as ``(N, 1)``. Where
    ``spec`` leaves the image shape or the number of classes open, the training images and
    ``class_names`` set them.
    """
    image_shape = spec.image_shape
    num_classes = spec.num_classes if spec.num_classes is not None else len(class_names or ())
    if spec.class_names is not None and class_names is not None \
            and tuple(class_names) != spec.class_names:
        raise DataError(f"{spec.name} from {source} has the classes {', '.join(class_names)}; "
                        f"expected {', '.join(spec.class_names)}. Point data.dir at the "
                        f"{spec.name} data, or load your own folder as data=image_folder")
    splits = {}
    for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8:
            raise DataError(f"{spec.name} x_{split} from {source} has dtype {images.dtype}; "
                            "expected uint8 pixel values 0..255 (store the raw images: bayescomp "
                            "preprocesses them itself)")
        if images.ndim == 3 and (image_shape or (0, 0, 1))[2] == 1:
            images = images[..., np.newaxis]
        if image_shape is None and images.ndim == 4:
            image_shape = images.shape[1:]  # The training split's, which the test split must have.
        if images.ndim != 4 or images.shape[1:] != tuple(image_shape):
            raise DataError(f"{spec.name} x_{split} from {source} has shape {images.shape}; "
                            f"expected (N, {', '.join(map(str, image_shape or ('H', 'W', 'C')))})"
                            " (NHWC)")
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{spec.name} y_{split} from {source} is a {labels.ndim}-d "
                            f"{labels.dtype} array; expected integer class labels of shape (N,)")
        if images.shape[0] == 0:
            # Refused here rather than after a training epoch: no step (train) or no test error
            # (test) can be computed from an empty split.
            raise DataError(f"{spec.name} from {source} holds no {split} images; a run needs both "
                            "a training and a test split, so point data.dir at complete data")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{spec.name} from {source} has {images.shape[0]} {split} images but "
                            f"{labels.shape[0]} {split} labels; the arrays do not belong together")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{spec.name} y_{split} from {source} has labels in "
                            f"[{labels.min()}, {labels.max()}]; expected 0..{num_classes - 1}")
        splits[split] = (images, labels.astype(np.int32))
    if spec.split_sizes is not None:
        found = (splits["train"][0].shape[0], splits["test"][0].shape[0])
        if found != tuple(spec.split_sizes):
            raise DataError(f"{spec.name} from {source} has {found[0]} training and {found[1]} "
                            f"test images; the dataset has {spec.split_sizes[0]} and "
                            f"{spec.split_sizes[1]}. It is incomplete (a partial copy or "
                            "unpacking?): copy or unpack it again")
    signatures = {other.name: other.signature for other in REGISTRY.values()
                  if other.signature is not None}
    for split in ("train", "test"):
        identity.check(spec.name, signatures, split, splits[split][0], source)
    return RawData(*splits["train"], *splits["test"], source=source, num_classes=num_classes,
                   class_names=None if class_names is None else tuple(class_names))


# --------------------------------------------------------------------------------------------
# Readers: each returns (RawData or None, reason it found nothing). Corrupt data raises.


def _from_idx_dir(spec: DatasetSpec, directory: str) -> tuple[RawData | None, str]:
    if spec.idx_files is None:
        return None, "not distributed as IDX files"
    if not os.path.isdir(directory):
        return None, "no such directory"
    paths, reason = idx.find_idx_files(directory, spec.idx_files)
    if paths is None:
        return None, reason
    x_train, y_train = idx.read_idx_split(paths.train_images, paths.train_labels)
    x_test, y_test = idx.read_idx_split(paths.test_images, paths.test_labels)
    return _validated(spec, x_train, y_train, x_test, y_test, source=directory), ""


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _from_npz(spec: DatasetSpec, path: str) -> tuple[RawData | None, str]:
    if not os.path.isfile(path):
        return None, "no such file"
    try:
        # allow_pickle=False: an .npz must only hold plain arrays, never executable pickles.
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _NPZ_KEYS if key not in archive.files]
            if missing:
                raise DataError(f"{path} lacks the arrays {', '.join(missing)} (it holds "
                                f"{', '.join(archive.files) or 'nothing'}); save x_train, "
                                "y_train, x_test, y_test with numpy.savez")
            arrays = [archive[key] for key in _NPZ_KEYS]
    except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as error:
        # MemoryError: a damaged or hostile .npy header can declare any shape.
        raise DataError(f"cannot read {path} as an .npz archive of plain arrays ({error or type(error).__name__}); "
                        "write it again with numpy.savez(path, x_train=..., y_train=..., "
                        "x_test=..., y_test=...)") from error
    return _validated(spec, *arrays, source=path), ""


def _from_python_batches(spec: DatasetSpec, directory: str) -> tuple[RawData | None, str]:
    """Reads CIFAR's official python batches in ``directory`` (:mod:`.cifar_batches`)."""
    paths, reason = cifar_batches.find_batches(directory, spec.python_batches)
    if paths is None:
        return None, reason
    arrays = cifar_batches.read_batches(paths, spec.python_batches, spec.num_classes)
    return _validated(spec, *arrays, source=directory), ""


def _from_image_folder(spec: DatasetSpec, directory: str) -> tuple[RawData | None, str]:
    """Reads ``directory/{train,test}/<class>/*`` (:mod:`.image_folder`)."""
    found, reason = image_folder.is_image_folder(directory)
    if not found:
        return None, reason
    data = image_folder.read_folder(directory)
    return _validated(spec, data.x_train, data.y_train, data.x_test, data.y_test,
                      source=directory, class_names=data.class_names), ""


def _from_archive(spec: DatasetSpec, path: str) -> tuple[RawData | None, str]:
    """Reads the dataset's tar archive without unpacking it (:mod:`.image_folder`)."""
    if not os.path.isfile(path):
        return None, "no such file"
    data = image_folder.read_archive(path, spec.archive.top)
    return _validated(spec, data.x_train, data.y_train, data.x_test, data.y_test,
                      source=path, class_names=data.class_names), ""


_VERSION_DIR = re.compile(r"^\d+\.\d+\.\d+$")


def _prepared_tfds_version_dir(spec: DatasetSpec, tfds_dir: str) -> tuple[str | None, str]:
    """Returns the newest ``<tfds_dir>/<name>/<version>/`` that holds a prepared dataset."""
    dataset_dir = os.path.join(tfds_dir, spec.tfds_name)
    if not os.path.isdir(dataset_dir):
        return None, f"no prepared {spec.tfds_name}/ in it"
    versions = [entry for entry in os.listdir(dataset_dir)
                if _VERSION_DIR.match(entry)
                and os.path.isfile(os.path.join(dataset_dir, entry, "dataset_info.json"))]
    if not versions:
        return None, f"{spec.tfds_name}/ holds no prepared version (no <version>/dataset_info.json)"
    newest = max(versions, key=lambda version: tuple(int(part) for part in version.split(".")))
    return os.path.join(dataset_dir, newest), ""


# Records are decoded in chunks: fewer Python calls than one per example, bounded memory.
_TFDS_READ_CHUNK = 10_000


def _read_tfds_split(data_source, image_key: str = "image", label_key: str = "label"):
    """Reads all records of a TFDS random-access data source into ``(uint8 images, labels)``."""
    num_records = len(data_source)
    images, labels = [], []
    for start in range(0, num_records, _TFDS_READ_CHUNK):
        records = data_source.__getitems__(range(start, min(start + _TFDS_READ_CHUNK,
                                                            num_records)))
        images.append(np.stack([record[image_key] for record in records]))
        labels.append(np.asarray([record[label_key] for record in records]))
    if not images:
        return np.zeros((0,), np.uint8), np.zeros((0,), np.int32)
    return np.concatenate(images), np.concatenate(labels)


def _from_tfds_dir(spec: DatasetSpec, tfds_dir: str) -> tuple[RawData | None, str]:
    """Reads a prepared TFDS dataset with TFDS's random-access data sources (no TensorFlow).

    The version directory is opened with ``tfds.builder_from_directory``, which takes the
    features from the files rather than from TFDS's code, so any prepared version is readable.
    """
    if spec.tfds_name is None:
        return None, "not available in TFDS"
    if not os.path.isdir(tfds_dir):
        return None, "no such directory"
    version_dir, reason = _prepared_tfds_version_dir(spec, tfds_dir)
    if version_dir is None:
        return None, reason
    return _from_tfds_version_dir(spec, version_dir)


def _from_tfds_version_dir(spec: DatasetSpec, version_dir: str) -> tuple[RawData | None, str]:
    """Reads ``<tfds_dir>/<name>/<version>/``; see :func:`_from_tfds_dir`."""
    import tensorflow_datasets as tfds  # Imported here: it is slow to import and often unneeded.

    source = f"tfds:{spec.tfds_name} ({version_dir})"
    try:
        builder = tfds.builder_from_directory(version_dir)
        prepared_name = builder.info.name
        formats = builder.info.available_file_formats()
        random_access = formats & tfds.core.file_adapters.FileFormat.with_random_access()
    except Exception as error:  # TFDS raises many types; the reason is reported, not hidden.
        return None, f"TFDS cannot open {version_dir}: {_first_line(error)}"
    if prepared_name != spec.tfds_name:
        # Same image shape, different data (mnist vs fashion_mnist): the name must match.
        return None, f"{version_dir} holds TFDS dataset {prepared_name!r}, not {spec.tfds_name!r}"
    if not random_access:
        # Datasets prepared by `tfds.load` with TensorFlow are TFRecord files, which have no
        # random access; only TensorFlow reads them.
        format_names = ", ".join(sorted(str(getattr(f, "value", f)) for f in formats)) or "?"
        return _from_tfds_dir_with_tensorflow(spec, version_dir, format_names)
    try:
        data_sources = builder.as_data_source()
        if any(split not in data_sources for split in ("train", "test")):
            return None, f"{version_dir} lacks a train or test split"
        x_train, y_train = _read_tfds_split(data_sources["train"])
        x_test, y_test = _read_tfds_split(data_sources["test"])
    except Exception as error:
        return None, f"TFDS cannot read {version_dir}: {_first_line(error)}"
    return _validated(spec, x_train, y_train, x_test, y_test, source=source), ""


def _from_tfds_dir_with_tensorflow(spec: DatasetSpec, version_dir: str, format_names: str):
    """Reads a prepared dataset without random access (TFRecord) through TensorFlow, if any.

    Not exercised by the tests, which run without TensorFlow.
    """
    if not tensorflow_installed():
        return None, (f"{version_dir} is in {format_names} format, which only TensorFlow reads "
                      "(pip install tensorflow, or prepare it with file_format=array_record)")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(version_dir)
        splits = [tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
                  for split in ("train", "test")]
    except Exception as tf_error:
        return None, f"TFDS with TensorFlow cannot read {version_dir}: {_first_line(tf_error)}"
    arrays = [array for split in splits for array in (split["image"], split["label"])]
    return _validated(spec, *arrays, source=f"tfds:{spec.tfds_name} ({version_dir})"), ""


def _from_tfds_download(spec: DatasetSpec, tfds_dir: str) -> tuple[RawData | None, str]:
    """Downloads and prepares the dataset with TFDS, then reads it."""
    if spec.tfds_name is None:
        return None, "not available in TFDS"
    if not tensorflow_installed():
        # Checked first so that a run without TensorFlow does not download hundreds of MB
        # only to fail when TFDS encodes the images.
        return None, "skipped: TensorFlow is not installed, and TFDS needs it to prepare the data"
    import tensorflow_datasets as tfds

    try:
        tfds.data_source(spec.tfds_name, data_dir=tfds_dir, download=True)
    except Exception as error:
        return None, f"failed: {_first_line(error)}"
    return _from_tfds_dir(spec, tfds_dir)


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = str(error).strip().splitlines()
    text = text[0] if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# The search


def _data_dir_candidates(spec: DatasetSpec, data_dir: str):
    """Yields ``(description, reader)`` for every accepted layout inside a user's ``data_dir``.

    Subdirectories named after the dataset (``fashion_mnist/`` or ``fashion-mnist/``) are only
    listed when they exist, to keep the not-found message short.
    """
    if spec.idx_files is not None:
        subdirs = [os.path.join(data_dir, sub)
                   for sub in dict.fromkeys([spec.name, spec.name.replace("_", "-")])]
        for directory in [data_dir, *(sub for sub in subdirs if os.path.isdir(sub))]:
            yield (f"IDX files in {directory}",
                   lambda directory=directory: _from_idx_dir(spec, directory))
    if spec.image_files:
        yield from _image_file_candidates(spec, data_dir)
        # A user's data.dir may itself be the folder with train/ and test/.
        yield f"image folder {data_dir}", lambda: _from_image_folder(spec, data_dir)
    if spec.image_shape is not None:  # image_folder has no fixed arrays to save as .npz
        npz_path = os.path.join(data_dir, f"{spec.name}.npz")
        yield npz_path, lambda: _from_npz(spec, npz_path)
    if spec.python_batches is not None:
        batch_dirs = [os.path.join(data_dir, spec.python_batches.directory)]
        if os.path.basename(os.path.normpath(data_dir)) == spec.python_batches.directory:
            batch_dirs.insert(0, data_dir)  # data.dir is the unpacked batch folder itself
        for directory in batch_dirs:
            yield (f"CIFAR python batches in {directory}",
                   lambda directory=directory: _from_python_batches(spec, directory))
    if spec.tfds_name is not None:
        yield (f"TFDS data dir {data_dir}", lambda: _from_tfds_dir(spec, data_dir))
        # Also accept the dataset's own TFDS directory or one prepared version of it.
        if os.path.basename(os.path.normpath(data_dir)) == spec.tfds_name:
            parent = os.path.dirname(os.path.normpath(data_dir))
            yield (f"TFDS dataset dir {data_dir}", lambda: _from_tfds_dir(spec, parent))
        if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
            yield (f"TFDS prepared version {data_dir}",
                   lambda: _from_tfds_version_dir(spec, data_dir))


def _image_file_candidates(spec: DatasetSpec, directory: str):
    """Yields ``(description, reader)`` for the dataset's archive and its unpacked folder."""
    if spec.archive is None:
        return
    archive_path = os.path.join(directory, spec.archive.file_name)
    yield archive_path, lambda: _from_archive(spec, archive_path)
    unpacked = os.path.join(directory, spec.archive.top)
    if os.path.isdir(unpacked):
        yield f"image folder {unpacked}", lambda: _from_image_folder(spec, unpacked)


def find_raw(spec: DatasetSpec, *, data_dir: str | None = None,
             tfds_data_dir: str | None = None, download: bool = True) -> RawData:
    """Finds and reads the raw data of a real dataset.

    Args:
        spec: The registry entry.
        data_dir: A user-given directory; if set, it is the only place looked at.
        tfds_data_dir: TFDS data dir for steps 3 and 4; see :func:`default_tfds_data_dir`.
        download: Allow a TFDS download (step 4).

    Returns:
        The raw data (``uint8`` NHWC images, ``int32`` labels) and where it came from.

    Raises:
        DataError: If the data is nowhere (listing the places and how to get it), or if data
            that was found is corrupt.
    """
    if data_dir is None and spec.image_files and not spec.standard_dirs:
        raise ConfigError(f"dataset {spec.name!r} is read from data.dir only; set "
                          f"data.dir=/path/to/folder holding {_accepted_layouts(spec)}")
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        if spec.archive is not None and os.path.isfile(data_dir):
            raw, _ = _from_archive(spec, data_dir)  # data.dir may be the archive itself
            return raw
        if not os.path.isdir(data_dir):
            what = "is not a directory" if os.path.exists(data_dir) else "does not exist"
            raise DataError(f"data.dir {data_dir} {what}; pass a directory that holds "
                            f"{_accepted_layouts(spec)}{_or_unset(spec)}")
        looked_at = []
        for description, read in _data_dir_candidates(spec, data_dir):
            raw, reason = read()
            if raw is not None:
                return raw
            looked_at.append(f"{description}: {reason}")
        raise DataError(_not_found_message(spec, looked_at, given_dir=data_dir))

    looked_at = []
    for directory in (os.path.expanduser(directory) for directory in spec.standard_dirs):
        if spec.idx_files is not None:
            candidates = [(directory, lambda directory=directory: _from_idx_dir(spec, directory))]
        elif not os.path.isdir(directory):
            looked_at.append(f"{directory}: no such directory")
            continue
        else:
            candidates = list(_image_file_candidates(spec, directory))
        for description, read in candidates:
            raw, reason = read()
            if raw is not None:
                return raw
            looked_at.append(f"{description}: {reason}")
    tfds_dir = default_tfds_data_dir(tfds_data_dir)
    if spec.tfds_name is not None:
        raw, reason = _from_tfds_dir(spec, tfds_dir)
        if raw is not None:
            return raw
        looked_at.append(f"TFDS data dir {tfds_dir}: {reason}")
        if download:
            raw, reason = _from_tfds_download(spec, tfds_dir)
            if raw is not None:
                return raw
            looked_at.append(f"TFDS download into {tfds_dir}: {reason}")
        else:
            looked_at.append("TFDS download: not tried (data.download=false)")
    raise DataError(_not_found_message(spec, looked_at))


def _accepted_layouts(spec: DatasetSpec) -> str:
    """E.g. "the mnist IDX files, mnist.npz or a TFDS-prepared mnist/"."""
    layouts = []
    if spec.idx_files is not None:
        layouts.append(f"the {spec.name} IDX files")
    if spec.archive is not None:
        layouts += [spec.archive.file_name, f"its unpacked {spec.archive.top}/"]
    if spec.image_files:
        layouts.append("train/<class>/ and test/<class>/ image folders")
    if spec.image_shape is not None:
        layouts.append(f"{spec.name}.npz")
    if spec.python_batches is not None:
        layouts.append(f"the official python batches ({spec.python_batches.directory}/)")
    if spec.tfds_name is not None:
        layouts.append(f"a TFDS-prepared {spec.tfds_name}/")
    return ", ".join(layouts[:-1]) + " or " + layouts[-1] if len(layouts) > 1 else layouts[0]


def _or_unset(spec: DatasetSpec) -> str:
    """The alternative of searching elsewhere, for datasets that are found without data.dir."""
    if spec.image_files and not spec.standard_dirs:
        return ""  # image_folder: data.dir is the only place
    return ", or leave data.dir unset to search the standard places"


def _not_found_message(spec: DatasetSpec, looked_at: list[str], given_dir: str | None = None):
    places = "".join(f"\n  - {place}" for place in looked_at)
    if given_dir is not None:
        return (f"dataset {spec.name!r} not found in data.dir {given_dir}. Looked for:{places}\n"
                f"Put {_accepted_layouts(spec)} there{_or_unset(spec)}.")
    ways = "".join(f"\n  - {way}" for way in spec.how_to_get)
    if spec.tfds_name is not None:
        ways += (f"\n  - or, if you have a TFDS data dir with {spec.tfds_name} prepared in "
                 "array_record format, pass data.tfds_data_dir=/that/dir (or set TFDS_DATA_DIR)")
    return (f"dataset {spec.name!r} not found. Looked at:{places}\n"
            f"To get it:{ways}")


def input_spec(name: str, *, data_dir: str | None = None) -> tuple[tuple[int, int, int], int]:
    """The image shape and number of classes of a dataset, without preprocessing it.

    For a registered shape (every dataset but ``image_folder``) this is the registry's; for an
    image folder it is read from the data (from its cache after the first load).

    Args:
        name: A registry key.
        data_dir: Where the data is (needed for ``image_folder``).

    Returns:
        ``((H, W, C), num_classes)``.

    Raises:
        ConfigError: If ``name`` is unknown, or an image folder has no ``data_dir``.
        DataError: If an image folder cannot be read.
    """
    spec = get_spec(name)
    if spec.image_shape is not None and spec.num_classes is not None:
        return tuple(spec.image_shape), spec.num_classes
    raw = find_raw(spec, data_dir=data_dir, download=False)
    return tuple(raw.x_train.shape[1:]), raw.num_classes
