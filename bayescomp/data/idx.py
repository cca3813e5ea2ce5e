"""Reader (and a small writer) for the IDX format of MNIST and Fashion-MNIST.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a header followed by raw
big-endian data:

* bytes 0-1: zero;
* byte 2: the element type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32,
  0x0D float32, 0x0E float64);
* byte 3: the number of dimensions ``d``;
* ``d`` big-endian 32-bit unsigned sizes;
* the elements in C order.

Files are often gzipped (``*.gz``); gzip is recognised by its magic bytes, not by the name.
Everything that can be wrong with a file (truncated, bad magic, unknown type, extra bytes, a bad
gzip stream, a header declaring more data than :data:`MAX_DATA_BYTES`) is reported as one
:class:`~bayescomp.errors.DataError` naming the file.

A gzipped file is inflated in pieces and never beyond what its own header declares (plus one
byte, to detect trailing data), so a small "gzip bomb" costs at most the declared size, which is
itself capped: memory stays proportional to what the file can legitimately describe.
"""

from __future__ import annotations

import gzip
import math
import os
import typing
import zlib

import numpy as np

from bayescomp.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"

# Element type code -> big-endian numpy dtype, as defined by the IDX format.
_DTYPE_BY_CODE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_DTYPE = {dtype.newbyteorder("="): code for code, dtype in _DTYPE_BY_CODE.items()}


class IdxFiles(typing.NamedTuple):
    """The four file names (without ``.gz``) of an MNIST-style dataset."""

    train_images: str
    train_labels: str
    test_images: str
    test_labels: str


# MNIST and Fashion-MNIST use the same file names.
MNIST_IDX_FILES = IdxFiles(
    train_images="train-images-idx3-ubyte",
    train_labels="train-labels-idx1-ubyte",
    test_images="t10k-images-idx3-ubyte",
    test_labels="t10k-labels-idx1-ubyte",
)


# The largest data payload a header may declare: 4 GiB. The biggest IDX datasets in use (EMNIST
# ByClass, ~0.7 GB) fit with room to spare, while a header that would need more memory than a
# workstation has is refused before anything is allocated or inflated.
MAX_DATA_BYTES = 4 << 30

# numpy arrays have at most 64 dimensions; no image or label file needs more than 4.
_MAX_DIMS = 32

_REDO = "download or copy the file again"


