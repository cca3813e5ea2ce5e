"""The IDX reader: hand-made files, damaged files, and the writer."""

import gzip
import struct

import numpy as np
import pytest

from bayescomp.data import idx
from bayescomp.errors import DataError


def _idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written by hand from the format description, independent of write_idx."""
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


@pytest.mark.parametrize("compressed", [False, True])
def test_reads_hand_made_ubyte_file_exactly(tmp_path, compressed):
    values = bytes(range(6))
    content = _idx_bytes(0x08, (2, 3), values)
    path = tmp_path / ("images.gz" if compressed else "images")
    path.write_bytes(gzip.compress(content) if compressed else content)

    array = idx.read_idx(path)

    np.testing.assert_array_equal(array, np.array([[0, 1, 2], [3, 4, 5]], np.uint8))
    assert array.dtype == np.uint8


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    path = tmp_path / "labels-without-gz-suffix"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (3,), b"\x07\x08\x09")))
    np.testing.assert_array_equal(idx.read_idx(path), [7, 8, 9])


def test_multibyte_types_are_big_endian_in_file_and_native_in_memory(tmp_path):
    path = tmp_path / "shorts"
    path.write_bytes(_idx_bytes(0x0B, (3,), struct.pack(">3h", 1, -2, 300)))
    array = idx.read_idx(path)
    np.testing.assert_array_equal(array, [1, -2, 300])
    assert array.dtype == np.int16 and array.dtype.isnative


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_write_then_read_round_trips(tmp_path, dtype, compress):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / "array"
    idx.write_idx(path, array, compress=compress)
    read = idx.read_idx(path)
    assert read.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read, array)


def test_truncated_payload_raises_data_error_naming_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(0x08, (2, 28, 28), bytes(2 * 28 * 28 - 10)))
    with pytest.raises(DataError, match="truncated") as caught:
        idx.read_idx(path)
    assert str(path) in str(caught.value)


def test_truncated_header_raises_data_error(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated inside its header"):
        idx.read_idx(path)


def test_extra_bytes_raise_data_error(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(_idx_bytes(0x08, (2,), b"\x01\x02\x03"))
    with pytest.raises(DataError, match="longer than its header says"):
        idx.read_idx(path)


def test_bad_magic_raises_data_error(tmp_path):
    path = tmp_path / "not-idx"
    path.write_bytes(b"PK\x03\x04 this is a zip, not an IDX file")
    with pytest.raises(DataError, match="not an IDX file") as caught:
        idx.read_idx(path)
    assert str(path) in str(caught.value)


def test_unknown_type_code_raises_data_error(tmp_path):
    path = tmp_path / "odd-type"
    path.write_bytes(_idx_bytes(0x07, (1,), b"\x00"))
    with pytest.raises(DataError, match="unknown element type code 0x07"):
        idx.read_idx(path)


def test_truncated_gzip_raises_data_error(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (100,), bytes(100)))[:-12])
    with pytest.raises(DataError, match="damaged gzip") as caught:
        idx.read_idx(path)
    assert str(path) in str(caught.value)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read IDX file"):
        idx.read_idx(tmp_path / "absent")


def test_split_with_different_counts_raises_data_error(tmp_path):
    idx.write_idx(tmp_path / "images", np.zeros((3, 4, 4), np.uint8))
    idx.write_idx(tmp_path / "labels", np.zeros((2,), np.uint8))
    with pytest.raises(DataError, match="3 images but .* 2 labels"):
        idx.read_idx_split(str(tmp_path / "images"), str(tmp_path / "labels"))


def test_split_adds_channel_axis_and_int32_labels(tmp_path):
    idx.write_idx(tmp_path / "images", np.ones((3, 4, 5), np.uint8))
    idx.write_idx(tmp_path / "labels", np.array([0, 1, 2], np.uint8))
    images, labels = idx.read_idx_split(str(tmp_path / "images"), str(tmp_path / "labels"))
    assert images.shape == (3, 4, 5, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32


def test_swapped_files_are_reported(tmp_path):
    idx.write_idx(tmp_path / "images", np.ones((3, 4, 5), np.uint8))
    idx.write_idx(tmp_path / "labels", np.array([0, 1, 2], np.uint8))
    with pytest.raises(DataError, match="swapped"):
        idx.read_idx_split(str(tmp_path / "labels"), str(tmp_path / "images"))


def test_find_idx_files_reports_missing_ones(tmp_path):
    names = idx.MNIST_IDX_FILES
    (tmp_path / (names.train_images + ".gz")).write_bytes(b"")
    (tmp_path / names.train_labels).write_bytes(b"")
    paths, reason = idx.find_idx_files(str(tmp_path), names)
    assert paths is None
    assert names.test_images in reason and names.test_labels in reason
    assert names.train_images not in reason


def test_shape_whose_size_wraps_int64_is_refused(tmp_path):
    # 2^16 ** 4 = 2^64 bytes wraps to 0 in an int64 product, which matched an empty payload and
    # then failed in reshape with a numpy traceback.
    path = tmp_path / "wrapping"
    path.write_bytes(_idx_bytes(0x08, (1 << 16,) * 4, b""))
    with pytest.raises(DataError, match="more than the .* bytes bayescomp reads"):
        idx.read_idx(path)


def test_header_declaring_more_than_the_cap_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "MAX_DATA_BYTES", 1000)
    path = tmp_path / "large"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (1001,), bytes(1001))))
    with pytest.raises(DataError, match="declares shape \\(1001,\\)"):
        idx.read_idx(path)


def test_a_255_dimension_file_is_refused_with_one_line(tmp_path):
    # numpy holds at most 64 dimensions: before the fix, reshape raised a ValueError traceback.
    path = tmp_path / "many-dims"
    path.write_bytes(_idx_bytes(0x08, (1,) * 255, b"\x00"))
    with pytest.raises(DataError, match="declares 255 dimensions"):
        idx.read_idx(path)


def test_gzip_bomb_is_inflated_only_to_its_declared_size(tmp_path):
    """A 1-byte array followed by 64 MiB of zeros compresses to ~64 KiB.

    Before the fix the whole 64 MiB was inflated before the length check; now inflation stops
    one byte past the declared length. tracemalloc sees the bytes objects zlib returns, so the
    peak bounds what was inflated; 8 MiB leaves room for the 16 MiB-step buffer zlib sizes from
    ``max_length`` (the piece actually returned is 2 bytes) while staying far below 64 MiB.
    """
    import tracemalloc

    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (1,), b"\x01") + bytes(64 << 20), 9))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="longer than its header says"):
            idx.read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_concatenated_gzip_members_are_read_as_one_stream(tmp_path):
    content = _idx_bytes(0x08, (2, 3), bytes(range(6)))
    path = tmp_path / "two-members.gz"
    path.write_bytes(gzip.compress(content[:7]) + gzip.compress(content[7:]))
    np.testing.assert_array_equal(idx.read_idx(path), [[0, 1, 2], [3, 4, 5]])


def test_gzip_ending_inside_the_stream_is_a_damaged_file(tmp_path):
    path = tmp_path / "cut.gz"
    payload = np.random.default_rng(0).bytes(4000)  # incompressible, so the cut is mid-stream
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (4000,), payload))[:-2000])
    with pytest.raises(DataError, match="damaged gzip file"):
        idx.read_idx(path)
