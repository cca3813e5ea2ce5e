"""Image folders and archives of them: layout, decoding, one clear error per bad input, cache."""

import dataclasses
import io
import logging
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from bayescomp.data import REGISTRY, cache, image_folder, load_dataset, sources
from bayescomp.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Keeps every cache these tests write under tmp_path."""
    directory = tmp_path / "cache-dir"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(directory))
    return directory


def _save(path, pixels, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def _make_folder(root, classes=("cat", "ant", "dog"), train=3, test=2, size=(6, 5), seed=0,
                 fmt="PNG"):
    """Writes root/{train,test}/<class>/NN.png; returns the expected uint8 arrays (sorted)."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split, count in (("train", train), ("test", test)):
        images, labels = [], []
        for label, name in enumerate(sorted(classes)):
            for index in range(count):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                _save(root / split / name / f"{index:02d}.{fmt.lower()}", pixels, fmt)
                images.append(pixels)
                labels.append(label)
        expected[split] = (np.stack(images), np.asarray(labels))
    return expected


def test_image_folder_is_read_in_sorted_class_order(tmp_path):
    expected = _make_folder(tmp_path / "pics")

    data = load_dataset("image_folder", data_dir=str(tmp_path / "pics"), preprocess="none")

    assert data.source == str(tmp_path / "pics")
    assert data.num_classes == 3
    assert data.x_train.shape == (9, 6, 5, 3) and data.x_test.shape == (6, 6, 5, 3)
    np.testing.assert_array_equal(np.round(data.x_train * 255).astype(np.uint8),
                                  expected["train"][0])
    np.testing.assert_array_equal(data.y_train, expected["train"][1])  # ant=0, cat=1, dog=2
    np.testing.assert_array_equal(data.y_test, expected["test"][1])
    raw = sources.find_raw(REGISTRY["image_folder"], data_dir=str(tmp_path / "pics"))
    assert raw.class_names == ("ant", "cat", "dog") and raw.x_train.dtype == np.uint8


def test_image_folder_is_standardised_per_channel_with_training_statistics(tmp_path):
    _make_folder(tmp_path)
    data = load_dataset("image_folder", data_dir=str(tmp_path))
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 1, 2), dtype=np.float64), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=(0, 1, 2), dtype=np.float64), 1, atol=1e-5)
    assert data.x_train.dtype == np.float32


def test_input_spec_of_an_image_folder_comes_from_the_data(tmp_path):
    _make_folder(tmp_path, classes=("a", "b"), size=(4, 7))
    assert sources.input_spec("image_folder", data_dir=str(tmp_path)) == ((4, 7, 3), 2)
    assert sources.input_spec("cifar10_jpeg") == ((32, 32, 3), 10)


def test_jpeg_and_grayscale_images(tmp_path):
    _make_folder(tmp_path, fmt="JPEG", classes=("x", "y"))
    gray = np.full((6, 5), 77, np.uint8)
    _save(tmp_path / "train" / "x" / "gray.png", gray)  # one grayscale among colour images

    raw = sources.find_raw(REGISTRY["image_folder"], data_dir=str(tmp_path))

    assert raw.x_train.shape == (7, 6, 5, 3)
    # Sorted by file name within the class: 00, 01, 02, gray.
    np.testing.assert_array_equal(raw.x_train[3], np.repeat(gray[..., None], 3, axis=2))


