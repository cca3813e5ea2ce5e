"""The compression columns of Bayesian Compression (Louizos, Ullrich & Welling, NIPS 2017, Table 1).

Given, per layer, a kept-weight mask (after group pruning) and the layer's bit width, this module
computes the columns the paper reports, with ``|W|`` the number of weights of the unpruned network
(biases are not counted, as in the paper):

* ``|W≠0| / |W|`` in %: the fraction of weights kept.
* **Pruning**, two accountings (K. Ullrich, "What would Shannon do? Bayesian compression for DL",
  slides, DLRL Summer School, Montreal 2017, slide "Practical view on compression"):

  - *structured* (BC-GNJ, BC-GHS; the unstarred BC entries): ``|W| / Σ_l N_l``, where ``N_l`` is
    the size of the layer's pruned **dense** matrix, i.e. the matrix left after dropping every
    row and column that is entirely zero. Structured pruning makes the matrices smaller and they
    stay dense, so no index is stored.
  - *unstructured* (Deep Compression, DNS, SWS; the starred ``*`` entries):
    ``|W| / (2·|W≠0|)``, the slides' ``CR ≈ |w| / (2|w≠0|)``: sparse storage with one index per
    kept value, each as wide as the value.

  Convolution kernels ``(out, in, kh, kw)`` are viewed as the ``(out·in, kh·kw)`` matrix of the
  tutorial's ``compress_matrix`` before dropping zero rows and columns. A row of that view is one
  input channel of one output channel, so an ``(out, in)`` pair whose whole ``kh×kw`` kernel is
  zero drops even if both channels survive elsewhere; a column is one kernel tap, dropped only if
  it is zero in every kept (out, in) pair. Dense kernels are used as they are.
* **Fast Prediction**: the pruned dense matrices stored at the per-layer bit widths,

  .. math:: \\mathrm{FP} = \\frac{32\\,|W|}{\\sum_l N_l\\,(s + E + t_l)}

  with ``s`` sign bits (1), ``E`` the shared exponent bits and ``t_l`` the layer's significand bits
  (:mod:`bayescomp.bit_precision`; tutorial ``compression.py``).
* **Maximum Compression**: an *estimate* of the Deep Compression storage (Han, Mao & Dally, ICLR
  2016, §3 and §4) applied to the kept, quantised weights; see :func:`layer_storage_bits`. The
  paper's column is said to use Deep Compression's storage pipeline (Louizos et al., NIPS 2017,
  arXiv:1705.08665, Table 1), but the exact pipeline behind it was never released, so this number is
  our estimate, not a reproduction.

What the published numbers imply (worked out in ``tests/compression/test_report.py``): the
paper's Pruning and Fast Prediction ratios are *truncated* to integers, and its Fast Prediction
column is ``floor(32|W| / Σ_l N_l b_l)`` with ``b_l`` the printed per-layer "bit precision", i.e.
with **no** sign or exponent bits added on top (``s + E = 0``: ``E = -1`` next to the tutorial's
sign bit, which its unguarded exponent formula gives for ``0.545 < max|E[w]| <= 0.595``). Pass
``sign_bits=0, exponent_bits=0`` with the printed widths to reproduce it; this matches 5 of the 6
published BC rows exactly (LeNet-5 BC-GNJ is 1.6–2.2 % off, see the test).

Layouts: masks and weights are given in Flax layout by default (dense ``(in, out)``, conv
``(kh, kw, in, out)``); ``layout="torch"`` accepts dense ``(out, in)`` and conv
``(out, in, kh, kw)``. A 2-D array is a dense layer, a 4-D array a convolution.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from bayescomp.errors import ConfigError

Layout = Literal["flax", "torch"]

#: Width of the relative index differences in Deep Compression (Han et al. 2016, §3):
#: 8 bits for convolution layers, 5 bits for fully connected layers.
DEFAULT_INDEX_BITS: Mapping[str, int] = {"conv": 8, "dense": 5}

#: Bits of one weight in the uncompressed network (float32).
FULL_PRECISION_BITS = 32


# ----------------------------------------------------------------------------------------------
# Layout helpers
# ----------------------------------------------------------------------------------------------


def _kind_of_shape(shape: Sequence[int]) -> Literal["dense", "conv"]:
    if len(shape) == 2:
        return "dense"
    if len(shape) == 4:
        return "conv"
    raise ConfigError(
        f"a layer's kernel or mask must be 2-D (dense) or 4-D (conv), got shape {tuple(shape)}"
    )


def layer_kind(array) -> Literal["dense", "conv"]:
    """``"dense"`` for a 2-D kernel (or mask), ``"conv"`` for a 4-D one."""
    return _kind_of_shape(np.shape(array))


def _as_out_in(array, layout: Layout) -> np.ndarray:
    """The array in (out, in) / (out, in, kh, kw) order, whatever the input layout."""
    array = np.asarray(array)
    kind = layer_kind(array)
    if layout == "torch":
        return array
    if layout != "flax":
        raise ConfigError(f"unknown kernel layout {layout!r}; use 'flax' or 'torch'")
    # Flax: Dense kernel (in, out), Conv kernel (kh, kw, in, out).
    return array.T if kind == "dense" else array.transpose(3, 2, 0, 1)


def _matrix_view(array, layout: Layout) -> np.ndarray:
    """The 2-D matrix whose zero rows and columns structured pruning removes.

    Dense: ``(out, in)``. Conv: ``(out, in, kh, kw)`` reshaped to ``(out·in, kh·kw)`` as in the
    tutorial's ``compress_matrix``.
    """
    array = _as_out_in(array, layout)
    if array.ndim == 4:
        out_channels, in_channels, kernel_h, kernel_w = array.shape
        return array.reshape(out_channels * in_channels, kernel_h * kernel_w)
    return array


def pruned_dense_shape(mask, layout: Layout = "flax") -> tuple[int, int]:
    """Shape of the pruned dense matrix: the 2-D view without its all-zero rows and columns.

    Args:
        mask: The layer's kept-weight mask (nonzero = kept); a weight array works as well.
        layout: ``"flax"`` or ``"torch"``.

    Returns:
        ``(rows, cols)`` of the pruned dense matrix, ``(0, 0)`` if nothing is kept. For a conv
        layer the rows count kept ``(out, in)`` channel pairs and the columns kept kernel taps.
    """
    kept = _matrix_view(np.asarray(mask) != 0, layout)
    rows, cols = int(kept.any(axis=1).sum()), int(kept.any(axis=0).sum())
    if rows == 0 or cols == 0:
        return (0, 0)
    return (rows, cols)


def kept_architecture(masks: Sequence[np.ndarray], layout: Layout = "flax") -> list[int]:
    """The pruned architecture, written as the papers write it.

    A conv layer contributes its number of output channels that keep a weight; a dense layer its
    number of *inputs* that keep a weight (the convention of Louizos et al., NIPS 2017,
    arXiv:1705.08665, Table 2). So LeNet-300-100 is written
    ``784-300-100`` (three dense layers' inputs) and LeNet-5-Caffe ``20-50-800-500`` (conv1 out,
    conv2 out, fc1 inputs, fc2 inputs).

    Args:
        masks: Kept-weight masks per layer.
        layout: ``"flax"`` or ``"torch"``.

    Returns:
        One count per layer.
    """
    units = []
    for mask in masks:
        kept = _as_out_in(np.asarray(mask) != 0, layout)
        if kept.ndim == 4:
            units.append(int(kept.any(axis=(1, 2, 3)).sum()))  # output channels
        else:
            units.append(int(kept.any(axis=0).sum()))  # inputs: columns of (out, in)
    return units


def architecture_string(units: Sequence[int]) -> str:
    """Join layer widths as the paper prints them: ``[8, 13, 88, 13]`` → ``"8-13-88-13"``."""
    return "-".join(str(int(unit)) for unit in units)


def structured_masks(
    kernel_shapes: Sequence[Sequence[int]],
    architecture: Sequence[int],
    layout: Layout = "flax",
) -> list[np.ndarray]:
    """Group-pruning masks that realise a printed pruned architecture.

    Inverse of :func:`kept_architecture` for structured pruning, used to evaluate published
    architectures. Entry ``a_l`` of ``architecture`` is a conv layer's kept output channels or a
    dense layer's kept inputs. The kept inputs of a conv layer are the previous conv layer's kept
    outputs (the network input is never pruned); the kept outputs of a dense layer are the next
    layer's kept inputs (the last layer's outputs, the classes, are never pruned). At a
    conv → dense boundary the dense layer's kept inputs are taken as printed: in the paper's
    LeNet-5 fc1 keeps 88 of its 800 inputs while conv2 keeps 13 channels (13·16 = 208
    candidates), so fc1's inputs are pruned on their own. Kept units are the first ``a_l`` of each
    layer; which ones does not change any count.

    Args:
        kernel_shapes: The *unpruned* kernel shape of each layer in ``layout``.
        architecture: One kept count per layer.
        layout: ``"flax"`` (dense ``(in, out)``, conv ``(kh, kw, in, out)``) or ``"torch"``.

    Returns:
        Boolean masks, one per layer, with the shapes of ``kernel_shapes``.

    Raises:
        ConfigError: On a length mismatch, a count above the layer's width, or a conv after a
            dense layer.
    """
    if len(kernel_shapes) != len(architecture):
        raise ConfigError(
            f"architecture has {len(architecture)} entries but there are {len(kernel_shapes)} "
            "layers; write one entry per layer (conv: kept outputs, dense: kept inputs)"
        )
    kinds = [_kind_of_shape(shape) for shape in kernel_shapes]
    masks = []
    for index, (shape, kind) in enumerate(zip(kernel_shapes, kinds)):
        shape = tuple(int(size) for size in shape)
        if layout == "flax":
            in_size, out_size = shape[-2], shape[-1]
        elif layout == "torch":
            out_size, in_size = shape[0], shape[1]
        else:
            raise ConfigError(f"unknown kernel layout {layout!r}; use 'flax' or 'torch'")
        if kind == "conv":
            kept_out = architecture[index]
            if index == 0:
                kept_in = in_size
            elif kinds[index - 1] == "conv":
                kept_in = architecture[index - 1]
            else:
                raise ConfigError(
                    f"layer {index}: a conv layer after a dense layer is not supported"
                )
        else:
            kept_in = architecture[index]
            kept_out = architecture[index + 1] if index + 1 < len(architecture) else out_size
        if not (0 <= kept_in <= in_size and 0 <= kept_out <= out_size):
            raise ConfigError(
                f"layer {index}: cannot keep {kept_in} of {in_size} inputs and {kept_out} of "
                f"{out_size} outputs"
            )
        mask = np.zeros(shape, dtype=bool)
        if layout == "flax":
            mask[..., :kept_in, :kept_out] = True
        else:
            mask[:kept_out, :kept_in, ...] = True
        masks.append(mask)
    return masks


# ----------------------------------------------------------------------------------------------
# Pruning and Fast Prediction
# ----------------------------------------------------------------------------------------------


def _weights_total(masks) -> int:
    return int(sum(np.size(mask) for mask in masks))


def pruning_ratio(masks: Sequence[np.ndarray], layout: Layout = "flax") -> float:
    """Structured Pruning ratio ``|W| / Σ_l N_l`` (BC-GNJ, BC-GHS; unstarred BC entries).

    ``N_l`` is the size of layer ``l``'s pruned dense matrix (:func:`pruned_dense_shape`).

    Raises:
        ConfigError: If no weight is kept.
    """
    dense_kept = sum(math.prod(pruned_dense_shape(mask, layout)) for mask in masks)
    if dense_kept == 0:
        raise ConfigError("no weight is kept in any layer; there is nothing to compress")
    return _weights_total(masks) / dense_kept


def unstructured_pruning_ratio(masks: Sequence[np.ndarray]) -> float:
    """Unstructured Pruning ratio ``|W| / (2·|W≠0|)`` (DC, DNS, SWS; the starred entries).

    Sparse storage with one index per kept value, the index as wide as the value (Ullrich's
    2017 slides, see the module docstring: ``CR ≈ |w| / (2|w≠0|)``).

    Raises:
        ConfigError: If no weight is kept.
    """
    kept = int(sum(np.count_nonzero(mask) for mask in masks))
    if kept == 0:
        raise ConfigError("no weight is kept in any layer; there is nothing to compress")
    return _weights_total(masks) / (2 * kept)


def fast_prediction_ratio(
    masks: Sequence[np.ndarray],
    bits_per_weight: Sequence[int],
    layout: Layout = "flax",
) -> float:
    """Fast Prediction ratio ``32·|W| / Σ_l N_l · b_l`` with ``b_l = s + E + t_l``.

    Args:
        masks: Kept-weight masks per layer.
        bits_per_weight: Bits of one stored weight per layer (sign + exponent + significand).
        layout: ``"flax"`` or ``"torch"``.

    Raises:
        ConfigError: On a length mismatch or if nothing is stored.
    """
    if len(masks) != len(bits_per_weight):
        raise ConfigError(f"{len(masks)} masks but {len(bits_per_weight)} bit widths")
    stored_bits = sum(
        math.prod(pruned_dense_shape(mask, layout)) * int(bits)
        for mask, bits in zip(masks, bits_per_weight)
    )
    if stored_bits <= 0:
        raise ConfigError("the pruned network stores no bits; check the masks and bit widths")
    return FULL_PRECISION_BITS * _weights_total(masks) / stored_bits


# ----------------------------------------------------------------------------------------------
# Maximum Compression: Deep Compression storage (CSR-like, relative indices, Huffman)
# ----------------------------------------------------------------------------------------------


def huffman_code_lengths(counts: Mapping) -> dict:
    """Code length of each symbol in an optimal prefix (Huffman) code.

    Huffman (1952): repeatedly merge the two least frequent subtrees; a symbol's code length is
    its leaf depth. A single-symbol alphabet gets length 1 (a decodable stream spends at least one
    bit per symbol). Ties are broken by insertion order, so the result is deterministic.

    Args:
        counts: Symbol → count (counts > 0).

    Returns:
        Symbol → code length in bits; empty for an empty alphabet.
    """
    symbols = [symbol for symbol, count in counts.items() if count > 0]
    if not symbols:
        return {}
    if len(symbols) == 1:
        return {symbols[0]: 1}
    # Nodes 0..n-1 are leaves; merged nodes are appended. parent[] records the tree, so depths are
    # found in one pass from the root down (the root is created last), O(n log n) overall.
    heap = [(counts[symbol], node) for node, symbol in enumerate(symbols)]
    heapq.heapify(heap)
    parent: list[int] = [-1] * len(symbols)
    while len(heap) > 1:
        count_a, node_a = heapq.heappop(heap)
        count_b, node_b = heapq.heappop(heap)
        merged = len(parent)
        parent.append(-1)
        parent[node_a] = parent[node_b] = merged
        heapq.heappush(heap, (count_a + count_b, merged))
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return {symbol: depth[node] for node, symbol in enumerate(symbols)}


def _huffman_stream_bits(symbols: np.ndarray, symbol_bits: int) -> int:
    """Bits of a stream: Huffman-coded with its code book, or fixed length if that is shorter.

    Code book: for each distinct symbol, the symbol at ``symbol_bits`` bits and its code length in
    ``ceil(log2(max_length + 1))`` bits (a canonical Huffman code is rebuilt from the lengths).
    When the code book outweighs the gain (few symbols, nearly all distinct) an encoder keeps the
    fixed-length codes, ``symbol_bits`` each. The header bits (stream length, a coded/fixed flag)
    are ignored.
    """
    if symbols.size == 0:
        return 0
    values, counts = np.unique(symbols, return_counts=True)
    lengths = huffman_code_lengths(dict(zip(values.tolist(), counts.tolist())))
    payload = sum(int(count) * lengths[value] for value, count in zip(values.tolist(), counts))
    length_field_bits = max(1, math.ceil(math.log2(max(lengths.values()) + 1)))
    huffman_bits = payload + len(values) * (int(symbol_bits) + length_field_bits)
    return min(huffman_bits, symbols.size * int(symbol_bits))


def relative_index_diffs(flat_positions, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index stream of a sparse vector (Han et al. 2016, §3, Fig. 2).

    Each stored entry records its distance ``d = p_i - p_{i-1}`` to the previous one (with
    ``p_{-1} = -1``), coded in ``index_bits`` bits as ``d - 1 ∈ [0, 2^b)``, so ``1 <= d <= 2^b``.
    A larger gap gets filler entries (a stored zero) every ``2^b`` positions: a gap ``g`` costs
    ``ceil(g / 2^b) - 1`` fillers, then the remainder ``g - fillers·2^b ∈ [1, 2^b]``.

    Example (``b = 5``, so ``d <= 32``): positions ``[0, 1, 40, 100]`` have gaps ``1, 1, 39, 60``
    and give diffs ``[1, 1, 32, 7, 32, 28]`` with fillers at 32 and 72.

    Args:
        flat_positions: Strictly increasing positions of the stored entries.
        index_bits: ``b``.

    Returns:
        ``(diffs, is_filler)``: the stream of differences and, per entry, whether it is a filler.
    """
    positions = np.asarray(flat_positions, dtype=np.int64)
    if positions.size and np.any(np.diff(positions) <= 0):
        raise ConfigError("relative indices need strictly increasing positions")
    max_diff = 1 << int(index_bits)
    gaps = np.diff(positions, prepend=-1)
    fillers_before = (gaps - 1) // max_diff  # = ceil(g / 2^b) - 1 for g >= 1
    entries_per_gap = fillers_before + 1
    diffs = np.full(int(entries_per_gap.sum()), max_diff, dtype=np.int64)
    is_filler = np.ones(diffs.size, dtype=bool)
    last_entry = np.cumsum(entries_per_gap) - 1  # the real entry closes each gap
    diffs[last_entry] = gaps - fillers_before * max_diff
    is_filler[last_entry] = False
    return diffs, is_filler


