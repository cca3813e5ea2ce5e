"""Encode a :class:`~bayescomp.compression.quantize.QuantizedNetwork` into a ``.bcz`` file and back.

Per layer (kernel in Flax layout: dense ``(in, out)``, conv ``(kh, kw, in, out)``):

* **Architecture**: bitmaps of the kept inputs (axis ``-2``) and kept outputs (axis ``-1``): an
  input/output unit (or channel) is kept if the mask keeps any of its weights. The *pruned dense
  block* is the kernel restricted to kept inputs and outputs (all taps of a conv kernel).
* **Positions** of the kept weights inside the block, one of (the smallest is chosen and
  recorded in the header as ``positions``):

  - ``"full"``: every weight of the block is kept (structured / group pruning); nothing stored;
  - ``"bitmap"``: the block's mask, entropy-coded as a 0/1 stream;
  - ``"gaps"``: the number of dropped weights before each kept one (C order), entropy-coded.
* **Values** (C order in the block), by the layer's ``values_kind``:

  - ``"fixed_point"``: each kept weight is ``w = k · 2^-t`` exactly
    (:func:`bayescomp.bit_precision.round_to_bits`), so the integers ``k`` are entropy-coded
    (:mod:`bayescomp.compression.entropy`); zeros that rounding produced are symbols like any
    other. Bayesian Compression's networks.
  - ``"codebook"`` (format version 2): the layer's weights are shared, every kept weight is one
    entry of a sorted float32 codebook ``c_0 < … < c_{K-1}`` (Deep Compression's k-means
    centroids, Han, Mao & Dally 2016, §3; soft weight-sharing's mixture means). The codebook is
    stored once as raw float32 and the indices ``j`` with ``w = c_j`` are coded, which is Deep
    Compression's "index into a shared-weight table" with ANS in place of its Huffman code.

  Either way the symbols are entropy-coded with their histogram, or packed at one fixed width
  where that is smaller (nearly distinct values).
* **Bias**: raw float32, full length.

Removed weights decode as ``+0.0``; kept weights decode bit for bit as encoded (a codebook layer's
kept weights must equal codebook entries bit for bit, ``-0.0`` and ``+0.0`` being different).

**BatchNorms** (format version 3): a model with BatchNorms (the CIFAR VGGs and ResNets) stores,
per BatchNorm in sorted path order, its ε and the γ, β, running mean and running variance of the
channels whose values can reach the logits, as raw float32. Which channels those are is not
stored: it follows from the decoded masks and the model's channel groups
(:func:`bayescomp.compression.survivors.norm_channels`: the channels some consumer keeps a weight
reading), and the other channels decode as γ = β = mean = 0, variance = 1
(:data:`bayescomp.compression.quantize.NEUTRAL_NORM`). Version 3 also records the model's
``widths`` (a ResNet's are per stage; they cannot be read off its kernels as the LeNets' are).

**Versions.** The writer writes the lowest version that holds the network: version 2 for a model
without BatchNorms whose widths are its layers' output sizes (every LeNet file, byte for byte as
before), version 3 otherwise. Versions 1 and 2 are read as before; a version-1 or 2 file naming a
model with BatchNorms is refused (it cannot hold their statistics).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from flax import nnx

from bayescomp import atomic
from bayescomp.bit_precision import BitPrecision
from bayescomp.compression import container, entropy
from bayescomp.compression.container import file_error
from bayescomp.compression.quantize import (
    NEUTRAL_NORM,
    NORM_FIELDS,
    NormParams,
    QuantizedNetwork,
    point_model,
)
from bayescomp.compression.survivors import norm_channels
from bayescomp.models.graph import ChannelGraph, ChannelGroup

#: Largest significand width accepted (k · 2^-t must be exact in float32 and float64).
MAX_SIGNIFICAND_BITS = 60
#: Largest number of weights (kernel entries, kept or not) one file may describe, all layers
#: together: 2^26 = 67,108,864, 150 times LeNet-5 and four times VGG-16 for CIFAR-10 (15 M).
#: The decoder returns dense kernels and masks and needs at most about 32 bytes per weight
#: (float32 kernel, bool mask, the pruned block and its int64/float64 values while a layer is
#: decoded), so any accepted file decodes in at most about 2 GiB however small it is.
MAX_FILE_WEIGHTS = 2**26
#: Largest number of weights in one layer accepted when reading (no more than the whole file).
MAX_LAYER_WEIGHTS = MAX_FILE_WEIGHTS
#: Largest codebook accepted (a codebook holds distinct float32 values of one layer).
MAX_CODEBOOK_SIZE = 2**24
#: How a layer's kept values are stored (``values_kind`` in the header; version 1 has only the
#: first, implicitly).
VALUES_KINDS = ("fixed_point", "codebook")
#: The first format version that stores BatchNorm parameters and the model's ``widths``.
NORMS_VERSION = 3
#: Bytes per stored BatchNorm channel: γ, β, running mean and running variance, float32 each.
NORM_CHANNEL_BYTES = 4 * len(NORM_FIELDS)
#: Most entries of a version-3 file's ``widths`` (a ResNet-164 has 3 stage widths; a model that
#: listed every channel count of a 1000-layer network would still fit).
MAX_WIDTHS = 4096


@dataclasses.dataclass(frozen=True)
class LayerCoding:
    """How one layer was stored, and what it cost.

    Attributes:
        name: Layer path.
        kind: ``"dense"`` or ``"conv"``.
        kernel_shape: Unpruned kernel shape.
        kept_inputs: Kept input units / channels.
        kept_outputs: Kept output units / channels.
        positions: ``"full"``, ``"bitmap"`` or ``"gaps"``.
        values_coding: ``"ans"`` (entropy-coded) or ``"fixed"`` (fixed-width integers).
        num_values: Number of coded weight values (the value symbols).
        value_bytes: Bytes of the coded value payload.
        value_model_bytes: Bytes of the value symbol table and counts.
        value_entropy_bits: Empirical entropy bound of the values, ``Σ −log2 p̂`` in bits.
        position_bytes: Bytes of position payload plus its model (0 for ``"full"``).
        position_entropy_bits: Entropy bound of the position stream in bits.
        bitmap_bytes: Bytes of the two keep bitmaps.
        bias_bytes: Bytes of the raw bias.
        values_kind: ``"fixed_point"`` (integers ``k`` of ``k·2^-t``) or ``"codebook"``
            (indices into the stored codebook).
        codebook_bytes: Bytes of the raw float32 codebook (0 for fixed point).
        position_model_bytes: Bytes of the position symbol table (included in
            ``position_bytes``; 0 for ``"full"``).
    """

    name: str
    kind: str
    kernel_shape: tuple[int, ...]
    kept_inputs: int
    kept_outputs: int
    positions: str
    values_coding: str
    num_values: int
    value_bytes: int
    value_model_bytes: int
    value_entropy_bits: float
    position_bytes: int
    position_entropy_bits: float
    bitmap_bytes: int
    bias_bytes: int
    values_kind: str = "fixed_point"
    codebook_bytes: int = 0
    position_model_bytes: int = 0

    @property
    def value_overhead(self) -> float:
        """Coded value payload over its entropy bound, minus 1 (model bytes not included)."""
        if self.value_entropy_bits == 0:
            return 0.0 if self.value_bytes == 0 else float("inf")
        return 8 * self.value_bytes / self.value_entropy_bits - 1


@dataclasses.dataclass
class DecodedNetwork:
    """Everything a ``.bcz`` file holds.

    Attributes:
        model_name: Registry name of the model class (:data:`bayescomp.models.REGISTRY`).
        input_shape: ``(h, w, c)``.
        num_classes: Number of outputs.
        names, kernels, biases, masks, precision: As in :class:`QuantizedNetwork`.
        layers: Per-layer :class:`LayerCoding`.
        file_bytes: Size of the whole file.
        header_bytes: Size of the JSON header.
        codebooks: As in :class:`QuantizedNetwork`: ``None`` when no layer is a codebook layer,
            else per layer its codebook or ``None``.
        version: The file's format version.
        dataset: Registry name of the dataset the network was trained on, or ``None`` (files
            written before bayescomp recorded it).
        preprocess: The ``data.preprocess`` of training (inputs must be prepared alike), or
            ``None``.
        norms: As :attr:`QuantizedNetwork.norms` (``None``: the model has no BatchNorms).
        widths: The model's ``widths`` recorded in the file (version 3), else ``None`` (the
            output sizes of every layer but the last).
        norm_bytes: Bytes of the stored BatchNorm parameters (raw float32).
    """

    model_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    names: list[str]
    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    masks: list[np.ndarray]
    precision: BitPrecision
    layers: list[LayerCoding]
    file_bytes: int
    header_bytes: int
    codebooks: list[np.ndarray | None] | None = None
    version: int = container.VERSION
    dataset: str | None = None
    preprocess: str | None = None
    norms: dict[str, NormParams] | None = None
    widths: tuple[int, ...] | None = None
    norm_bytes: int = 0

    @property
    def quantized(self) -> QuantizedNetwork:
        """The decoded network as a :class:`QuantizedNetwork`."""
        return QuantizedNetwork(self.names, self.kernels, self.biases, self.masks, self.precision,
                                self.codebooks, self.norms, self.widths)


# ----------------------------------------------------------------------------------------------
# Helpers shared by encoder and decoder
# ----------------------------------------------------------------------------------------------


def _kind(shape) -> str:
    return {2: "dense", 4: "conv"}[len(shape)]


def _block_index(shape, kept_in: np.ndarray, kept_out: np.ndarray):
    """Open-mesh index of the pruned dense block (all leading axes, kept inputs, kept outputs)."""
    return np.ix_(*[np.arange(n) for n in shape[:-2]], np.flatnonzero(kept_in),
                  np.flatnonzero(kept_out))


def _pack_bits(bits: np.ndarray) -> bytes:
    return np.packbits(np.asarray(bits, bool), bitorder="little").tobytes()


def _unpack_bits(data: bytes, n: int) -> np.ndarray:
    if len(data) != (n + 7) // 8:
        raise ValueError(f"keep bitmap of {len(data)} bytes for {n} units")
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little").astype(bool)
    if bits[n:].any():
        raise ValueError("keep bitmap has padding bits set")
    return bits[:n]


def _registry():
    from bayescomp.models import REGISTRY  # late import: models pull in the layer stack

    return REGISTRY


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


def _integer_values(name: str, values: np.ndarray, bits: int) -> np.ndarray:
    scaled = values.astype(np.float64) * 2.0 ** bits
    k = np.rint(scaled)
    if not np.all(np.isfinite(scaled)) or not np.array_equal(k, scaled):
        raise ValueError(f"layer {name}: kept weights are not on the fixed-point grid 2^-{bits}; "
                         "pass the output of bayescomp.compression.quantize.quantize")
    return k.astype(np.int64)


def _pack_unsigned(values: np.ndarray, width: int) -> bytes:
    """Non-negative integers packed at ``width`` bits each, little-endian bit order."""
    bits = (values.astype(np.uint64)[:, None] >> np.arange(width, dtype=np.uint64)) & 1
    return np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _unpack_unsigned(data: bytes, count: int, width: int, name: str) -> np.ndarray:
    if len(data) != -(-count * width // 8):
        raise ValueError(f"layer {name}: {len(data)} bytes of fixed-width values, expected "
                         f"{count} x {width} bits")
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * width]
    bits = bits.reshape(count, width)
    # One bit plane at a time: count * (width + 16) bytes, where widening the whole bit matrix
    # to uint64 would take 8 * count * width (64 times the stream for 64-bit values).
    values = np.zeros(count, np.uint64)
    for bit in range(width):
        values |= bits[:, bit].astype(np.uint64) << np.uint64(bit)
    return values


def _pack_fixed(values: np.ndarray) -> tuple[int, bytes]:
    """Zig-zag the integers (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...) and pack them at one width."""
    zigzag = (values.astype(np.int64) << 1) ^ (values.astype(np.int64) >> 63)
    width = int(zigzag.max()).bit_length() if zigzag.size else 0
    return width, _pack_unsigned(zigzag, width)


def _unpack_fixed(data: bytes, count: int, width: int, name: str) -> np.ndarray:
    zigzag = _unpack_unsigned(data, count, width, name)
    return ((zigzag >> np.uint64(1)).astype(np.int64)) ^ -((zigzag & np.uint64(1)).astype(np.int64))


def _index_width(codebook_size: int) -> int:
    """Bits of a fixed-width index into ``codebook_size`` entries, ``ceil(log2 K)`` (0 for K = 1)."""
    return (int(codebook_size) - 1).bit_length()


def _checked_codebook(name: str, codebook) -> np.ndarray:
    codebook = np.asarray(codebook)
    if codebook.dtype != np.float32 or codebook.ndim != 1 or not codebook.size:
        raise ValueError(f"layer {name}: a codebook must be a non-empty 1-D float32 array, got "
                         f"{codebook.dtype} {codebook.shape}")
    if codebook.size > MAX_CODEBOOK_SIZE:
        raise ValueError(f"layer {name}: codebook of {codebook.size} entries exceeds "
                         f"{MAX_CODEBOOK_SIZE}")
    if not np.all(np.isfinite(codebook)) or np.any(np.diff(codebook) <= 0):
        raise ValueError(f"layer {name}: codebook entries must be finite and strictly increasing")
    return codebook


def _codebook_indices(name: str, values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of each kept weight in the codebook; every weight must be an entry bit for bit."""
    index = np.clip(np.searchsorted(codebook, values), 0, codebook.size - 1)
    if not np.array_equal(codebook[index].view(np.uint32), values.view(np.uint32)):
        raise ValueError(f"layer {name}: kept weights are not all codebook entries (bit for bit; "
                         "-0.0 and +0.0 differ); build the codebook from the kept weights")
    return index.astype(np.int64)