def test_all_grayscale_gives_one_channel(tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            _save(tmp_path / split / name / "0.png", np.full((4, 4), 9, np.uint8))
    data = load_dataset("image_folder", data_dir=str(tmp_path), preprocess="none")
    assert data.x_train.shape == (2, 4, 4, 1)


def test_hidden_files_are_ignored(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "train" / ".hidden").mkdir()
    data = load_dataset("image_folder", data_dir=str(tmp_path))
    assert data.x_train.shape[0] == 9


def test_mixed_sizes_are_one_error_naming_both_files(tmp_path):
    _make_folder(tmp_path)
    odd = tmp_path / "test" / "dog" / "big.png"
    _save(odd, np.zeros((8, 5, 3), np.uint8))
    with pytest.raises(DataError, match=r"is 8x5 pixels but .* is 6x5; all images must have one "
                                        r"size") as caught:
        load_dataset("image_folder", data_dir=str(tmp_path))
    assert str(odd) in str(caught.value)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_image_is_named(tmp_path, content):
    _make_folder(tmp_path)
    bad = tmp_path / "train" / "ant" / "01.png"
    if content == "truncated":
        content = bad.read_bytes()[:60]
    bad.write_bytes(content)
    with pytest.raises(DataError, match="cannot decode .* as a PNG or JPEG image") as caught:
        load_dataset("image_folder", data_dir=str(tmp_path))
    assert str(bad) in str(caught.value)


def test_other_formats_are_not_decoded(tmp_path):
    _make_folder(tmp_path)
    disguised = tmp_path / "train" / "ant" / "gif.png"
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(disguised, format="GIF")
    with pytest.raises(DataError, match="cannot decode"):
        load_dataset("image_folder", data_dir=str(tmp_path))


def test_16_bit_images_are_refused(tmp_path):
    _make_folder(tmp_path)
    Image.fromarray(np.zeros((6, 5), np.uint16)).save(tmp_path / "test" / "ant" / "z.png")
    with pytest.raises(DataError, match=r"16-bit or float pixels\); convert it to 8-bit"):
        load_dataset("image_folder", data_dir=str(tmp_path))


def test_class_missing_from_one_split(tmp_path):
    _make_folder(tmp_path)
    _save(tmp_path / "train" / "eel" / "0.png", np.zeros((6, 5, 3), np.uint8))
    with pytest.raises(DataError, match="class eel of .* has images in train/ but none in "
                                        "test/"):
        load_dataset("image_folder", data_dir=str(tmp_path))


@pytest.mark.parametrize("stray, message", [
    ("train/ant/notes.txt", "is not a PNG or JPEG file"),
    ("train/readme.png", "is a file directly in train/"),
    ("test/ant/sub/0.png", "is a folder inside the class folder"),
    ("test/fox/", "holds no images"),
])
def test_layout_errors(tmp_path, stray, message):
    _make_folder(tmp_path)
    path = tmp_path / stray
    if stray.endswith("/"):
        path.mkdir(parents=True)
    elif path.suffix == ".png":
        _save(path, np.zeros((6, 5, 3), np.uint8))
    else:
        path.write_text("hello")
    with pytest.raises(DataError, match=message):
        load_dataset("image_folder", data_dir=str(tmp_path))


def test_image_folder_needs_data_dir():
    with pytest.raises(ConfigError, match="set data.dir="):
        load_dataset("image_folder")


def test_a_folder_without_train_and_test(tmp_path):
    with pytest.raises(DataError, match=r"no train/ or test/ in it"):
        load_dataset("image_folder", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------
# The cache


def _refuse_decoding(monkeypatch):
    def refuse(self, file, where):
        raise AssertionError(f"decoded {where} again")

    monkeypatch.setattr(image_folder._Decoder, "decode", refuse)


def test_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    _make_folder(tmp_path / "pics")
    first = load_dataset("image_folder", data_dir=str(tmp_path / "pics"))
    assert (tmp_path / "pics" / "bayescomp-cache.npz").is_file()

    _refuse_decoding(monkeypatch)
    second = load_dataset("image_folder", data_dir=str(tmp_path / "pics"))

    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    assert second.num_classes == 3


@pytest.mark.parametrize("change", ["replace an image", "add an image", "remove an image",
                                    "add a class"])
def test_a_changed_folder_invalidates_the_cache(tmp_path, change):
    root = tmp_path / "pics"
    _make_folder(root)
    before = sources.find_raw(REGISTRY["image_folder"], data_dir=str(root))
    if change == "replace an image":
        target = root / "train" / "ant" / "00.png"
        _save(target, np.full((6, 5, 3), 3, np.uint8))
        os.utime(target, ns=(1, 1))  # even a file whose mtime goes backwards
    elif change == "add an image":
        _save(root / "train" / "ant" / "new.png", np.full((6, 5, 3), 3, np.uint8))
    elif change == "remove an image":
        (root / "test" / "dog" / "01.png").unlink()
    else:
        for split in ("train", "test"):
            _save(root / split / "eel" / "0.png", np.full((6, 5, 3), 3, np.uint8))

    after = sources.find_raw(REGISTRY["image_folder"], data_dir=str(root))

    if change == "replace an image":
        assert (after.x_train[0] == 3).all() and not (before.x_train[0] == 3).all()
    elif change == "add an image":
        assert after.x_train.shape[0] == before.x_train.shape[0] + 1
    elif change == "remove an image":
        assert after.x_test.shape[0] == before.x_test.shape[0] - 1
    else:
        assert after.class_names == ("ant", "cat", "dog", "eel") and after.num_classes == 4


def test_read_only_folder_is_cached_in_the_cache_dir(tmp_path, cache_dir, monkeypatch):
    root = tmp_path / "pics"
    _make_folder(root)
    root.chmod(0o555)  # r-x: even root must not write there
    try:
        load_dataset("image_folder", data_dir=str(root))
        assert not (root / "bayescomp-cache.npz").exists()
        cached = list((cache_dir / "datasets").glob("pics-*.npz"))
        assert len(cached) == 1
        _refuse_decoding(monkeypatch)
        load_dataset("image_folder", data_dir=str(root))
    finally:
        root.chmod(0o755)


def test_an_unreadable_cache_is_rebuilt(tmp_path, caplog):
    _make_folder(tmp_path)
    first = sources.find_raw(REGISTRY["image_folder"], data_dir=str(tmp_path))
    (tmp_path / "bayescomp-cache.npz").write_bytes(b"PK\x03\x04 garbage")
    with caplog.at_level(logging.WARNING):
        second = sources.find_raw(REGISTRY["image_folder"], data_dir=str(tmp_path))
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert "unreadable cache" in caplog.text


def test_cache_without_any_writable_place_still_loads(tmp_path, cache_dir, caplog):
    root = tmp_path / "pics"
    _make_folder(root)
    cache_dir.mkdir()
    for directory in (root, cache_dir):
        directory.chmod(0o555)
    try:
        with caplog.at_level(logging.WARNING):
            data = load_dataset("image_folder", data_dir=str(root))
    finally:
        for directory in (root, cache_dir):
            directory.chmod(0o755)
    assert data.x_train.shape[0] == 9 and "could not cache" in caplog.text


# --------------------------------------------------------------------------------------------
# cifar10_jpeg: an archive of an image folder


@pytest.fixture
def small_cifar10_jpeg(monkeypatch, tmp_path):
    """cifar10_jpeg shrunk to 2 train / 1 test images per class, and no standard places."""
    monkeypatch.setitem(REGISTRY, "cifar10_jpeg", dataclasses.replace(
        REGISTRY["cifar10_jpeg"], split_sizes=(20, 10),
        standard_dirs=(str(tmp_path / "absent"),)))
    tree = tmp_path / "unpacked" / "cifar10-jpeg"
    _make_folder(tree, classes=sources.CIFAR10_CLASSES, train=2, test=1, size=(32, 32),
                 fmt="JPEG")
    return tree


def _tar(tree, path, extra=()):
    """Packs ``tree`` as ``<tree name>/...`` into a tar.gz, plus ``(TarInfo, bytes)`` extras."""
    with tarfile.open(path, "w:gz") as archive:
        archive.add(tree, arcname=tree.name)
        for info, content in extra:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def test_archive_and_unpacked_tree_give_the_same_arrays(tmp_path, small_cifar10_jpeg):
    archive = _tar(small_cifar10_jpeg, tmp_path / "cifar10-jpeg.tar.gz")
    spec = REGISTRY["cifar10_jpeg"]

    from_archive = sources.find_raw(spec, data_dir=str(tmp_path))
    from_tree = sources.find_raw(spec, data_dir=str(small_cifar10_jpeg.parent))
    from_path = sources.find_raw(spec, data_dir=str(archive))  # data.dir = the archive itself

    assert from_archive.source == str(archive) == from_path.source
    assert from_tree.source == str(small_cifar10_jpeg)
    assert from_archive.x_train.shape == (20, 32, 32, 3) and from_archive.num_classes == 10
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(from_archive, field), getattr(from_tree, field))
    assert (tmp_path / "cifar10-jpeg.tar.gz.bayescomp-cache.npz").is_file()


def test_archive_is_found_in_a_standard_place(monkeypatch, tmp_path, small_cifar10_jpeg):
    shared = tmp_path / "shared-data"
    shared.mkdir()
    _tar(small_cifar10_jpeg, shared / "cifar10-jpeg.tar.gz")
    monkeypatch.setitem(REGISTRY, "cifar10_jpeg", dataclasses.replace(
        REGISTRY["cifar10_jpeg"], standard_dirs=(str(tmp_path / "absent"), str(shared))))
    data = load_dataset("cifar10_jpeg")
    assert data.source == str(shared / "cifar10-jpeg.tar.gz") and data.num_classes == 10


def test_cifar10_jpeg_not_found_lists_places(small_cifar10_jpeg, tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10_jpeg")
    message = str(caught.value)
    assert "'cifar10_jpeg' not found" in message and str(tmp_path / "absent") in message
    assert "cifar10-jpeg.tar.gz" in message


def _member(name, kind=tarfile.REGTYPE, content=b"", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(content), linkname
    return info, (content if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("member", [
    _member("cifar10-jpeg/train/cat/link.jpg", tarfile.SYMTYPE, linkname="/etc/passwd"),
    _member("cifar10-jpeg/../../evil.jpg", content=b"x"),
    _member("/abs/evil.jpg", content=b"x"),
    _member("other-top/train/cat/0.jpg", content=b"x"),
    _member("cifar10-jpeg/valid/cat/0.jpg", content=b"x"),
    _member("cifar10-jpeg/train/cat/deeper/0.jpg", content=b"x"),
], ids=["symlink", "dotdot", "absolute", "other-top", "other-split", "too-deep"])
def test_unexpected_archive_members_are_refused(tmp_path, small_cifar10_jpeg, member):
    _tar(small_cifar10_jpeg, tmp_path / "cifar10-jpeg.tar.gz", extra=[member])
    with pytest.raises(DataError, match="holds an unexpected member"):
        load_dataset("cifar10_jpeg", data_dir=str(tmp_path))
    assert not (tmp_path / "evil.jpg").exists()


def test_undecodable_archive_member_is_named(tmp_path, small_cifar10_jpeg):
    extra = [_member("cifar10-jpeg/test/cat/zz.jpg", content=b"garbage")]
    _tar(small_cifar10_jpeg, tmp_path / "cifar10-jpeg.tar.gz", extra=extra)
    with pytest.raises(DataError, match=r"cifar10-jpeg.tar.gz:cifar10-jpeg/test/cat/zz.jpg"):
        load_dataset("cifar10_jpeg", data_dir=str(tmp_path))


def test_truncated_archive(tmp_path, small_cifar10_jpeg):
    path = _tar(small_cifar10_jpeg, tmp_path / "cifar10-jpeg.tar.gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="is damaged or truncated"):
        load_dataset("cifar10_jpeg", data_dir=str(tmp_path))


def test_incomplete_cifar10_jpeg_is_refused(tmp_path, small_cifar10_jpeg):
    (small_cifar10_jpeg / "train" / "cat" / "00.jpeg").unlink()
    with pytest.raises(DataError, match="has 19 training and 10 test images; the dataset has 20 "
                                        "and 10"):
        load_dataset("cifar10_jpeg", data_dir=str(small_cifar10_jpeg))


def test_other_classes_are_not_cifar10_jpeg(tmp_path, small_cifar10_jpeg):
    for split in ("train", "test"):
        (small_cifar10_jpeg / split / "truck").rename(small_cifar10_jpeg / split / "lorry")
    with pytest.raises(DataError, match="expected airplane, .*data=image_folder"):
        load_dataset("cifar10_jpeg", data_dir=str(small_cifar10_jpeg))