@dataclasses.dataclass(frozen=True)
class LayerStorage:
    """Bits of one layer in the Maximum Compression estimate.

    Attributes:
        structure_bits: Kept-row and kept-column bitmaps of the layer's 2-D view.
        format: ``"dense"`` (the pruned dense matrix, values only) or ``"sparse"`` (kept values
            plus relative indices), whichever is smaller.
        value_bits: Value stream, code book included.
        index_bits: Index stream, code book included (0 for ``"dense"``).
    """

    structure_bits: int
    format: Literal["dense", "sparse"]
    value_bits: int
    index_bits: int

    @property
    def total_bits(self) -> int:
        return self.structure_bits + self.value_bits + self.index_bits


def _structure_bits(kept_out_in: np.ndarray) -> int:
    """Bits that say which rows and columns of the layer's 2-D view are kept.

    ``kept_out_in``: the kept mask in (out, in) / (out, in, kh, kw) order. One bit per row and
    per column of the 2-D view; for a conv layer whose kept (out, in) pairs are a product of
    kept output and kept input channels, ``out + in`` bits describe the rows.
    """
    kept = _matrix_view(kept_out_in, "torch")
    rows, columns = kept.shape
    if kept_out_in.ndim == 4:
        pairs = kept_out_in.any(axis=(2, 3))
        if np.array_equal(pairs, np.outer(pairs.any(axis=1), pairs.any(axis=0))):
            rows = pairs.shape[0] + pairs.shape[1]
    return rows + columns


