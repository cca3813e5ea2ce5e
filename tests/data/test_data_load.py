"""load_dataset: where it looks, what it accepts, and how it fails."""

import dataclasses

import numpy as np
import pytest

from bayescomp.data import REGISTRY, Dataset, idx, load_dataset, names, sources
from bayescomp.errors import ConfigError, DataError


def _write_fake_idx_set(directory, num_train=40, num_test=20, compress=True, seed=0):
    """Writes four small MNIST-style IDX files; returns the uint8 arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(num_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(num_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for field, name in idx.MNIST_IDX_FILES._asdict().items():
        path = directory / (name + ".gz" if compress else name)
        idx.write_idx(path, arrays[field], compress=compress)
    return arrays


@pytest.fixture
def no_standard_places(monkeypatch, tmp_path):
    """Points every standard place of every dataset at empty or absent directories."""
    for name, spec in list(REGISTRY.items()):
        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(
            spec, standard_dirs=(str(tmp_path / "absent-standard-dir"),)))
    empty_tfds_dir = tmp_path / "empty-tfds"
    empty_tfds_dir.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(empty_tfds_dir))
    return empty_tfds_dir


def test_names_and_registry():
    assert names() == ["cifar10", "cifar100", "cifar10_jpeg", "fashion_mnist", "image_folder",
                       "mnist", "synthetic", "synthetic_cifar"]
    assert REGISTRY["fashion_mnist"].tfds_name == "fashion_mnist"
    assert REGISTRY["cifar100"].num_classes == 100
    assert REGISTRY["cifar10"].image_shape == (32, 32, 3)


@pytest.mark.parametrize("compress", [False, True])
def test_data_dir_with_idx_files_is_used(tmp_path, compress):
    arrays = _write_fake_idx_set(tmp_path, compress=compress)

    data = load_dataset("fashion_mnist", data_dir=str(tmp_path), download=False,
                        preprocess="none")

    assert isinstance(data, Dataset)
    assert data.source == str(tmp_path)
    assert data.x_train.shape == (40, 28, 28, 1) and data.x_test.shape == (20, 28, 28, 1)
    np.testing.assert_array_equal(data.y_train, arrays["train_labels"])
    assert data.y_train.dtype == np.int32
    np.testing.assert_allclose(data.x_test[..., 0], arrays["test_images"] / np.float32(255))


@pytest.mark.parametrize("subdir", ["fashion_mnist", "fashion-mnist"])
def test_data_dir_subdirectory_named_after_dataset(tmp_path, subdir):
    _write_fake_idx_set(tmp_path / subdir)
    data = load_dataset("fashion_mnist", data_dir=str(tmp_path), download=False)
    assert data.source == str(tmp_path / subdir)


def test_data_dir_npz_supplies_cifar(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    y_train = (np.arange(30) % 10).reshape(-1, 1)  # (N, 1) labels as keras writes them
    x_test = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    y_test = np.arange(10) % 10
    np.savez(tmp_path / "cifar10.npz", x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=y_test)

    data = load_dataset("cifar10", data_dir=str(tmp_path), download=False)

    assert data.source == str(tmp_path / "cifar10.npz")
    assert data.x_train.shape == (30, 32, 32, 3) and data.x_train.dtype == np.float32
    np.testing.assert_array_equal(data.y_train, np.arange(30) % 10)
    assert data.num_classes == 10


def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError, match="does not exist") as caught:
        load_dataset("fashion_mnist", data_dir=str(missing), download=False)
    assert str(missing) in str(caught.value)


def test_data_dir_without_the_data_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("fashion_mnist", data_dir=str(tmp_path), download=False)
    message = str(caught.value)
    assert "not found in data.dir" in message
    assert "fashion_mnist.npz" in message and "IDX files in" in message


def test_corrupt_file_in_data_dir_raises_instead_of_falling_back(tmp_path):
    _write_fake_idx_set(tmp_path, compress=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as caught:
        load_dataset("fashion_mnist", data_dir=str(tmp_path), download=False)
    assert str(path) in str(caught.value)


def test_npz_with_float_images_is_rejected(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.float32),
             y_train=np.zeros(2, np.int64), x_test=np.zeros((1, 28, 28), np.float32),
             y_test=np.zeros(1, np.int64))
    with pytest.raises(DataError, match="expected uint8"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_npz_missing_arrays_is_reported(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="lacks the arrays y_train, x_test, y_test"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_labels_out_of_range_are_reported(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8),
             y_train=np.array([0, 10]), x_test=np.zeros((1, 28, 28), np.uint8),
             y_test=np.array([0]))
    with pytest.raises(DataError, match=r"labels in \[0, 10\]; expected 0..9"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError) as caught:
        load_dataset("imagenet")
    message = str(caught.value)
    assert "imagenet" in message
    for name in names():
        assert name in message


def test_unknown_preprocess_lists_methods():
    with pytest.raises(ConfigError, match="none, reference"):
        load_dataset("synthetic", preprocess="zca")


def test_standard_dir_is_used(monkeypatch, tmp_path, no_standard_places):
    standard_dir = tmp_path / "usr-share-datasets-mnist"
    _write_fake_idx_set(standard_dir)
    monkeypatch.setitem(REGISTRY, "mnist", dataclasses.replace(
        REGISTRY["mnist"], standard_dirs=(str(tmp_path / "absent"), str(standard_dir))))
    data = load_dataset("mnist", download=False)
    assert data.source == str(standard_dir)


def test_nothing_found_lists_places_and_how_to_get_it(tmp_path, no_standard_places):
    with pytest.raises(DataError) as caught:
        load_dataset("fashion_mnist", download=False)
    message = str(caught.value)
    assert "'fashion_mnist' not found" in message
    assert str(tmp_path / "absent-standard-dir") in message  # the standard place
    assert str(no_standard_places) in message  # the TFDS data dir from $TFDS_DATA_DIR
    assert "download" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.dir=" in message
    assert "pip install tensorflow" in message


def test_tfds_data_dir_argument_overrides_environment(tmp_path, no_standard_places):
    explicit = tmp_path / "explicit-tfds"
    with pytest.raises(DataError) as caught:
        load_dataset("cifar100", tfds_data_dir=str(explicit), download=False)
    assert str(explicit) in str(caught.value)
    assert str(no_standard_places) not in str(caught.value)


def test_default_tfds_data_dir(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", "/some/where")
    assert sources.default_tfds_data_dir() == "/some/where"
    assert sources.default_tfds_data_dir("/explicit") == "/explicit"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert sources.default_tfds_data_dir().endswith("tensorflow_datasets")


def test_download_without_tensorflow_is_skipped_with_a_reason(monkeypatch, no_standard_places):
    # The download step must not start a large download that can only fail later.
    monkeypatch.setattr(sources, "tensorflow_installed", lambda: False)
    with pytest.raises(DataError, match="TensorFlow is not installed"):
        load_dataset("cifar10", download=True)


@pytest.mark.parametrize("empty_split", ["train", "test"])
def test_an_empty_split_is_refused_before_training(tmp_path, empty_split):
    # Before the fix, 0 test images passed and a full epoch later the test error divided by 0;
    # 0 training images were reported as a batch-size problem.
    counts = {"train": 2, "test": 1, empty_split: 0}
    np.savez(tmp_path / "mnist.npz",
             x_train=np.zeros((counts["train"], 28, 28), np.uint8),
             y_train=np.zeros(counts["train"], np.int64),
             x_test=np.zeros((counts["test"], 28, 28), np.uint8),
             y_test=np.zeros(counts["test"], np.int64))
    with pytest.raises(DataError, match=f"holds no {empty_split} images"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_npz_declaring_an_impossible_array_is_a_data_error(tmp_path):
    # A .npy header inside the archive may declare any shape (here 2^62 bytes, followed by one
    # byte); numpy then fails to allocate or to read that much. Either way one DataError.
    import io
    import zipfile
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (1 << 62,)})
    hostile = buffer.getvalue() + b"\x00"
    with zipfile.ZipFile(tmp_path / "mnist.npz", "w") as archive:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            archive.writestr(key + ".npy", hostile)
    with pytest.raises(DataError, match="cannot read .* as an .npz archive"):
        load_dataset("mnist", data_dir=str(tmp_path))
