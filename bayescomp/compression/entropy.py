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
#: Fixed-point precision of constriction's ``Categorical`` model: every probability is a multiple
#: of ``2^-24`` and the leaky (``perfect=False``) quantization gives every symbol at least one.
PRECISION_BITS = 24
#: Most distinct symbols one entropy-coded stream may have. The leaky quantization needs one unit
#: of ``2^-24`` per symbol plus room to round the rest: at ``2^24 - 215`` uniform symbols
#: constriction 0.5 already refuses the distribution ("not normalizable"), so half the precision
#: is kept as a safe margin. Larger alphabets are stored at a fixed width (``codec``).
MAX_MODEL_SYMBOLS = 2**23
#: Slack of the information bound (:func:`min_payload_bits`) for the ANS coder's 64-bit state,
#: whose bits may carry information beyond the emitted words.
_STATE_BITS = 64
#: Bound on how far constriction's quantized probability of a symbol can exceed ``c_s / N``. Its
#: leaky quantization rounds the scaled cumulative distribution, so each weight is within two
#: units of ``2^-24`` of ``p_s`` scaled; ``2^-20`` leaves a factor 8 of margin.
_QUANTIZATION_SLACK = 2.0**-20


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


def can_code(num_distinct: int) -> bool:
    """Whether a stream with ``num_distinct`` distinct values can be entropy-coded (and decoded)."""
    return num_distinct <= MAX_MODEL_SYMBOLS


def min_payload_bits(counts: np.ndarray) -> float:
    """Fewest payload bits any ANS stream reproducing the histogram ``counts`` can have.

    The decoder checks that the decoded symbols reproduce the stored histogram, so a valid
    payload codes ``c_s`` occurrences of every symbol ``s``. Under the coder's quantized model
    ``q`` that costs ``I = Σ_s c_s · (−log2 q_s)`` bits; ANS spends at least ``I`` bits less the
    ``64`` bits its state can hold beyond the emitted words. ``q`` is not exposed by
    constriction, so it is bounded from above: ``q_s ≤ c_s/N + 2^-20`` (quantization error, see
    ``_QUANTIZATION_SLACK``) and ``q_s ≤ 1 − (n−1)·2^-24`` (every other symbol keeps at least
    one unit). With ``q_s`` bounded above, ``−log2 q_s`` is bounded below, hence ``I`` is.

    This is the brief's "minimum code length times count" bound made per symbol: a header that
    claims 2^31 symbols of a two-symbol model needs ≥ ``2^31 · (−log2(1 − 2^-24))`` ≈ 184 bits,
    and a payload shorter than the bound is refused before the coder runs (constriction would
    otherwise allocate for every claimed symbol, and abort the interpreter when it cannot).

    Returns:
        ``max(0, I_min − 64)`` in bits.
    """
    counts = np.asarray(counts, np.float64)
    if counts.size < 2:
        return 0.0
    total = counts.sum()
    ceiling = 1.0 - (counts.size - 1) * 2.0**-PRECISION_BITS
    q_bound = np.minimum(counts / total + _QUANTIZATION_SLACK, ceiling)
    return max(0.0, float((counts * -np.log2(q_bound)).sum()) - _STATE_BITS)


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
    if n > MAX_MODEL_SYMBOLS:
        raise ValueError(f"symbol model of {n} distinct values exceeds the coder's "
                         f"{MAX_MODEL_SYMBOLS}")
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
    if not can_code(len(values)):
        raise ValueError(f"{len(values)} distinct symbols exceed the coder's {MAX_MODEL_SYMBOLS}; "
                         "store the stream at a fixed width")
    model = serialize_model(values, counts)
    entropy = empirical_entropy_bits(counts)
    if len(values) == 1:
        return CodedStream(model, b"", symbols.size, entropy)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(indices.astype(np.int32), _categorical(counts))
    payload = np.asarray(coder.get_compressed(), np.uint32).astype("<u4").tobytes()
    return CodedStream(model, payload, symbols.size, entropy)


def decode(model: bytes, payload: bytes, num_symbols: int, max_symbols: int) -> np.ndarray:
    """Decode ``num_symbols`` integers (int64) coded by :func:`encode`.

    Every size is checked before anything is allocated or handed to constriction: the count
    against ``max_symbols`` (what the caller's layer can hold), the alphabet against
    :data:`MAX_MODEL_SYMBOLS`, and the payload against the information the stored histogram
    needs (:func:`min_payload_bits`). Memory and time are then ``O(num_symbols)`` with
    ``num_symbols ≤ max_symbols``, and constriction is never asked for more symbols than the
    payload can hold.

    Args:
        model: The serialized histogram.
        payload: The ANS words.
        num_symbols: The header's count.
        max_symbols: The most symbols the caller accepts.

    Raises:
        ValueError: If model and payload are inconsistent (wrong counts, leftover or missing
            payload words, a model that does not describe ``num_symbols`` symbols, more symbols
            than ``max_symbols`` or than the payload can code).
    """
    if num_symbols > max_symbols:
        raise ValueError(f"{num_symbols} symbols where at most {max_symbols} fit")
    values, counts = parse_model(model)
    if int(counts.sum()) != num_symbols:
        raise ValueError(f"symbol model counts {int(counts.sum())} symbols, header says {num_symbols}")
    if not can_code(len(values)):
        raise ValueError(f"symbol model of {len(values)} distinct values exceeds the coder's "
                         f"{MAX_MODEL_SYMBOLS}")
    needed = min_payload_bits(counts)
    if needed > 8 * len(payload):
        raise ValueError(f"coded payload of {len(payload)} bytes is shorter than the "
                         f"{needed / 8:.0f} bytes its {num_symbols} symbols need")
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