def layer_storage_bits(
    mask,
    bits_per_weight: int,
    weights=None,
    *,
    layout: Layout = "flax",
    index_bits: int | None = None,
) -> LayerStorage:
    """Storage of one layer in the Maximum Compression estimate.

    Deep Compression storage (Han, Mao & Dally 2016, §3–4) adapted to structured pruning:

    1. Pruned architecture: one bit per row and per column of the layer's 2-D view
       (:func:`pruned_dense_shape`) says which are kept; the rest is stored inside the pruned
       dense matrix. For a conv layer whose kept ``(out, in)`` rows are all pairs of a set of
       kept output channels and a set of kept input channels (group pruning), the rows are
       described by those two channel bitmaps, ``out + in`` bits instead of ``out·in``.
    2. Inside it, the cheaper of two formats:

       - ``"dense"``: every entry as a value code, pruned entries as the code of 0;
       - ``"sparse"``: the kept entries in row-major order of the ``(out, in)`` /
         ``(out·in, kh·kw)`` view, each a value code plus a relative index of ``index_bits``
         bits (5 dense, 8 conv) with filler zeros for long gaps (:func:`relative_index_diffs`).

    3. Codes: with ``weights`` (the quantised kept weights, e.g. from
       :func:`bayescomp.bit_precision.round_to_bits`), the value and index streams are Huffman
       coded from their real histograms (:func:`huffman_code_lengths`), each with a code book
       holding every distinct symbol at its fixed width (``bits_per_weight`` / ``index_bits``)
       and its code length; a stream for which that is longer than its fixed-length codes keeps
       those. A kept weight that quantises to exactly 0 needs no sparse slot. Without
       ``weights`` (published architectures, where only masks and widths are known) all codes
       are fixed length, ``bits_per_weight`` per value and ``index_bits`` per index: Deep
       Compression's "P+Q" stage without "H".

    Assumptions of this estimate (the paper's own pipeline was not released): no weight-sharing
    clustering beyond the given quantisation grid, code books stored explicitly, biases and
    per-stream headers not counted.

    Args:
        mask: The layer's kept-weight mask.
        bits_per_weight: Fixed width of one value code (sign + exponent + significand).
        weights: Optional quantised weights, same shape as ``mask``.
        layout: ``"flax"`` or ``"torch"``.
        index_bits: Width of a relative index; defaults to 8 for conv and 5 for dense layers.

    Returns:
        A :class:`LayerStorage`.
    """
    kind = layer_kind(mask)
    if index_bits is None:
        index_bits = DEFAULT_INDEX_BITS[kind]
    kept_out_in = _as_out_in(np.asarray(mask) != 0, layout)
    values = None
    if weights is not None:
        if np.shape(weights) != np.shape(mask):
            raise ConfigError(
                f"weights {np.shape(weights)} and mask {np.shape(mask)} differ in shape"
            )
        values = _matrix_view(np.asarray(weights, dtype=np.float64), layout)
        kept_out_in = kept_out_in & (_as_out_in(np.asarray(weights), layout) != 0)
    structure_bits = _structure_bits(kept_out_in)
    kept = _matrix_view(kept_out_in, "torch")
    kept_rows, kept_cols = kept.any(axis=1), kept.any(axis=0)
    stored = kept[kept_rows][:, kept_cols]
    if stored.size == 0:
        return LayerStorage(structure_bits, "dense", 0, 0)

    positions = np.flatnonzero(stored)
    diffs, is_filler = relative_index_diffs(positions, index_bits)
    if values is None:
        dense = LayerStorage(structure_bits, "dense", stored.size * int(bits_per_weight), 0)
        sparse = LayerStorage(
            structure_bits, "sparse", diffs.size * int(bits_per_weight), diffs.size * index_bits
        )
    else:
        pruned_values = np.where(stored, values[kept_rows][:, kept_cols], 0.0)
        sparse_values = np.zeros(diffs.size)
        sparse_values[~is_filler] = pruned_values.ravel()[positions]
        dense = LayerStorage(
            structure_bits, "dense", _huffman_stream_bits(pruned_values.ravel(), bits_per_weight), 0
        )
        sparse = LayerStorage(
            structure_bits,
            "sparse",
            _huffman_stream_bits(sparse_values, bits_per_weight),
            _huffman_stream_bits(diffs, index_bits),
        )
    return dense if dense.total_bits <= sparse.total_bits else sparse