def _encode_layer(name, kernel, bias, mask, bits, payload: container.PayloadWriter,
                  codebook=None) -> dict:
    kernel = np.asarray(kernel, np.float32)
    mask = np.asarray(mask) != 0
    bias = np.asarray(bias, np.float32)
    if kernel.ndim not in (2, 4) or mask.shape != kernel.shape:
        raise ValueError(f"layer {name}: kernel {kernel.shape} and mask {mask.shape} must be equal "
                         "2-D (dense) or 4-D (conv) shapes")
    if bias.shape != (kernel.shape[-1],):
        raise ValueError(f"layer {name}: bias shape {bias.shape}, expected ({kernel.shape[-1]},)")
    if np.any(kernel[~mask] != 0):
        raise ValueError(f"layer {name}: removed weights must be exactly 0")
    if not 0 <= int(bits) <= MAX_SIGNIFICAND_BITS:
        raise ValueError(f"layer {name}: significand bits {bits} outside 0..{MAX_SIGNIFICAND_BITS}")
    axes = tuple(range(kernel.ndim))
    kept_in = mask.any(axis=axes[:-2] + axes[-1:])
    kept_out = mask.any(axis=axes[:-1])
    index = _block_index(kernel.shape, kept_in, kept_out)
    block_mask = mask[index]
    kept_values = kernel[index][block_mask]
    if codebook is None:
        values = _integer_values(name, kept_values, int(bits))
    else:
        codebook = _checked_codebook(name, codebook)
        values = _codebook_indices(name, kept_values, codebook)

    streams = {"input_keep": payload.add(_pack_bits(kept_in)),
               "output_keep": payload.add(_pack_bits(kept_out))}
    layer = {"name": name, "kind": _kind(kernel.shape), "kernel_shape": list(kernel.shape),
             "kept_inputs": int(kept_in.sum()), "kept_outputs": int(kept_out.sum()),
             "num_values": int(values.size)}
    if codebook is None:
        layer["values_kind"], layer["significand_bits"] = "fixed_point", int(bits)
    else:
        # The layer's entry of BitPrecision.bits_per_layer (the index width by convention) is
        # kept so that the precision round-trips; decoding does not need it.
        layer["values_kind"], layer["index_bits"] = "codebook", int(bits)
        layer["codebook_size"] = int(codebook.size)
    if block_mask.all():
        layer["positions"] = "full"
    else:
        flat = block_mask.ravel()
        kept_at = np.flatnonzero(flat)
        candidates = {"bitmap": entropy.encode(flat.astype(np.int64)),
                      "gaps": entropy.encode(np.diff(kept_at, prepend=-1) - 1)}
        choice = min(candidates, key=lambda c: len(candidates[c].model) + len(candidates[c].payload))
        layer["positions"] = choice
        layer["num_positions"] = candidates[choice].num_symbols
        streams["positions_model"] = payload.add(candidates[choice].model)
        streams["positions"] = payload.add(candidates[choice].payload)
    if codebook is not None:
        streams["codebook"] = payload.add(codebook.astype("<f4").tobytes())
    # An alphabet beyond the coder's precision cannot be entropy-coded: fixed width it is.
    coded = (entropy.encode(values) if entropy.can_code(np.unique(values).size) else None)
    if codebook is None:
        width, packed = _pack_fixed(values)
    else:  # indices are non-negative: no zig-zag, ceil(log2 K) bits each
        width = _index_width(codebook.size)
        packed = _pack_unsigned(values, width)
    # Where nearly every value is distinct (a dense network at 23 bits), the stored histogram
    # outweighs what coding saves: store the integers at one fixed width instead.
    if coded is None or len(packed) < len(coded.model) + len(coded.payload):
        layer["values_coding"], layer["value_width"] = "fixed", width
        streams["values_model"] = payload.add(b"")
        streams["values"] = payload.add(packed)
    else:
        layer["values_coding"] = "ans"
        streams["values_model"] = payload.add(coded.model)
        streams["values"] = payload.add(coded.payload)
    streams["bias"] = payload.add(bias.astype("<f4").tobytes())
    layer["streams"] = streams
    return layer


