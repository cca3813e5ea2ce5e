"""CIFAR's official python batches: read in their real format, never executed, every bad file named.

The batches here are written as the official files are: Python 2 pickles (protocol 2, strings
as 8-bit ``BINSTRING``s, the array reconstructor as ``numpy.core.multiarray._reconstruct``),
by a small pickler below; the official files themselves cannot be downloaded in tests.
"""

import io
import os
import pickle
import pickletools

import numpy as np
import pytest

from bayescomp.data import cifar_batches, load_dataset
from bayescomp.errors import DataError


class _Python2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle wrote the CIFAR batches (protocol 2).

    ``bytes`` and ``str`` become ``SHORT_BINSTRING``/``BINSTRING`` (Python 2's ``str``), which
    ``pickle.load(..., encoding="bytes")`` reads back as ``bytes``; numpy's array reconstructor
    is named by its numpy-1 module.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_binstring(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[bytes] = _save_binstring
    dispatch[str] = _save_binstring

    def save_global(self, obj, name=None):
        if obj is cifar_batches._reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _rows(images_nhwc: np.ndarray) -> np.ndarray:
    """NHWC images as CIFAR rows: 1024 red, 1024 green, 1024 blue values per image."""
    return np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)).reshape(len(images_nhwc), -1)


def _batch(images, labels, label_key="labels", extra=None) -> dict:
    batch = {b"batch_label": b"training batch 1 of 5", b"data": _rows(images),
             label_key.encode(): [int(label) for label in labels],
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    batch.update(extra or {})
    return batch


def _write_cifar10(root, per_batch=4, seed=0):
    """Writes cifar-10-batches-py/ with tiny batches; returns (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    splits = {"train": ([], []), "test": ([], [])}
    for name in (*cifar_batches.CIFAR10_BATCHES.train_files, "test_batch"):
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        (directory / name).write_bytes(_python2_pickle(_batch(images, labels)))
        split = splits["test" if name == "test_batch" else "train"]
        split[0].append(images)
        split[1].append(labels)
    return tuple(np.concatenate(part) for split in ("train", "test") for part in splits[split])


def test_cifar10_python_batches_are_read(tmp_path):
    x_train, y_train, _, y_test = _write_cifar10(tmp_path)

    data = load_dataset("cifar10", data_dir=str(tmp_path), download=False, preprocess="none")

    assert data.source == str(tmp_path / "cifar-10-batches-py")
    assert data.x_train.shape == (20, 32, 32, 3) and data.x_test.shape == (4, 32, 32, 3)
    # Channel-major rows become NHWC pixels: the batches are concatenated in order 1..5.
    np.testing.assert_array_equal(np.round(data.x_train * 255).astype(np.uint8), x_train)
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.y_test, y_test)
    assert data.num_classes == 10


def test_a_pixel_lands_where_the_format_says(tmp_path):
    # Row layout: value index c * 1024 + h * 32 + w holds pixel (h, w) of channel c.
    row = np.zeros((1, 3072), np.uint8)
    row[0, 2 * 1024 + 5 * 32 + 7] = 200  # blue, row 5, column 7
    path = tmp_path / "batch"
    path.write_bytes(_python2_pickle({b"data": row, b"labels": [3]}))

    images, labels = cifar_batches.read_batch(str(path), "labels", 10)

    assert images.shape == (1, 32, 32, 3) and images[0, 5, 7, 2] == 200
    assert images.sum() == 200 and labels.tolist() == [3]


def test_batches_use_only_numpys_array_globals():
    # What the restricted unpickler allows is what the real format needs, no more.
    content = _python2_pickle(_batch(np.zeros((2, 32, 32, 3), np.uint8), [0, 1]))
    globals_named = {arg for opcode, arg, _ in pickletools.genops(content)
                     if opcode.name == "GLOBAL"}
    assert globals_named == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert {tuple(name.split()) for name in globals_named} <= set(cifar_batches._ALLOWED_GLOBALS)


def test_data_dir_may_be_the_batch_folder_itself(tmp_path):
    _write_cifar10(tmp_path)
    directory = tmp_path / "cifar-10-batches-py"
    data = load_dataset("cifar10", data_dir=str(directory), download=False)
    assert data.source == str(directory) and data.x_train.shape == (20, 32, 32, 3)


def test_cifar100_uses_the_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    fine = {"train": [0, 99, 42, 7], "test": [99, 1]}
    for split, labels in fine.items():
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        batch = _batch(images, labels, label_key="fine_labels",
                       extra={b"coarse_labels": [label // 5 for label in labels]})
        (directory / split).write_bytes(_python2_pickle(batch))

    data = load_dataset("cifar100", data_dir=str(tmp_path), download=False)

    assert data.num_classes == 100
    assert data.y_train.tolist() == fine["train"] and data.y_test.tolist() == fine["test"]


class _RunsACommand:
    """A pickle payload that would run a shell command when loaded by the normal pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["whole file", "inside the dict"])
def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, where):
    _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = _RunsACommand(marker)
    # Dumping runs nothing; these bytes are never given to the normal pickle.load.
    content = (pickle.dumps(payload, protocol=4) if where == "whole file"
               else _python2_pickle({b"data": payload, b"labels": [0]}))
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(content)

    with pytest.raises(DataError, match=r"asks to call (posix|os|nt)\.system") as caught:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)

    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("os", "system"),
                                          ("numpy", "load"), ("subprocess", "Popen"),
                                          ("numpy.core.multiarray", "scalar"),
                                          ("numpy._core.numeric", "_frombuffer")])
def test_unpickler_allows_nothing_but_the_array_globals(module, name):
    unpickler = cifar_batches.RestrictedUnpickler(io.BytesIO(b""))
    with pytest.raises(cifar_batches.RefusedGlobal):
        unpickler.find_class(module, name)


def _cifar10_with(tmp_path, name, content):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / name
    path.write_bytes(content)
    return path


def test_truncated_batch_is_named(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DataError, match="is truncated") as caught:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert str(path) in str(caught.value)


def test_a_file_that_is_not_a_pickle_is_named(tmp_path):
    path = _cifar10_with(tmp_path, "data_batch_4", b"<html>Not Found</html>")
    with pytest.raises(DataError, match="is not a valid pickle") as caught:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},
     r"shape \(2, 3000\) as data; expected uint8 of shape \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "a float32 array"),
    ({b"data": [1, 2, 3], b"labels": [0, 1]}, "a list as data"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
     r"labels in \[0, 10\]; expected 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, r"labels in \[-1, 0\]"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", b"dog"]}, "expected a list of"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "lacks labels"),
    ([1, 2], "holds a list, not the dict"),
])
def test_bad_batch_content_is_named(tmp_path, batch, message):
    path = _cifar10_with(tmp_path, "data_batch_1", _python2_pickle(batch))
    with pytest.raises(DataError, match=message) as caught:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert str(path) in str(caught.value)


def test_incomplete_batches_are_reported_with_the_missing_file(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)


def test_not_found_message_says_how_to_get_the_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    message = str(caught.value)
    assert "cifar-10-batches-py" in message and "cifar10.npz" in message
