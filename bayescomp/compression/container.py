"""The on-disk container of a compressed model (``.bcz``): framing, header, payload, checksum.

Layout (all integers little-endian; byte offsets from the start of the file; see
``bayescomp/compression/README.md`` for the header fields)::

    0   4  magic          b"BCZ\\x00"
    4   2  version        uint16: 2 or 3 is written (3 where the network has BatchNorms);
                          1, 2 and 3 are read (version 1 has no codebook layers, version 2 no
                          BatchNorms, see the README)
    6   2  flags          uint16, must be 0
    8   8  file_length    uint64, total size of the file in bytes, checksum included
    16  4  header_length  uint32, H
    20  H  header         JSON, UTF-8, one object
    20+H P payload        the streams, addressed by [offset, length] pairs in the header
                          (offsets relative to the payload start); P = file_length - 24 - H
    end-4 4 crc32         uint32, zlib.crc32 of every byte before it

This module knows nothing about networks; :mod:`bayescomp.compression.codec` fills the header
and the payload. Every problem with a file raises :class:`bayescomp.errors.CompressedFileError`
whose message names the file, says what is wrong and what to do.
"""

from __future__ import annotations

import json
import struct
import zlib

from bayescomp.errors import CompressedFileError

MAGIC = b"BCZ\x00"
#: The newest version, which :func:`pack` writes unless told otherwise. Version 2 added
#: weight-shared (codebook) layers, version 3 BatchNorm parameters and the model's widths; an
#: older file is a valid newer one without them, so all are read. The codec writes the oldest
#: version that holds the network (:mod:`bayescomp.compression.codec`).
VERSION = 3
#: The versions :func:`unpack` accepts.
SUPPORTED_VERSIONS = (1, 2, 3)
_PREAMBLE = struct.Struct("<4sHHQI")
PREAMBLE_SIZE = _PREAMBLE.size  # 20
CHECKSUM_SIZE = 4
#: Largest header accepted when reading (a guard against absurd lengths in foreign files).
MAX_HEADER_LENGTH = 16 * 2**20

HINT = "re-run `python -m bayescomp.compress RUN_DIR` on the training run to write it again"


def file_error(source: str, what: str, hint: str = HINT) -> CompressedFileError:
    """The error for a bad file: ``"<source>: <what>; <hint>"``."""
    return CompressedFileError(f"compressed model file {source}: {what}; {hint}")


class PayloadWriter:
    """Collects the payload streams and hands out their ``[offset, length]`` addresses."""

    def __init__(self):
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> list[int]:
        """Append ``data`` and return its ``[offset, length]`` within the payload."""
        address = [self._size, len(data)]
        self._parts.append(bytes(data))
        self._size += len(data)
        return address

    def getvalue(self) -> bytes:
        """The payload: every added stream, in order, without padding."""
        return b"".join(self._parts)


def pack(header: dict, payload: bytes, version: int = VERSION) -> bytes:
    """The complete file for ``header`` (JSON-serialisable) and ``payload``.

    ``version``: the codec passes the oldest version that holds its network; tests pass older
    ones to build old files.
    """
    header_bytes = json.dumps(header, separators=(",", ":"), sort_keys=True,
                              allow_nan=False).encode("utf-8")
    file_length = PREAMBLE_SIZE + len(header_bytes) + len(payload) + CHECKSUM_SIZE
    body = _PREAMBLE.pack(MAGIC, version, 0, file_length, len(header_bytes)) + header_bytes + payload
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes, source: str = "<bytes>") -> tuple[dict, bytes]:
    """Check the framing and checksum of a file and return ``(header, payload)``.

    See :func:`read`, which also returns the format version.
    """
    _, header, payload = read(data, source)
    return header, payload


def read(data: bytes, source: str = "<bytes>") -> tuple[int, dict, bytes]:
    """Check the framing and checksum of a file and return ``(version, header, payload)``.

    Checks, in order: empty, magic (foreign file), preamble complete, version, length
    (truncated or trailing bytes), CRC32 (bit flips), flags, header length, header JSON.

    Raises:
        CompressedFileError: On any problem, naming ``source``.
    """
    data = bytes(data)
    if len(data) == 0:
        raise file_error(source, "the file is empty (0 bytes)")
    if data[: len(MAGIC)] != MAGIC[: min(len(data), len(MAGIC))]:
        raise file_error(
            source, f"not a bayescomp compressed model (.bcz) file: it starts with "
            f"{data[:8]!r}, a .bcz file starts with {MAGIC!r}",
            "check the path; only files written by bayescomp.compress can be loaded")
    if len(data) < PREAMBLE_SIZE + CHECKSUM_SIZE:
        raise file_error(source, f"the file is truncated: {len(data)} bytes, shorter than the "
                         f"{PREAMBLE_SIZE + CHECKSUM_SIZE}-byte minimum")
    _, version, flags, file_length, header_length = _PREAMBLE.unpack_from(data, 0)
    if version not in SUPPORTED_VERSIONS:
        raise file_error(
            source, f"unsupported format version {version} (this bayescomp reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}); the file was written by another "
            "bayescomp version or is corrupt",
            f"load it with the bayescomp version that wrote it, or {HINT}")
    if len(data) != file_length:
        what = (f"the file is truncated: {len(data)} of {file_length} bytes"
                if len(data) < file_length else
                f"the file has {len(data) - file_length} unexpected bytes after its end "
                f"({len(data)} bytes, the header says {file_length})")
        raise file_error(source, what + " (incomplete copy or corruption)")
    (stored_crc,) = struct.unpack_from("<I", data, len(data) - CHECKSUM_SIZE)
    actual_crc = zlib.crc32(data[: len(data) - CHECKSUM_SIZE])
    if stored_crc != actual_crc:
        raise file_error(source, f"checksum mismatch (CRC32 stored {stored_crc:#010x}, computed "
                         f"{actual_crc:#010x}): the file is corrupt")
    if flags != 0:
        raise file_error(source, f"unknown flags {flags:#06x} in the preamble (version {version} "
                         "files have none)")
    if header_length > min(MAX_HEADER_LENGTH, len(data) - PREAMBLE_SIZE - CHECKSUM_SIZE):
        raise file_error(source, f"header length {header_length} does not fit in the file")
    header_bytes = data[PREAMBLE_SIZE: PREAMBLE_SIZE + header_length]
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise file_error(source, f"the header is not valid UTF-8 JSON ({error})") from None
    if not isinstance(header, dict):
        raise file_error(source, "the header is not a JSON object")
    payload = data[PREAMBLE_SIZE + header_length: len(data) - CHECKSUM_SIZE]
    return version, header, payload