def _chain_widths(shapes) -> tuple[int, ...]:
    """The LeNets' ``widths``: the output size of every layer but the last."""
    return tuple(int(shape[-1]) for shape in list(shapes)[:-1])


def _encode_norms(quantized: QuantizedNetwork, template: _Template,
                  payload: container.PayloadWriter) -> list[dict]:
    """The header entries of the BatchNorms, their parameters appended to ``payload``."""
    norms = quantized.norms or {}
    if sorted(norms) != list(template.norms):
        raise ValueError(f"the model has BatchNorms {list(template.norms)}, the network carries "
                         f"{sorted(norms)} (build it with quantize.quantize, which reads them)")
    needed = norm_channels(template.graph, dict(zip(quantized.names, quantized.masks)))
    entries = []
    for path, channels in template.norms.items():
        params, keep = norms[path], needed[template.norm_groups[path]]
        values = params.stacked()
        if values.shape != (len(NORM_FIELDS), channels):
            raise ValueError(f"BatchNorm {path}: parameters of shape {values.shape[1:]} for "
                             f"{channels} channels")
        neutral = np.asarray([[NEUTRAL_NORM[f]] for f in NORM_FIELDS], np.float32)
        unread = np.broadcast_to(neutral, values.shape)[:, ~keep]
        if not np.array_equal(values[:, ~keep].view(np.uint32), unread.view(np.uint32)):
            raise ValueError(f"BatchNorm {path}: channels no consumer reads must hold the "
                             "neutral values (quantize.NormParams.restricted)")
        _check_norm_values(path, values[:, keep], params.epsilon)
        entries.append({"path": path, "channels": int(keep.sum()),
                        "epsilon": float(params.epsilon).hex(),
                        "streams": {"params": payload.add(values[:, keep].astype("<f4").tobytes())}})
    return entries


def _check_norm_values(path: str, values: np.ndarray, epsilon: float) -> None:
    """Stored BatchNorm values are finite, variances non-negative, ε positive and finite."""
    if not np.all(np.isfinite(values)):
        raise ValueError(f"BatchNorm {path}: parameters hold NaN or infinite values")
    if np.any(values[NORM_FIELDS.index("var")] < 0):
        raise ValueError(f"BatchNorm {path}: a running variance is negative")
    if not (np.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"BatchNorm {path}: epsilon {epsilon!r} is not a positive number")