def max_compression_ratio(
    masks: Sequence[np.ndarray],
    bits_per_weight: Sequence[int],
    weights: Sequence[np.ndarray] | None = None,
    *,
    layout: Layout = "flax",
    index_bits: Mapping[str, int] | None = None,
) -> float:
    """Maximum Compression estimate ``32·|W| / Σ_l storage_l`` (:func:`layer_storage_bits`).

    Args:
        masks: Kept-weight masks per layer.
        bits_per_weight: Fixed value-code width per layer.
        weights: Optional quantised weights per layer (Huffman mode); ``None`` for fixed-length
            codes.
        layout: ``"flax"`` or ``"torch"``.
        index_bits: Relative-index widths by layer kind; default ``{"conv": 8, "dense": 5}``.

    Raises:
        ConfigError: On a length mismatch or if nothing is stored.
    """
    index_bits = {**DEFAULT_INDEX_BITS, **(index_bits or {})}
    if len(masks) != len(bits_per_weight) or (weights is not None and len(weights) != len(masks)):
        raise ConfigError("masks, bit widths and weights need one entry per layer")
    stored_bits = sum(
        layer_storage_bits(
            mask,
            bits,
            None if weights is None else weights[index],
            layout=layout,
            index_bits=index_bits[layer_kind(mask)],
        ).total_bits
        for index, (mask, bits) in enumerate(zip(masks, bits_per_weight))
    )
    if stored_bits <= 0:
        raise ConfigError("the pruned network stores no bits; check the masks and bit widths")
    return FULL_PRECISION_BITS * _weights_total(masks) / stored_bits


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    """All compression columns of one pruned, bit-reduced network.

    Attributes:
        weights_total: ``|W|``, weights of the unpruned network.
        weights_kept: ``|W≠0|``, kept weights.
        percent_kept: ``100·|W≠0|/|W|``.
        weights_kept_dense: ``Σ_l N_l``, entries of the pruned dense matrices.
        pruning: Structured Pruning ratio ``|W| / Σ_l N_l`` (BC methods).
        pruning_unstructured: ``|W| / (2|W≠0|)`` (DC, DNS, SWS).
        fast_prediction: ``32|W| / Σ_l N_l (s + E + t_l)``.
        max_compression: Deep Compression storage estimate.
        max_compression_mode: ``"huffman"`` (weights given) or ``"fixed_length"``.
        architecture: Kept units per layer (conv: outputs, dense: inputs).
        bits_per_layer: Significand bits ``t_l``.
        exponent_bits: ``E``.
        sign_bits: ``s``.
        bits_per_weight: ``s + E + t_l`` per layer.
        pruning_accounting: Which Pruning ratio the table's "Pruning" column shows:
            ``"structured"`` (``pruning``; BC methods) or ``"unstructured"``
            (``pruning_unstructured``; the starred entries of DC, DNS and SWS).
    """

    weights_total: int
    weights_kept: int
    percent_kept: float
    weights_kept_dense: int
    pruning: float
    pruning_unstructured: float
    fast_prediction: float
    max_compression: float
    max_compression_mode: str
    architecture: list[int]
    bits_per_layer: list[int]
    exponent_bits: int
    sign_bits: int
    bits_per_weight: list[int]
    pruning_accounting: Literal["structured", "unstructured"] = "structured"

    @property
    def pruning_column(self) -> float:
        """The Pruning ratio the table shows, by :attr:`pruning_accounting`."""
        return self.pruning_unstructured if self.pruning_accounting == "unstructured" \
            else self.pruning

    @property
    def architecture_string(self) -> str:
        """The pruned architecture as printed in the paper, e.g. ``"8-13-88-13"``."""
        return architecture_string(self.architecture)

    def to_dict(self) -> dict:
        """JSON-ready values; the three Table 1 ratios sit under ``"compression"``."""
        return {
            "weights_total": int(self.weights_total),
            "weights_kept": int(self.weights_kept),
            "percent_kept": float(self.percent_kept),
            "weights_kept_dense": int(self.weights_kept_dense),
            "architecture": [int(unit) for unit in self.architecture],
            "architecture_string": self.architecture_string,
            "bits_per_layer": [int(bits) for bits in self.bits_per_layer],
            "exponent_bits": int(self.exponent_bits),
            "sign_bits": int(self.sign_bits),
            "bits_per_weight": [int(bits) for bits in self.bits_per_weight],
            "pruning_unstructured": float(self.pruning_unstructured),
            "pruning_structured": float(self.pruning),
            "pruning_accounting": self.pruning_accounting,
            "max_compression_mode": self.max_compression_mode,
            "compression": {
                "pruning": float(self.pruning_column),
                "fast_prediction": float(self.fast_prediction),
                "max_compression": float(self.max_compression),
            },
        }


