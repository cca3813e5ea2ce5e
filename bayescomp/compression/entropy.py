"""Entropy coding of integer symbol streams with constriction (ANS, categorical model).

A stream of integers (quantized weights ``k`` or gaps between kept positions) is coded as:

* a **model**: the sorted table of the distinct integers that occur and how often each occurs
  (exact counts, the empirical histogram). The decoder rebuilds the identical
  ``constriction.stream.model.Categorical(counts / sum(counts), perfect=False)`` from it;
  ``counts / sum`` is one IEEE float64 division per entry and constriction's fixed-point
  quantization of it is deterministic, so encoder and decoder use bit-identical models;
* a **payload**: the indices of the symbols into that table, coded with constriction's
  ``stack.AnsCoder`` (asymmetric numeral systems, 32-bit words), stored as little-endian uint32.

Special cases: an empty stream has an empty model and payload; a stream with one distinct value
has a one-entry model and an empty payload (its entropy is 0 and constriction cannot build a
one-symbol categorical).

Model serialization: LEB128 varints, see :func:`serialize_model` (a sorted table is mostly gaps
of 0, one byte each, so the model costs about 2-3 bytes per distinct value).

Everything here raises :class:`ValueError` on malformed input; :mod:`bayescomp.compression.codec`
turns that into a :class:`bayescomp.errors.CompressedFileError` naming the file.
"""

from __future__ import annotations

import dataclasses

import constriction
import numpy as np

#: Name of the coding scheme recorded in the file header.
CODER = "constriction-ans-categorical"


@dataclasses.dataclass(frozen=True)
class CodedStream:
    """One entropy-coded integer stream.

    Attributes:
        model: Serialized symbol table and counts.
        payload: ANS-coded symbol indices (uint32 words, little-endian).
        num_symbols: Length of the stream.
        entropy_bits: Empirical entropy bound ``Σ_i −log2 p̂(x_i)`` of the stream under its own
            histogram, in bits (the ideal code length of the payload).
    """

    model: bytes
    payload: bytes
    num_symbols: int
    entropy_bits: float


def _categorical(counts: np.ndarray):
    probabilities = counts.astype(np.float64) / float(counts.sum())
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def empirical_entropy_bits(counts: np.ndarray) -> float:
    """``Σ_s c_s · (−log2(c_s / N))``: the ideal code length of a stream with histogram ``counts``."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    return float(-(counts * np.log2(counts / total)).sum())


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _get_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("symbol model ends inside a number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("symbol model holds a number wider than 64 bits")


def serialize_model(values: np.ndarray, counts: np.ndarray) -> bytes:
    """The model bytes for a strictly increasing table ``values`` with ``counts``.

    LEB128 varints (7 bits a byte, low bits first, high bit = more bytes follow): ``n``; the first
    value zigzag-mapped (``2v`` for ``v >= 0``, ``-2v-1`` for ``v < 0``); then the ``n-1`` gaps
    ``values[i] - values[i-1] - 1``; then the ``n`` counts minus one. An empty table is 0 bytes.
    """
    values = [int(v) for v in np.asarray(values, np.int64)]
    counts = [int(c) for c in np.asarray(counts, np.int64)]
    if not values:
        return b""
    if max(counts) >= 2**32 or min(counts) < 1:
        raise ValueError("symbol counts must be in 1 .. 2^32-1")
    out = bytearray()
    _put_varint(out, len(values))
    first = values[0]
    _put_varint(out, 2 * first if first >= 0 else -2 * first - 1)
    for previous, value in zip(values, values[1:]):
        _put_varint(out, value - previous - 1)
    for count in counts:
        _put_varint(out, count - 1)
    return bytes(out)


def parse_model(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`serialize_model`, with every field checked.

    Raises:
        ValueError: If the bytes do not describe a valid table.
    """
    if len(data) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n, pos = _get_varint(data, 0)
    if n == 0 or 2 * n > len(data):  # every entry takes at least 2 bytes (value or gap, count)
        raise ValueError(f"symbol model of {len(data)} bytes cannot hold {n} symbols")
    first, pos = _get_varint(data, pos)
    values = [first // 2 if first % 2 == 0 else -(first + 1) // 2]
    for _ in range(n - 1):
        gap, pos = _get_varint(data, pos)
        values.append(values[-1] + gap + 1)
    counts = []
    for _ in range(n):
        count, pos = _get_varint(data, pos)
        counts.append(count + 1)
    if pos != len(data):
        raise ValueError("symbol model has bytes left after its last count")
    if values[-1] >= 2**63 or values[0] < -(2**63) or max(counts) >= 2**32:
        raise ValueError("symbol model value or count out of range")
    return np.asarray(values, np.int64), np.asarray(counts, np.int64)


def encode(symbols: np.ndarray) -> CodedStream:
    """Entropy-code an integer stream with a categorical model of its own histogram.

    Args:
        symbols: 1-D integer array.

    Returns:
        The :class:`CodedStream`.
    """
    symbols = np.asarray(symbols).astype(np.int64).ravel()
    if symbols.size == 0:
        return CodedStream(b"", b"", 0, 0.0)
    values, indices, counts = np.unique(symbols, return_inverse=True, return_counts=True)
    model = serialize_model(values, counts)
    entropy = empirical_entropy_bits(counts)
    if len(values) == 1:
        return CodedStream(model, b"", symbols.size, entropy)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(indices.astype(np.int32), _categorical(counts))
    payload = np.asarray(coder.get_compressed(), np.uint32).astype("<u4").tobytes()
    return CodedStream(model, payload, symbols.size, entropy)


def decode(model: bytes, payload: bytes, num_symbols: int) -> np.ndarray:
    """Decode ``num_symbols`` integers (int64) coded by :func:`encode`.

    Raises:
        ValueError: If model and payload are inconsistent (wrong counts, leftover or missing
            payload words, a model that does not describe ``num_symbols`` symbols).
    """
    values, counts = parse_model(model)
    if int(counts.sum()) != num_symbols:
        raise ValueError(f"symbol model counts {int(counts.sum())} symbols, header says {num_symbols}")
    if num_symbols == 0 or len(values) == 1:
        if payload:
            raise ValueError("a constant or empty stream must have an empty payload")
        return np.full(num_symbols, values[0] if len(values) else 0, np.int64)
    if len(payload) % 4 or not payload:
        raise ValueError(f"coded payload of {len(payload)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(payload, "<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    try:
        indices = np.asarray(coder.decode(_categorical(counts), num_symbols))
    except Exception as error:  # constriction raises on an exhausted or invalid stream
        raise ValueError(f"entropy decoder failed: {error}") from None
    if not coder.is_empty():
        raise ValueError("coded payload has data left after the last symbol")
    # The histogram is part of the model: a decoded stream that does not reproduce it is corrupt.
    if not np.array_equal(np.bincount(indices, minlength=len(values)), counts):
        raise ValueError("decoded symbols do not match the stored histogram")
    return values[indices]