def encode_network(quantized: QuantizedNetwork, *, model_name: str, input_shape,
                   num_classes: int, dataset: str | None = None,
                   preprocess: str | None = None, widths=None) -> bytes:
    """The ``.bcz`` file of a quantized network.

    Args:
        quantized: From :func:`bayescomp.compression.quantize.quantize`.
        model_name: Registry name of the model class (``"lenet300"``, ``"lenet5"``).
        input_shape: ``(h, w, c)`` the model was built for.
        num_classes: Number of outputs.
        dataset: The training dataset's registry name, so ``bayescomp.evaluate`` tests on it.
        preprocess: The training ``data.preprocess`` (the evaluator prepares inputs alike).
        widths: The model's ``widths`` (``model.widths`` of the run); default
            ``quantized.widths``, else the output sizes of every layer but the last.

    Returns:
        The file's bytes: format version 3 for a model with BatchNorms or widths of its own,
        else version 2 (module docstring).

    Raises:
        ValueError: If the network is inconsistent (a programming error, not a user error).
    """
    registry = _registry()
    if model_name not in registry:
        raise ValueError(f"unknown model {model_name!r}; known: {sorted(registry)}")
    precision = quantized.precision
    count = len(quantized.names)
    codebooks = quantized.codebooks if quantized.codebooks is not None else [None] * count
    if not (len(quantized.kernels) == len(quantized.biases) == len(quantized.masks)
            == len(precision.bits_per_layer) == len(codebooks) == count):
        raise ValueError("QuantizedNetwork fields have different numbers of layers")
    shapes = [tuple(np.shape(kernel)) for kernel in quantized.kernels]
    chain = _chain_widths(shapes)
    widths = quantized.widths if widths is None else widths
    widths = chain if widths is None else tuple(int(w) for w in widths)
    version = 2
    template = None
    if quantized.norms is not None or widths != chain:
        version = NORMS_VERSION
        input_key = tuple(int(n) for n in input_shape)
        template = _model_template(registry[model_name], input_key, int(num_classes), widths)
        found = tuple(zip(quantized.names, shapes))
        if found != template.shapes:
            raise ValueError(f"the network's layers {found} are not {model_name}'s with widths "
                             f"{widths} ({template.shapes}); pass the widths it was built with")
    else:
        try:
            template = _model_template(registry[model_name], tuple(int(n) for n in input_shape),
                                       int(num_classes), widths)
        except ValueError:
            template = None  # not the model's shapes: the decoder says so, as it always has
        if template is not None and template.norms:
            raise ValueError(f"{model_name} has BatchNorms {list(template.norms)}, which the "
                             "network does not carry (build it with quantize.quantize)")
    payload = container.PayloadWriter()
    layers = [
        _encode_layer(name, kernel, bias, mask, bits, payload, codebook)
        for name, kernel, bias, mask, bits, codebook in zip(
            quantized.names, quantized.kernels, quantized.biases, quantized.masks,
            precision.bits_per_layer, codebooks)
    ]
    norms = _encode_norms(quantized, template, payload) if version >= NORMS_VERSION else None
    payload_bytes = payload.getvalue()
    header = {
        "format": "bayescomp compressed model",
        "model": model_name,
        "input_shape": [int(n) for n in input_shape],
        "num_classes": int(num_classes),
        **({"dataset": str(dataset)} if dataset is not None else {}),
        **({"preprocess": str(preprocess)} if preprocess is not None else {}),
        "exponent_bits": int(precision.exponent_bits),
        "bits_per_weight": [int(b) for b in precision.bits_per_weight],
        "max_abs_weight": float(precision.max_abs_weight).hex(),
        "coder": entropy.CODER,
        "bias_dtype": "<f4",
        "payload_length": len(payload_bytes),
        "layers": layers,
        **({"widths": list(widths), "norms": norms} if version >= NORMS_VERSION else {}),
    }
    return container.pack(header, payload_bytes, version=version)


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def _int(value, what: str, low: int = 0, high: int | None = None) -> int:
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f" in {low}..{high}" if high is not None else f" >= {low}"
        raise ValueError(f"{what} must be an integer{bound}, got {value!r}")
    return value


def _stream(payload: bytes, streams: dict, key: str) -> bytes:
    offset, length = _address(streams, key, len(payload))
    return payload[offset: offset + length]


def _address(streams: dict, key: str, payload_length: int) -> tuple[int, int]:
    address = streams.get(key)
    if not isinstance(address, list) or len(address) != 2:
        raise ValueError(f"stream {key!r} has no [offset, length] address")
    offset = _int(address[0], f"offset of stream {key!r}")
    length = _int(address[1], f"length of stream {key!r}")
    if offset + length > payload_length:
        raise ValueError(f"stream {key!r} [{offset}, {length}] runs past the {payload_length}-byte "
                         "payload")
    return offset, length


def _check_stream_layout(layers: list, payload_length: int, norms: list = ()) -> None:
    """Every payload byte belongs to exactly one stream (the layers' and the BatchNorms').

    The writer appends each stream after the previous one (no padding), so the addresses tile
    the payload. Streams that overlap would let one byte string be read as two things (a bias
    that is also a codebook), and bytes no stream owns are data the decoder would silently
    ignore; both mean the header does not describe the payload.
    """
    spans = []
    entries = [(f"layer {i}", layer) for i, layer in enumerate(layers)]
    entries += [(f"BatchNorm entry {i}", norm) for i, norm in enumerate(norms)]
    for index, layer in entries:
        streams = layer.get("streams") if isinstance(layer, dict) else None
        if not isinstance(streams, dict):
            raise ValueError(f"{index} has no streams")
        spans += [(*_address(streams, key, payload_length), index, key) for key in streams]
    spans.sort()
    end = 0
    for offset, length, index, key in spans:
        if offset < end:
            raise ValueError(f"stream {key!r} of {index} at [{offset}, {length}] overlaps "
                             "the stream before it")
        end = offset + length
    covered = sum(length for _, length, _, _ in spans)
    if covered != payload_length:
        raise ValueError(f"the streams cover {covered} of the {payload_length} payload bytes")


def _layer_shape(index: int, layer) -> tuple[str, tuple[int, ...]]:
    """A layer's name and kernel shape from the header, checked but nothing allocated."""
    if not isinstance(layer, dict):
        raise ValueError(f"layer {index} is not a JSON object")
    name = layer.get("name")
    if not isinstance(name, str):
        raise ValueError(f"layer {index} has no name")
    shape = layer.get("kernel_shape")
    if (not isinstance(shape, list) or len(shape) not in (2, 4)
            or layer.get("kind") != _kind(shape)):
        raise ValueError(f"layer {name}: kernel shape {shape!r} / kind {layer.get('kind')!r} "
                         "is not a 2-D dense or 4-D conv kernel")
    shape = tuple(_int(n, f"layer {name} kernel dimension", 1) for n in shape)
    if _size(shape) > MAX_LAYER_WEIGHTS:
        raise ValueError(f"layer {name}: kernel shape {shape} exceeds {MAX_LAYER_WEIGHTS} weights")
    return name, shape