def compression_report(
    masks: Sequence[np.ndarray],
    bits_per_layer: Sequence[int],
    exponent_bits: int,
    *,
    sign_bits: int = 1,
    weights: Sequence[np.ndarray] | None = None,
    layout: Layout = "flax",
    index_bits: Mapping[str, int] | None = None,
    pruning_accounting: Literal["structured", "unstructured"] = "structured",
) -> CompressionReport:
    """Compute every compression column for a pruned network.

    Args:
        masks: Kept-weight mask per layer after group pruning, in the unpruned (dense) shape.
        bits_per_layer: Significand bits ``t_l`` per layer
            (:func:`bayescomp.bit_precision.bit_precision`).
        exponent_bits: Shared exponent bits ``E``.
        sign_bits: Sign bits per weight (1). The paper's published Fast Prediction column is
            reproduced with ``sign_bits=0, exponent_bits=0`` and its printed widths as
            ``bits_per_layer`` (module docstring).
        weights: Optional quantised weights per layer (e.g. ``round_to_bits(mean·mask, t_l)``);
            with them Maximum Compression uses Huffman codes of the real histograms.
        layout: ``"flax"`` (default) or ``"torch"``.
        index_bits: Relative-index widths for Maximum Compression; default conv 8, dense 5.
        pruning_accounting: ``"structured"`` (default; group pruning leaves smaller dense
            matrices) or ``"unstructured"`` (per-weight pruning, one index per kept value): which
            ratio goes into the "Pruning" column of :meth:`CompressionReport.to_dict`. Both are
            always computed.

    Returns:
        A :class:`CompressionReport`.

    Raises:
        ConfigError: On mismatched lengths or if no weight is kept.
    """
    if len(masks) != len(bits_per_layer):
        raise ConfigError(f"{len(masks)} masks but {len(bits_per_layer)} per-layer bit widths")
    if pruning_accounting not in ("structured", "unstructured"):
        raise ConfigError(f"unknown pruning accounting {pruning_accounting!r}; use 'structured' "
                          "or 'unstructured'")
    bits_per_weight = [int(sign_bits) + int(exponent_bits) + int(bits) for bits in bits_per_layer]
    weights_total = _weights_total(masks)
    weights_kept = int(sum(np.count_nonzero(mask) for mask in masks))
    weights_kept_dense = int(sum(math.prod(pruned_dense_shape(mask, layout)) for mask in masks))
    return CompressionReport(
        weights_total=weights_total,
        weights_kept=weights_kept,
        percent_kept=100.0 * weights_kept / weights_total if weights_total else 0.0,
        weights_kept_dense=weights_kept_dense,
        pruning=pruning_ratio(masks, layout),
        pruning_unstructured=unstructured_pruning_ratio(masks),
        fast_prediction=fast_prediction_ratio(masks, bits_per_weight, layout),
        max_compression=max_compression_ratio(
            masks, bits_per_weight, weights, layout=layout, index_bits=index_bits
        ),
        max_compression_mode="fixed_length" if weights is None else "huffman",
        architecture=kept_architecture(masks, layout),
        bits_per_layer=[int(bits) for bits in bits_per_layer],
        exponent_bits=int(exponent_bits),
        sign_bits=int(sign_bits),
        bits_per_weight=bits_per_weight,
        pruning_accounting=pruning_accounting,
    )