def _parse_header(content: bytes, path: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validates the header at the start of ``content``.

    Returns:
        ``(dtype, shape, header_length)``; the payload must hold ``prod(shape) * itemsize`` bytes,
        computed with Python integers (numpy's int64 product would wrap for hostile shapes).

    Raises:
        DataError: If the header is incomplete or invalid, or declares more than
            :data:`MAX_DATA_BYTES` of data.
    """
    if len(content) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(content)} bytes, shorter than the "
                        f"4-byte header; {_REDO}")
    if content[0] != 0 or content[1] != 0:
        raise DataError(f"{path} is not an IDX file: it starts with bytes "
                        f"{content[:4].hex(' ')} instead of 00 00 <type> <ndim>; "
                        "pass the uncompressed or gzipped MNIST-style IDX files")
    type_code, num_dims = content[2], content[3]
    if type_code not in _DTYPE_BY_CODE:
        known = ", ".join(f"0x{code:02X}" for code in _DTYPE_BY_CODE)
        raise DataError(f"IDX file {path} has unknown element type code 0x{type_code:02X} "
                        f"(known: {known}); the file is corrupt or not an IDX file; {_REDO}")
    if num_dims == 0 or num_dims > _MAX_DIMS:
        raise DataError(f"IDX file {path} declares {num_dims} dimensions (images and labels have "
                        f"1 to 4, at most {_MAX_DIMS} are read); the file is corrupt; {_REDO}")
    header_length = 4 + 4 * num_dims
    if len(content) < header_length:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(content)} bytes, "
                        f"the header of a {num_dims}-d array needs {header_length}); {_REDO}")
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", num_dims, offset=4))
    dtype = _DTYPE_BY_CODE[type_code]
    data_length = math.prod(shape) * dtype.itemsize
    if data_length > MAX_DATA_BYTES:
        raise DataError(f"IDX file {path} declares shape {shape} of {dtype.name}, "
                        f"{data_length} data bytes, more than the {MAX_DATA_BYTES} bytes bayescomp "
                        f"reads from one file; the header is corrupt; {_REDO}")
    return dtype, shape, header_length


def _gunzip_bounded(compressed: bytes, path: str) -> bytes:
    """Inflates gzip data, never beyond what the IDX header inside it declares (+1 byte).

    The header is inflated first; the rest only up to the declared data length plus one byte, so
    that a stream inflating to more is reported as "longer than its header says" without
    inflating all of it. Concatenated gzip members (valid gzip) are read one after the other.
    """
    pieces: list[bytes] = []
    remaining = 4  # first the fixed part of the header, then as the header says
    header_known = False
    pending = compressed
    try:
        while pending and remaining > 0:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # one gzip member
            while remaining > 0 and not inflater.eof:
                piece = inflater.decompress(pending, min(remaining, 1 << 24))
                pending = inflater.unconsumed_tail
                pieces.append(piece)
                remaining -= len(piece)
                if remaining <= 0 and not header_known:
                    content = b"".join(pieces)
                    if len(content) == 4 and 0 < content[3] <= _MAX_DIMS:
                        remaining += 4 * content[3]  # the sizes follow
                        if len(content) < 4 + 4 * content[3]:
                            continue
                    try:
                        dtype, shape, header_length = _parse_header(content, path)
                    except DataError:
                        return content  # parse_idx reports it, with the same message
                    header_known = True
                    remaining = header_length + math.prod(shape) * dtype.itemsize + 1 \
                        - len(content)
                if not piece and not pending:
                    break
            if inflater.eof:
                pending = inflater.unused_data
            elif remaining > 0:
                raise DataError(f"IDX file {path} is a damaged gzip file (the compressed data "
                                f"ends early); {_REDO}")
    except zlib.error as error:
        raise DataError(f"IDX file {path} is a damaged gzip file ({error}); {_REDO}") from error
    return b"".join(pieces)


def _read_bytes(path: str) -> bytes:
    """Returns the content of ``path``, gunzipped (bounded) if it starts with the gzip magic."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_DATA_BYTES + 4 + 4 * 255:
                raise DataError(f"IDX file {path} has {size} bytes, more than any IDX file "
                                f"bayescomp reads ({MAX_DATA_BYTES} data bytes); pass the "
                                "MNIST-style image and label files")
            content = file.read()
    except OSError as error:
        raise DataError(f"cannot read IDX file {path}: {error.strerror or error}; "
                        "check that it exists and is readable") from error
    if content[:2] != _GZIP_MAGIC:
        return content
    return _gunzip_bounded(content, path)


def parse_idx(content: bytes, path: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an (already gunzipped) IDX file.

    Args:
        content: The whole file content.
        path: Shown in error messages.

    Returns:
        An array with the shape stored in the header and the stored element type, in native
        byte order (e.g. ``uint8`` of shape ``(60000, 28, 28)`` for MNIST training images).

    Raises:
        DataError: If the header is invalid or the payload is not exactly as long as the header
            says.
    """
    dtype, shape, header_length = _parse_header(content, path)
    expected_length = math.prod(shape) * dtype.itemsize
    payload_length = len(content) - header_length
    if payload_length != expected_length:
        problem = "truncated" if payload_length < expected_length else "longer than its header says"
        raise DataError(f"IDX file {path} is {problem}: the header declares shape {shape} of "
                        f"{dtype.name} ({expected_length} data bytes) but {payload_length} data "
                        f"bytes follow; {_REDO}")
    array = np.frombuffer(content, dtype, offset=header_length).reshape(shape)
    # Native byte order so that downstream code never sees big-endian arrays.
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file, raw or gzipped.

    Args:
        path: The file.

    Returns:
        The stored array in native byte order; see :func:`parse_idx`.

    Raises:
        DataError: If the file cannot be read, is a damaged gzip file or is not a valid IDX file.
    """
    path = os.fspath(path)
    return parse_idx(_read_bytes(path), path)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = False) -> None:
    """Writes ``array`` as an IDX file (used by tests and to convert data for ``data.dir``).

    Args:
        path: Destination file.
        array: Array of one of the IDX element types (uint8, int8, int16, int32, float32,
            float64) with at least one dimension.
        compress: Gzip the file.
    """
    array = np.asarray(array)
    code = _CODE_BY_DTYPE.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX cannot store a {array.ndim}-d array of {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    content = header + np.ascontiguousarray(array, _DTYPE_BY_CODE[code]).tobytes()
    if compress:
        content = gzip.compress(content, compresslevel=6)
    with open(path, "wb") as file:
        file.write(content)


def find_idx_files(directory: str, names: IdxFiles) -> tuple[IdxFiles | None, str]:
    """Looks for the four IDX files in ``directory``, each raw or with ``.gz``.

    Args:
        directory: Where to look.
        names: The expected file names without ``.gz``.

    Returns:
        ``(paths, "")`` when all four exist (raw preferred over ``.gz``: it reads faster), else
        ``(None, reason)`` with a short reason such as ``"missing t10k-labels-idx1-ubyte[.gz]"``.
    """
    found, missing = [], []
    for name in names:
        candidates = [os.path.join(directory, name), os.path.join(directory, name + ".gz")]
        path = next((candidate for candidate in candidates if os.path.isfile(candidate)), None)
        found.append(path)
        if path is None:
            missing.append(name + "[.gz]")
    if len(missing) == len(names):
        return None, "no IDX files"
    if missing:
        return None, "incomplete IDX files, missing " + ", ".join(missing)
    return IdxFiles(*found), ""


def read_idx_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split: an images file and its labels file.

    Args:
        images_path: IDX file of ``uint8`` images, shape ``(N, H, W)`` (or ``(N, H, W, C)``).
        labels_path: IDX file of ``uint8`` labels, shape ``(N,)``.

    Returns:
        ``(images, labels)``: ``uint8`` images of shape ``(N, H, W, C)`` (a channel axis of size
        1 is added to 3-d files) and ``int32`` labels of shape ``(N,)``.

    Raises:
        DataError: If a file is invalid, has the wrong element type or rank, or the counts differ.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"IDX images file {images_path} holds a {images.ndim}-d {images.dtype} "
                        "array; expected uint8 images of shape (N, H, W); check that the images "
                        "and labels files are not swapped")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"IDX labels file {labels_path} holds a {labels.ndim}-d {labels.dtype} "
                        "array; expected integer labels of shape (N,); check that the images and "
                        "labels files are not swapped")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels; the two files do not belong together")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images, labels.astype(np.int32)