def _size(shape) -> int:
    """Number of entries of ``shape``, as an exact Python integer (numpy's product can wrap)."""
    size = 1
    for n in shape:
        size *= int(n)
    return size


class _ShapeOnly(nnx.Module):
    """Stands in for a weight layer or BatchNorm while a model's layer shapes are read off."""

    def __init__(self, kernel_shape: tuple[int, ...], weights: bool = True):
        self.kernel_shape = kernel_shape
        self.weights = weights  # False for a BatchNorm
        self.in_features, self.out_features = kernel_shape[-2:]
        self.num_features = kernel_shape[-1]


class _ShapeRecorder:
    """A :class:`~bayescomp.nn.factory.LayerFactory` that builds no weights.

    Models ask their factory for every layer (``dense``, ``conv``, ``norm``); answering with
    :class:`_ShapeOnly` stand-ins runs the model's own constructor (its shape arithmetic,
    flattens included) without allocating a kernel, so a header asking for 2^24 classes or a
    65536x65536 input costs nothing to check.
    """

    def dense(self, name, in_features, out_features, *, rngs=None):
        del name, rngs
        return _ShapeOnly(_dims(in_features, out_features))

    def conv(self, name, in_features, out_features, kernel_size, *, rngs=None, **geometry):
        del name, rngs, geometry  # strides and padding change no kernel shape
        return _ShapeOnly(_dims(*kernel_size, in_features, out_features))

    def norm(self, name, features, *, stream=False):
        del name, stream  # a stream's BatchNorm has the same shape
        return _ShapeOnly(_dims(features, features), weights=False)

    def channel(self, name, features, *, after_norm=False):
        del name, features, after_norm  # a compressed network has no channel modules (switches)
        return None

    def check_layer_names(self, layer_names) -> None:
        del layer_names


def _dims(*dims) -> tuple[int, ...]:
    """Layer dimensions as Python integers; a model's arithmetic may have given 0 or less (a
    too-small input) or wrapped (int32 products of a huge input)."""
    dims = tuple(int(d) for d in dims)
    if min(dims) < 1:
        raise ValueError(f"a layer of shape {dims}")
    return dims


@dataclasses.dataclass(frozen=True)
class _Template:
    """What a model built for some arguments looks like, read off without building weights.

    Attributes:
        shapes: ``(path, kernel shape)`` of each weight layer, in ``layer_names`` order.
        norms: BatchNorm path → channels, in sorted path order.
        norm_groups: BatchNorm path → the name of the channel group it normalises.
        graph: The model's channel groups with their sizes (``None`` for a model without
            BatchNorms, whose file needs none).
    """

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    norms: dict[str, int]
    norm_groups: dict[str, str]
    graph: ChannelGraph | None


@functools.lru_cache(maxsize=64)
def _model_template(model_cls, input_shape: tuple[int, ...], num_classes: int,
                    widths: tuple[int, ...]) -> _Template:
    """The :class:`_Template` of ``model_cls`` for these arguments (keyed by the class itself,
    so that a registry entry replaced in a test is never answered from the cache).

    Raises:
        ValueError: If the model cannot be built for these arguments, or its channel groups do
            not account for its BatchNorms.
    """
    from bayescomp.errors import ConfigError

    try:
        template = model_cls(_ShapeRecorder(), rngs=nnx.Rngs(params=0), input_shape=input_shape,
                             num_classes=num_classes, widths=widths)
    except (ValueError, TypeError, ArithmeticError, ConfigError) as error:
        raise ValueError(f"{model_cls.__name__} cannot be built for input shape {input_shape}, "
                         f"{num_classes} classes and widths {widths}: {error}") from None
    # As graph.weight_layers orders the real layers: by dotted path, in ``layer_names`` order.
    modules = {".".join(str(p) for p in path): module
               for path, module in nnx.iter_modules(template) if isinstance(module, _ShapeOnly)}
    found = {path: module for path, module in modules.items() if module.weights}
    order = getattr(template, "layer_names", None) or tuple(found)
    missing = [name for name in order if name not in found]
    if missing:
        raise ValueError(f"{model_cls.__name__} has no weight layers {missing}")
    shapes = tuple((name, found[name].kernel_shape) for name in order)
    norms = {path: modules[path].num_features for path in sorted(modules)
             if not modules[path].weights}
    if not norms:
        return _Template(shapes, {}, {}, None)
    try:
        groups = tuple(template.channel_groups())
    except (AttributeError, TypeError, ValueError, ArithmeticError, ConfigError) as error:
        raise ValueError(f"{model_cls.__name__} declares no usable channel groups ({error})"
                         ) from None
    graph = _template_graph(model_cls.__name__, dict(shapes), norms, groups)
    norm_groups = {path: group.name for group in groups for path in group.norms}
    return _Template(shapes, norms, norm_groups, graph)


