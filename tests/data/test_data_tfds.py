"""The TFDS branch, on a tiny MNIST-shaped dataset prepared offline without TensorFlow.

The dataset is written by a subclass of TFDS's own MNIST builder (same name, version and
features) whose examples are PNG bytes made with Pillow, in array_record format; so the files
look like a real prepared ``mnist`` and are read the way a real one would be.
"""

import dataclasses
import io
import json
import shutil

import numpy as np
import pytest

from bayescomp.data import REGISTRY, load_dataset
from bayescomp.errors import DataError

tfds = pytest.importorskip("tensorflow_datasets")
PIL_Image = pytest.importorskip("PIL.Image")

NUM_TRAIN, NUM_TEST = 30, 12


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL_Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def _examples(first: int, count: int):
    """Images whose pixels encode their index, labels ``index % 10``."""
    rng = np.random.default_rng(first)
    images = rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(first, first + count)  # unique, so records can be matched
    labels = (np.arange(first, first + count) % 10).astype(np.int32)
    return images, labels


@pytest.fixture(scope="module")
def prepared_tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    splits = {"train": _examples(0, NUM_TRAIN), "test": _examples(100, NUM_TEST)}

    with tfds.core.registered.skip_registration():  # keep TFDS's real "mnist" registered

        class TinyMnist(tfds.image_classification.MNIST):
            name = "mnist"

            def _split_generators(self, dl_manager):
                return {split: self._generate_examples(split) for split in splits}

            def _generate_examples(self, split):
                for index, (image, label) in enumerate(zip(*splits[split], strict=True)):
                    yield index, {"image": _png(image), "label": int(label)}

    TinyMnist(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir, splits


def _assert_same_examples(images, labels, expected_images, expected_labels):
    # TFDS shuffles records when preparing; compare by the index stored in pixel (0, 0).
    order = np.argsort(images[:, 0, 0, 0])
    expected_order = np.argsort(expected_images[:, 0, 0, 0])
    np.testing.assert_array_equal(images[order], expected_images[expected_order])
    np.testing.assert_array_equal(labels[order], expected_labels[expected_order])


def _no_standard_dirs(monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, "mnist", dataclasses.replace(
        REGISTRY["mnist"], standard_dirs=(str(tmp_path / "absent"),)))


def test_prepared_dataset_in_tfds_data_dir_is_read(prepared_tfds_dir, monkeypatch, tmp_path):
    data_dir, splits = prepared_tfds_dir
    _no_standard_dirs(monkeypatch, tmp_path)

    data = load_dataset("mnist", tfds_data_dir=str(data_dir), download=False, preprocess="none")

    assert data.source.startswith("tfds:mnist (") and str(data_dir) in data.source
    assert data.x_train.shape == (NUM_TRAIN, 28, 28, 1) and data.x_test.shape == (NUM_TEST, 28,
                                                                                   28, 1)
    assert data.y_train.dtype == np.int32
    raw_train = np.round(data.x_train * 255).astype(np.uint8)
    raw_test = np.round(data.x_test * 255).astype(np.uint8)
    _assert_same_examples(raw_train, data.y_train, *splits["train"])
    _assert_same_examples(raw_test, data.y_test, *splits["test"])


def test_tfds_data_dir_given_as_data_dir(prepared_tfds_dir):
    data_dir, _ = prepared_tfds_dir
    data = load_dataset("mnist", data_dir=str(data_dir), download=False)
    assert data.source.startswith("tfds:mnist")
    assert data.x_train.shape == (NUM_TRAIN, 28, 28, 1)


def test_tfrecord_dataset_without_tensorflow_is_explained(prepared_tfds_dir, monkeypatch,
                                                          tmp_path):
    data_dir, _ = prepared_tfds_dir
    copy = tmp_path / "tfrecord-tfds"
    shutil.copytree(data_dir / "mnist", copy / "mnist")
    # Pretend the data was prepared by `tfds.load` with TensorFlow (TFRecord files).
    (info_path,) = copy.glob("mnist/*/dataset_info.json")
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    _no_standard_dirs(monkeypatch, tmp_path)
    monkeypatch.setattr("bayescomp.data.sources.tensorflow_installed", lambda: False)

    with pytest.raises(DataError, match="only TensorFlow reads"):
        load_dataset("mnist", tfds_data_dir=str(copy), download=False)


@pytest.mark.parametrize("level", ["dataset", "version"])
def test_data_dir_may_be_the_dataset_or_version_dir(prepared_tfds_dir, level):
    data_dir, _ = prepared_tfds_dir
    dataset_dir = data_dir / "mnist"
    target = dataset_dir if level == "dataset" else next(dataset_dir.glob("*.*.*"))
    data = load_dataset("mnist", data_dir=str(target), download=False)
    assert data.source.startswith("tfds:mnist")


def test_prepared_dataset_of_another_name_is_not_used(prepared_tfds_dir):
    # mnist and fashion_mnist have the same shapes; only the name tells them apart.
    data_dir, _ = prepared_tfds_dir
    version_dir = next((data_dir / "mnist").glob("*.*.*"))
    with pytest.raises(DataError, match="holds TFDS dataset 'mnist', not 'fashion_mnist'"):
        load_dataset("fashion_mnist", data_dir=str(version_dir), download=False)