def _template_graph(model_name: str, kernels: dict, norms: dict, groups) -> ChannelGraph:
    """The channel graph of a shape-only model: the sizes :func:`bayescomp.models.graph.
    channel_graph` checks on a real model, checked here on kernel shapes alone (the decoder
    builds no real model before the file has been read)."""
    sizes, normed = {}, {}
    for group in groups:
        if not isinstance(group, ChannelGroup):
            raise ValueError(f"{model_name}.channel_groups() returned {group!r}")
        claims = [kernels[p][-1] for p in group.producers if p in kernels]
        claims += [norms[n] for n in group.norms if n in norms]
        for consumer in group.consumers:
            inputs = kernels[consumer.layer][-2] if consumer.layer in kernels else None
            positions = consumer.positions
            if inputs is None or type(positions) is not int or positions < 1 or inputs % positions:
                raise ValueError(f"{model_name} group {group.name!r}: consumer "
                                 f"{consumer.layer!r} does not fit the model")
            claims.append(inputs // positions)
        unknown = [p for p in (*group.producers, *group.norms) if p not in kernels and p not in norms]
        if unknown or len(set(claims)) != 1:
            raise ValueError(f"{model_name} group {group.name!r} does not fit the model's layers")
        sizes[group.name] = claims[0]
        for path in group.norms:
            if path in normed:
                raise ValueError(f"{model_name}: BatchNorm {path!r} is in two channel groups")
            normed[path] = group.name
    if sorted(normed) != sorted(norms):
        raise ValueError(f"{model_name}: the channel groups name BatchNorms {sorted(normed)}, the "
                         f"model has {sorted(norms)}")
    for group in groups:
        for shortcut in getattr(group, "shortcuts", ()):
            source = sizes.get(getattr(shortcut, "source", None))
            offset = getattr(shortcut, "offset", None)
            if (source is None or type(offset) is not int or offset < 0
                    or offset + source > sizes[group.name]):
                raise ValueError(f"{model_name} group {group.name!r}: a shortcut that does not "
                                 "fit its groups")
    return ChannelGraph(tuple(kernels), tuple(groups), sizes)


@functools.lru_cache(maxsize=64)
def _model_shapes(model_name: str, input_shape: tuple[int, ...], num_classes: int,
                  widths: tuple[int, ...]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(path, kernel shape)`` of each weight layer of the model, in ``layer_names`` order.

    Raises:
        ValueError: If the model cannot be built for these arguments.
    """
    return _model_template(_registry()[model_name], input_shape, num_classes, widths).shapes


def _check_model(model_name: str, input_shape, num_classes: int, layers: list,
                 widths: tuple[int, ...] | None = None) -> _Template:
    """The header's layers are the named model's, at its input shape, classes and widths.

    Checked before any array is allocated: the kernel shapes then are those of a model that can
    exist, and together at most :data:`MAX_FILE_WEIGHTS`. ``widths`` are the file's (version
    3); ``None`` reads them off the layers (every layer's output size but the last).

    Returns:
        The model's :class:`_Template`.
    """
    registry = _registry()
    if model_name not in registry:
        raise ValueError(f"names an unknown model {model_name!r} (known: "
                         f"{', '.join(sorted(registry))})")
    model_cls = registry[model_name]
    declared = getattr(model_cls, "layer_names", None)
    if declared is not None and len(layers) != len(declared):
        raise ValueError(f"{len(layers)} layers, {model_cls.__name__} has {len(declared)}")
    found = [_layer_shape(i, layer) for i, layer in enumerate(layers)]
    total = sum(_size(shape) for _, shape in found)
    if total > MAX_FILE_WEIGHTS:
        raise ValueError(f"{total} weights exceed the {MAX_FILE_WEIGHTS} a file may hold")
    if widths is None:
        widths = _chain_widths(shape for _, shape in found)
    template = _model_template(model_cls, tuple(input_shape), num_classes, tuple(widths))
    expected = list(template.shapes)
    if expected != found:
        raise ValueError(f"its layers {found} do not match {model_cls.__name__} with input shape "
                         f"{tuple(input_shape)}, {num_classes} classes and widths {tuple(widths)} "
                         f"({expected})")
    return template


def _checked_widths(value) -> tuple[int, ...]:
    """A version-3 file's ``widths``: a short list of positive integers."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_WIDTHS:
        raise ValueError(f"widths {str(value)[:80]} is not a list of 1 to {MAX_WIDTHS} entries")
    return tuple(_int(w, "a width", 1, MAX_CODEBOOK_SIZE) for w in value)


def _check_norm_entries(entries, template: _Template, payload_length: int) -> None:
    """The BatchNorm entries of a version-3 header: one per BatchNorm of the model, in sorted path
    order, each stream exactly ``NORM_CHANNEL_BYTES`` per claimed channel and no more channels
    than the BatchNorm has. Checked before anything is allocated."""
    if not isinstance(entries, list):
        raise ValueError("the BatchNorm list is missing")
    paths = [entry.get("path") if isinstance(entry, dict) else None for entry in entries]
    if paths != list(template.norms):
        raise ValueError(f"BatchNorms {str(paths)[:200]} are not the model's "
                         f"{list(template.norms)}")
    for entry in entries:
        path, size = entry["path"], template.norms[entry["path"]]
        channels = _int(entry.get("channels"), f"BatchNorm {path} channels", 0, size)
        streams = entry.get("streams")
        if not isinstance(streams, dict) or set(streams) != {"params"}:
            raise ValueError(f"BatchNorm {path} has no params stream")
        _, length = _address(streams, "params", payload_length)
        if length != NORM_CHANNEL_BYTES * channels:
            raise ValueError(f"BatchNorm {path}: {length} bytes of parameters for {channels} "
                             "channels")
        epsilon = entry.get("epsilon")
        if not isinstance(epsilon, str):
            raise ValueError(f"BatchNorm {path}: epsilon {epsilon!r} is not a hex float")
        _check_norm_values(path, np.zeros((len(NORM_FIELDS), 0), np.float32),
                           float.fromhex(epsilon))


def _decode_norms(entries, template: _Template, names, masks, payload: bytes
                  ) -> dict[str, NormParams]:
    """The BatchNorm parameters, full size, neutral where no consumer reads (module docstring)."""
    needed = norm_channels(template.graph, dict(zip(names, masks)))
    norms = {}
    for entry in entries:
        path = entry["path"]
        keep = needed[template.norm_groups[path]]
        if int(keep.sum()) != entry["channels"]:
            raise ValueError(f"BatchNorm {path}: {entry['channels']} channels stored, the masks "
                             f"read {int(keep.sum())}")
        stored = np.frombuffer(_stream(payload, entry["streams"], "params"), "<f4").astype(
            np.float32).reshape(len(NORM_FIELDS), -1)
        epsilon = float.fromhex(entry["epsilon"])
        _check_norm_values(path, stored, epsilon)
        values = np.asarray([[NEUTRAL_NORM[f]] for f in NORM_FIELDS], np.float32).repeat(
            keep.size, axis=1)
        values[:, keep] = stored
        norms[path] = NormParams.from_stacked(values, epsilon)
    return norms


def _fixed_point_weights(name: str, values: np.ndarray, bits: int) -> np.ndarray:
    """``k · 2^-t`` as float32, refusing integers whose weight float32 cannot hold exactly."""
    weights = (values.astype(np.float64) * 2.0 ** -bits).astype(np.float32)
    # Scaling by a power of two is exact, so w · 2^t is an integer; it must be k itself (int64
    # to float64 rounds beyond 2^53, and float32 beyond 24 significant bits). Compare only
    # where it is inside int64, so that the cast is defined.
    scaled = weights.astype(np.float64) * 2.0 ** bits
    inside = np.abs(scaled) < 2.0**63
    if not (inside.all() and np.array_equal(scaled.astype(np.int64), values)):
        raise ValueError(f"layer {name}: decoded values are not representable in float32")
    return weights


def _decode_layer(index: int, layer, payload: bytes, version: int, shape: tuple[int, ...]):
    """Decode one layer whose kernel ``shape`` :func:`_check_model` has checked."""
    name = layer["name"]
    # Version 1 knows only fixed-point layers and has no values_kind; version 2 names it.
    values_kind = layer.get("values_kind") if version >= 2 else "fixed_point"
    if values_kind not in VALUES_KINDS or (version < 2 and "values_kind" in layer):
        raise ValueError(f"layer {name}: unknown values kind {layer.get('values_kind')!r} in a "
                         f"version-{version} file")
    streams = layer.get("streams")
    if not isinstance(streams, dict):
        raise ValueError(f"layer {name} has no streams")
    codebook = None
    if values_kind == "fixed_point":
        bits = _int(layer.get("significand_bits"), f"layer {name} significand bits", 0,
                    MAX_SIGNIFICAND_BITS)
    else:
        bits = _int(layer.get("index_bits"), f"layer {name} index bits", 0, MAX_SIGNIFICAND_BITS)
        size = _int(layer.get("codebook_size"), f"layer {name} codebook size", 1,
                    MAX_CODEBOOK_SIZE)
        raw = _stream(payload, streams, "codebook")
        if len(raw) != 4 * size:
            raise ValueError(f"layer {name}: codebook of {len(raw)} bytes for {size} entries")
        codebook = _checked_codebook(name, np.frombuffer(raw, "<f4").astype(np.float32))
    kept_in = _unpack_bits(_stream(payload, streams, "input_keep"), shape[-2])
    kept_out = _unpack_bits(_stream(payload, streams, "output_keep"), shape[-1])
    if (layer.get("kept_inputs") != int(kept_in.sum())
            or layer.get("kept_outputs") != int(kept_out.sum())):
        raise ValueError(f"layer {name}: kept unit counts do not match the keep bitmaps")
    block_index = _block_index(shape, kept_in, kept_out)
    block_shape = shape[:-2] + (int(kept_in.sum()), int(kept_out.sum()))
    block_size = _size(block_shape)
    positions = layer.get("positions")
    if positions == "full":
        flat = np.ones(block_size, bool)
    elif positions in ("bitmap", "gaps"):
        count = _int(layer.get("num_positions"), f"layer {name} number of position symbols")
        # Sizes before decoding: a bitmap has one symbol per block weight, gaps one per kept
        # weight, so the coder is never asked for more symbols than the block holds.
        if positions == "bitmap" and count != block_size:
            raise ValueError(f"layer {name}: position bitmap of {count} symbols for a pruned "
                             f"block of {block_size}")
        symbols = entropy.decode(_stream(payload, streams, "positions_model"),
                                 _stream(payload, streams, "positions"), count, block_size)
        if positions == "bitmap":
            if np.any((symbols != 0) & (symbols != 1)):
                raise ValueError(f"layer {name}: position bitmap does not fit the pruned block")
            flat = symbols.astype(bool)
        else:
            # Each gap is below the block size, so the running sum cannot wrap around int64
            # (which would turn a huge gap into a negative, silently valid, index).
            if count and (symbols.min() < 0 or symbols.max() >= block_size):
                raise ValueError(f"layer {name}: gap between kept positions outside "
                                 f"0..{block_size - 1}")
            kept_at = np.cumsum(symbols + 1) - 1
            if count and kept_at[-1] >= block_size:
                raise ValueError(f"layer {name}: kept positions run past the pruned block")
            flat = np.zeros(block_size, bool)
            flat[kept_at] = True
    else:
        raise ValueError(f"layer {name}: unknown position coding {positions!r}")
    num_values = _int(layer.get("num_values"), f"layer {name} number of values")
    if num_values != int(flat.sum()):
        raise ValueError(f"layer {name}: {num_values} values for {int(flat.sum())} kept weights")
    values_coding = layer.get("values_coding")
    if values_coding == "ans":
        values = entropy.decode(_stream(payload, streams, "values_model"),
                                _stream(payload, streams, "values"), num_values, num_values)
        _, value_counts = entropy.parse_model(_stream(payload, streams, "values_model"))
    elif values_coding == "fixed" and codebook is None:
        width = _int(layer.get("value_width"), f"layer {name} value width", 0, 64)
        values = _unpack_fixed(_stream(payload, streams, "values"), num_values, width, name)
        value_counts = np.unique(values, return_counts=True)[1]
    elif values_coding == "fixed":
        width = layer.get("value_width")
        if width != _index_width(codebook.size):
            raise ValueError(f"layer {name}: value width {width!r} for a codebook of "
                             f"{codebook.size} entries (expected {_index_width(codebook.size)})")
        values = _unpack_unsigned(_stream(payload, streams, "values"), num_values, width,
                                  name).astype(np.int64)
        value_counts = np.unique(values, return_counts=True)[1]
    else:
        raise ValueError(f"layer {name}: unknown value coding {values_coding!r}")
    if codebook is None:
        weights = _fixed_point_weights(name, values, bits)
    else:
        if values.size and (values.min() < 0 or values.max() >= codebook.size):
            raise ValueError(f"layer {name}: codebook index outside 0..{codebook.size - 1}")
        weights = codebook[values]
    block_mask = flat.reshape(block_shape)
    block = np.zeros(block_shape, np.float32)
    block[block_mask] = weights
    kernel = np.zeros(shape, np.float32)
    kernel[block_index] = block
    mask = np.zeros(shape, bool)
    mask[block_index] = block_mask
    bias_bytes = _stream(payload, streams, "bias")
    if len(bias_bytes) != 4 * shape[-1]:
        raise ValueError(f"layer {name}: bias of {len(bias_bytes)} bytes for {shape[-1]} outputs")
    bias = np.frombuffer(bias_bytes, "<f4").astype(np.float32)
    if not np.all(np.isfinite(bias)):
        raise ValueError(f"layer {name}: the bias holds NaN or infinite values")

    value_model = _stream(payload, streams, "values_model")
    position_bytes, position_bits, position_model_bytes = 0, 0.0, 0
    if positions != "full":
        position_model = _stream(payload, streams, "positions_model")
        position_model_bytes = len(position_model)
        position_bytes = len(position_model) + len(_stream(payload, streams, "positions"))
        position_bits = entropy.empirical_entropy_bits(entropy.parse_model(position_model)[1])
    coding = LayerCoding(
        name=name, kind=layer["kind"], kernel_shape=shape, kept_inputs=int(kept_in.sum()),
        kept_outputs=int(kept_out.sum()), positions=positions, values_coding=values_coding,
        num_values=num_values,
        value_bytes=len(_stream(payload, streams, "values")), value_model_bytes=len(value_model),
        value_entropy_bits=entropy.empirical_entropy_bits(value_counts),
        position_bytes=position_bytes, position_entropy_bits=position_bits,
        bitmap_bytes=len(_stream(payload, streams, "input_keep"))
        + len(_stream(payload, streams, "output_keep")),
        bias_bytes=len(bias_bytes), values_kind=values_kind,
        codebook_bytes=0 if codebook is None else 4 * codebook.size,
        position_model_bytes=position_model_bytes)
    return name, kernel, bias, mask, bits, codebook, coding


def _decode(data: bytes, source: str) -> DecodedNetwork:
    version, header, payload = container.read(data, source)
    try:
        if header.get("coder") != entropy.CODER or header.get("bias_dtype") != "<f4":
            raise ValueError(f"unknown coder {header.get('coder')!r} or bias dtype "
                             f"{header.get('bias_dtype')!r}")
        if header.get("payload_length") != len(payload):
            raise ValueError(f"payload is {len(payload)} bytes, header says "
                             f"{header.get('payload_length')!r}")
        model_name = header.get("model")
        if not isinstance(model_name, str):
            raise ValueError("no model name")
        input_shape = header.get("input_shape")
        if not isinstance(input_shape, list) or len(input_shape) != 3:
            raise ValueError(f"input shape {input_shape!r} is not (h, w, c)")
        input_shape = tuple(_int(n, "input dimension", 1, 2**16) for n in input_shape)
        # Models size their layers with int32 arithmetic (jnp), which wraps beyond 2^31.
        if _size(input_shape) >= 2**31:
            raise ValueError(f"input shape {input_shape} has {_size(input_shape)} values, more "
                             "than 2^31 - 1")
        num_classes = _int(header.get("num_classes"), "num_classes", 1, 2**24)
        dataset, preprocess = header.get("dataset"), header.get("preprocess")
        for field, value in (("dataset", dataset), ("preprocess", preprocess)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{field} {value!r} is not a name")
        exponent_bits = _int(header.get("exponent_bits"), "exponent bits", 0, 64)
        layers = header.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ValueError("no layers")
        widths, norm_entries = None, []
        if version >= NORMS_VERSION:
            widths = _checked_widths(header.get("widths"))
            norm_entries = header.get("norms")
        elif "widths" in header or "norms" in header:
            raise ValueError(f"a version-{version} file has no widths or BatchNorms")
        # Every size is checked before anything is allocated: the layers against the model
        # they claim to be, the BatchNorms against the model's channel counts, the stream
        # addresses against the payload.
        template = _check_model(model_name, input_shape, num_classes, layers, widths)
        if template.norms and version < NORMS_VERSION:
            raise ValueError(f"{model_name} has BatchNorms, whose parameters a version-{version} "
                             f"file cannot hold (version {NORMS_VERSION} and later store them)")
        if version >= NORMS_VERSION:
            _check_norm_entries(norm_entries, template, len(payload))
        _check_stream_layout(layers, len(payload), norm_entries)
        decoded = [_decode_layer(i, layer, payload, version, _layer_shape(i, layer)[1])
                   for i, layer in enumerate(layers)]
        bits_per_weight = header.get("bits_per_weight")
        if (not isinstance(bits_per_weight, list) or len(bits_per_weight) != len(layers)):
            raise ValueError("bits_per_weight does not have one entry per layer")
        bits_per_weight = [_int(b, "bits per weight") for b in bits_per_weight]
        max_abs_weight = float.fromhex(header.get("max_abs_weight"))
        names, kernels, biases, masks, bits, codebooks, codings = (
            list(column) for column in zip(*decoded))
        precision = BitPrecision(bits_per_layer=bits, exponent_bits=exponent_bits,
                                 bits_per_weight=bits_per_weight, max_abs_weight=max_abs_weight)
        norms = (_decode_norms(norm_entries, template, names, masks, payload)
                 if template.norms else None)
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as error:
        raise file_error(source, f"the header or payload is malformed: {error}") from None
    header_bytes = len(data) - len(payload) - container.PREAMBLE_SIZE - container.CHECKSUM_SIZE
    norm_bytes = sum(NORM_CHANNEL_BYTES * entry["channels"] for entry in norm_entries)
    return DecodedNetwork(model_name, input_shape, num_classes, names, kernels, biases, masks,
                          precision, codings, len(data), header_bytes,
                          codebooks if any(c is not None for c in codebooks) else None, version,
                          dataset, preprocess, norms, widths, norm_bytes)


def decode_network(data: bytes, *, source: str = "<bytes>") -> DecodedNetwork:
    """Read a ``.bcz`` file from memory.

    Args:
        data: The file's bytes.
        source: How to name the file in error messages.

    Raises:
        CompressedFileError: If the file is empty, truncated, corrupt, foreign, of another
            version or describes an impossible network.
    """
    return _decode(data, source)


def save(path, quantized: QuantizedNetwork, *, model_name: str, input_shape,
         num_classes: int, dataset: str | None = None, preprocess: str | None = None,
         widths=None) -> int:
    """Write the ``.bcz`` file of ``quantized`` to ``path`` atomically; returns its size in bytes.

    The keyword arguments are those of :func:`encode_network`.
    """
    data = encode_network(quantized, model_name=model_name, input_shape=input_shape,
                          num_classes=num_classes, dataset=dataset, preprocess=preprocess,
                          widths=widths)
    atomic.write_bytes(path, data)
    return len(data)


#: Largest ``.bcz`` file read: every weight of :data:`MAX_FILE_WEIGHTS` at 32 bits plus its keep
#: bit, with room for headers, BatchNorms and entropy-coder overhead.
MAX_FILE_BYTES = 2 * 33 * MAX_FILE_WEIGHTS // 8


def read_file_bytes(path) -> bytes:
    """The bytes of the regular file ``path``, at most :data:`MAX_FILE_BYTES` of them.

    A FIFO would block the reader until some writer appeared, and a device such as /dev/zero
    never ends, so anything but a regular file is refused before it is opened; a regular file
    longer than any valid ``.bcz`` is refused before it is read.

    Raises:
        CompressedFileError: The path cannot be read, is not a regular file, or is too long.
    """
    import os
    import stat

    source = str(path)
    hint = "check the path, or run `python -m bayescomp.compress RUN_DIR` to write it"
    try:
        info = os.stat(path)
    except OSError as error:
        raise file_error(source, f"cannot be read ({error.strerror or error})", hint) from None
    if not stat.S_ISREG(info.st_mode):
        raise file_error(source, "is not a regular file (a directory, FIFO or device)", hint)
    if info.st_size > MAX_FILE_BYTES:
        raise file_error(source, f"is {info.st_size} bytes, more than any .bcz file holds "
                         f"({MAX_FILE_BYTES})", hint)
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat
    except OSError as error:
        raise file_error(source, f"cannot be read ({error.strerror or error})", hint) from None
    if len(data) > MAX_FILE_BYTES:
        raise file_error(source, f"is more than {MAX_FILE_BYTES} bytes, more than any .bcz file "
                         "holds", hint)
    return data


def load(path):
    """Read a ``.bcz`` file and build the runnable point-weight model it describes.

    Returns:
        ``(model, metadata)``: a model of the original class (from
        :func:`bayescomp.compression.quantize.point_model`) whose kernels are the decoded ones
        (float32, bit-identical to what was encoded, up to the sign of removed zeros), and the
        :class:`DecodedNetwork`.

    Raises:
        CompressedFileError: If the file cannot be read or is not a valid ``.bcz`` file, or its
            layers do not fit the model class it names.
    """
    source = str(path)
    data = read_file_bytes(path)
    # _decode has checked the layers against the model class (names, shapes, total size).
    network = _decode(data, source)
    model_cls = _registry()[network.model_name]
    model = point_model(model_cls, network.kernels, network.biases,
                        input_shape=network.input_shape, num_classes=network.num_classes,
                        norms=network.norms, widths=network.widths)
    return model, network
