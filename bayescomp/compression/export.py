"""Export a pruned network as a plain dense Flax model with physically smaller matrices.

The quantized network (:mod:`bayescomp.compression.quantize`) keeps the original shapes and
zeros the removed weights, so predicting with it costs as much as with the unpruned network.
:func:`export_pruned` instead keeps only the units that carry information and builds a
:class:`PrunedNetwork` whose kernels are the kept blocks, so the forward pass does less work.

Which units survive, for the chain of weighted layers ``L_0 … L_{k-1}`` (kernels in Flax layout:
dense ``(in, out)``, conv ``(kh, kw, in, out)``):

* **read** (backward pass): a unit of ``L_l`` is read if ``L_{l+1}`` keeps a weight from it to a
  read unit of ``L_{l+1}`` (``mask.any`` over all axes but ``-2``). The classes (outputs of the
  last layer) are always read. A unit nobody reads is dead: its output never matters.
* **varying** (forward pass): a unit of ``L_l`` varies with the input if it keeps a weight from a
  varying input of ``L_l``. Network inputs vary (the first dense layer keeps only the pixels it
  has a weight for).
* A unit that is read but does not vary outputs a constant ``relu(b)`` (unstructured pruning can
  remove every incoming weight and leave the bias). Its contribution ``relu(b) · W_next`` (summed
  over the conv taps or flattened positions that read it) is folded into the next layer's bias,
  which is exact and removes the unit. This cascades: a unit fed only by constant units is
  constant too.
* Kept units = read and varying. Layer ``l+1`` keeps the input rows of kept units. At the
  conv → dense boundary (NHWC flatten: input ``p·C + c`` is channel ``c`` at position ``p``)
  the rows of kept channels are taken in order, which is the flatten of the exported
  ``C'``-channel feature map (``p·C' + c'``); rows that still keep no weight (a position of a
  kept channel that the dense layer never reads) are then dropped by a static gather of the
  flattened features, as are unread pixels before LeNet-300's first layer.

**Channel padding** (``channel_multiple``). XLA's CPU convolutions are several times slower when a
conv's input channels are not a multiple of the vector width: on a 2-core AVX2 CPU, LeNet-5 with
7 and 39 kept channels predicted *slower* than the unpruned 20-50 network, and 1.7x faster once
padded to 8 and 40 (``benchmarks/inference_speed.py --channel-multiple 1 8``). With
``channel_multiple = m > 1`` every conv layer but the last gets zero filters (zero bias) up to a
multiple of ``m`` output channels; they output relu(0) = 0, the next conv gets zero input
weights for them and the dense layer after a flatten skips them in its gather, so the logits are
unchanged. The padding costs ``< m`` zero channels per layer; ``kept_units`` still lists only
real units. Whether it pays depends on the backend and shapes, so the default is no padding
and the benchmark measures both.

Folding a constant through a conv is exact only with ``VALID`` padding (a padded conv would see
zeros at the borders instead of the constant), which is what both LeNets use; max-pooling a
constant map gives the constant back.

The exported network computes the same function as the full-size quantized one; its logits differ
only by float32 rounding, because the smaller matmuls (and the folded biases) add the same
non-zero terms in a different order without the zero terms.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a model's forward pass.

    Attributes:
        kind: ``"conv"`` (VALID, stride 1), ``"dense"``, ``"relu"``, ``"pool"`` (2x2 max, stride
            2) or ``"flatten"`` (NHWC, channel fastest).
        layer: Layer path for ``"conv"`` and ``"dense"`` (the kernel order of the network);
            ``None`` otherwise.
    """

    kind: str
    layer: str | None = None


#: Forward pass of each model of :data:`bayescomp.models.REGISTRY`, as written in
#: :mod:`bayescomp.models.lenet`.
LAYOUTS: dict[str, tuple[Stage, ...]] = {
    "lenet300": (
        Stage("flatten"),
        Stage("dense", "fc1"), Stage("relu"),
        Stage("dense", "fc2"), Stage("relu"),
        Stage("dense", "fc3"),
    ),
    "lenet5": (
        Stage("conv", "conv1"), Stage("relu"), Stage("pool"),
        Stage("conv", "conv2"), Stage("relu"), Stage("pool"),
        Stage("flatten"),
        Stage("dense", "fc1"), Stage("relu"),
        Stage("dense", "fc2"),
    ),
}


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, NHWC; the reshape form of :mod:`bayescomp.models.lenet`."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class PrunedDense(nnx.Module):
    """A plain dense layer, optionally reading only some of its input features.

    Args:
        kernel: ``(kept_in, kept_out)``.
        bias: ``(kept_out,)``.
        input_index: Sorted indices of the input features read (a static gather applied before
            the matmul), or ``None`` to read all of them.
    """

    def __init__(self, kernel: np.ndarray, bias: np.ndarray,
                 input_index: Sequence[int] | None = None):
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))
        # A tuple, not an array: it stays in the graph definition, so the gather indices are
        # compile-time constants under jit instead of a traced argument.
        self.input_index = None if input_index is None else tuple(int(i) for i in input_index)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(batch, in) -> (batch, kept_out)``."""
        if self.input_index is not None:
            x = jnp.take(x, np.asarray(self.input_index, np.int32), axis=1,
                         indices_are_sorted=True, unique_indices=True)
        return x @ self.kernel[...] + self.bias[...]


class PrunedConv(nnx.Module):
    """A plain 2-D convolution, VALID padding, stride 1, NHWC.

    Args:
        kernel: ``(kh, kw, kept_in, kept_out)``.
        bias: ``(kept_out,)``.
    """

    def __init__(self, kernel: np.ndarray, bias: np.ndarray):
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(batch, h, w, kept_in) -> (batch, h - kh + 1, w - kw + 1, kept_out)``."""
        y = jax.lax.conv_general_dilated(x, self.kernel[...], window_strides=(1, 1),
                                         padding="VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...]


class PrunedNetwork(nnx.Module):
    """The exported network: plain point weights, only the kept units.

    Layers are attributes named by their layer path (``fc1``, ``conv2``, …), so
    ``nnx.state(net, nnx.Param)`` lists the kept kernels and biases.

    Args:
        stages: The forward pass (:data:`LAYOUTS`).
        layers: Layer path → :class:`PrunedDense` or :class:`PrunedConv`.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs.
        kept_units: Layer path → indices of the original output units kept (documentation and
            tests; the last layer keeps every class).
    """

    def __init__(self, stages: Sequence[Stage], layers: dict[str, nnx.Module], *,
                 input_shape, num_classes: int, kept_units: dict[str, np.ndarray]):
        self.stages = tuple(stages)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.kept_units = {name: tuple(int(i) for i in idx) for name, idx in kept_units.items()}
        for name, layer in layers.items():
            setattr(self, name, layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, c)``."""
        for stage in self.stages:
            if stage.kind in ("dense", "conv"):
                x = getattr(self, stage.layer)(x)
            elif stage.kind == "relu":
                x = jax.nn.relu(x)
            elif stage.kind == "pool":
                x = _max_pool_2x2(x)
            elif stage.kind == "flatten":
                x = x.reshape(x.shape[0], -1)
            else:  # pragma: no cover - LAYOUTS only uses the kinds above
                raise ValueError(f"unknown stage kind {stage.kind!r}")
        return x

    def num_params(self) -> int:
        """Number of kernel and bias entries."""
        return sum(int(p.size) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))


def _constant_map(stages: Sequence[Stage], start: int, stop: int):
    """What the element-wise stages strictly between ``start`` and ``stop`` do to a constant.

    ReLU applies; a max-pool or flatten of a constant map is the same constant.
    """
    def apply(value: np.ndarray) -> np.ndarray:
        for stage in stages[start + 1: stop]:
            if stage.kind == "relu":
                value = np.maximum(value, 0.0)
            elif stage.kind not in ("pool", "flatten"):
                raise ValueError(f"cannot carry a constant through a {stage.kind!r} stage")
        return value

    return apply


def export_pruned(kernels: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                  masks: Sequence[np.ndarray], *, model_name: str, input_shape,
                  num_classes: int, channel_multiple: int = 1) -> PrunedNetwork:
    """Build the physically pruned network from the quantized (full-size) one.

    Args:
        kernels: One kernel per layer in definition order, Flax layout (dense ``(in, out)``,
            conv ``(kh, kw, in, out)``), removed weights exactly 0.
        biases: One bias ``(out,)`` per layer.
        masks: Keep masks, kernel-shaped (bool).
        model_name: A key of :data:`LAYOUTS` (``"lenet300"`` or ``"lenet5"``).
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs (checked against the last kernel).
        channel_multiple: Pad the output channels of every conv layer but the last with zero
            filters up to a multiple of this (module docstring, *Channel padding*); 1: none.

    Returns:
        A :class:`PrunedNetwork` with the same logits as the quantized network up to float32
        summation-order rounding.
    """
    if int(channel_multiple) < 1:
        raise ValueError(f"channel_multiple must be >= 1, got {channel_multiple}")
    if model_name not in LAYOUTS:
        raise ValueError(f"no export layout for model {model_name!r} (known: "
                         f"{', '.join(sorted(LAYOUTS))})")
    stages = LAYOUTS[model_name]
    positions = [i for i, s in enumerate(stages) if s.kind in ("dense", "conv")]
    names = [stages[i].layer for i in positions]
    if not len(kernels) == len(biases) == len(masks) == len(names):
        raise ValueError(f"{model_name} has layers {names}; got {len(kernels)} kernels, "
                         f"{len(biases)} biases and {len(masks)} masks")
    kernels = [np.asarray(k, np.float64) for k in kernels]  # float64: the folded biases
    biases = [np.asarray(b, np.float64).copy() for b in biases]
    masks = [np.asarray(m, bool) for m in masks]
    for name, kernel, bias, mask in zip(names, kernels, biases, masks):
        if kernel.shape != mask.shape or bias.shape != kernel.shape[-1:]:
            raise ValueError(f"{name}: kernel {kernel.shape}, mask {mask.shape}, bias "
                             f"{bias.shape} do not fit")
    if kernels[-1].shape[-1] != num_classes:
        raise ValueError(f"the last layer has {kernels[-1].shape[-1]} outputs, not "
                         f"{num_classes} classes")
    # The structure comes from the masks, not from kernel != 0: a kept weight may round to 0.
    # Removed weights are zeroed again so that a folded bias never picks one up.
    kernels = [np.where(m, k, 0.0) for k, m in zip(kernels, masks)]
    n = len(names)

    def input_unit(l: int) -> np.ndarray:
        """Unit of layer l-1 feeding each input row of layer l (NHWC flatten: channel fastest)."""
        n_in, n_prev = kernels[l].shape[-2], kernels[l - 1].shape[-1]
        if n_in % n_prev:
            raise ValueError(f"{names[l]} has {n_in} inputs for {n_prev} units of {names[l - 1]}")
        return np.arange(n_in) % n_prev

    def rows_used(l: int, columns: np.ndarray) -> np.ndarray:
        """Input rows of layer l keeping a weight to one of ``columns`` (any tap)."""
        mask = masks[l][..., columns]
        # Reduce over every axis but the inputs (the taps of a conv, and the columns), without
        # a reshape that cannot infer its size when no column is read.
        return mask.any(axis=tuple(a for a in range(mask.ndim) if a != mask.ndim - 2))

    # Backward: read units. The classes are always read.
    read = [None] * n
    read[-1] = np.ones(kernels[-1].shape[-1], bool)
    for l in range(n - 1, 0, -1):
        unit_read = np.zeros(kernels[l - 1].shape[-1], bool)
        np.logical_or.at(unit_read, input_unit(l), rows_used(l, read[l]))
        read[l - 1] = unit_read

    # Forward: varying units, constants folded into the next bias, kept rows of every layer.
    kept_rows = [None] * n  # input rows of layer l kept (bool over its original inputs)
    kept_out = [None] * n
    for l in range(n):
        if l == 0:
            if stages[positions[0]].kind == "dense":  # unread pixels are dropped by the gather
                kept_rows[0] = rows_used(0, read[0])
            else:  # conv input channels of the image: few, all kept
                kept_rows[0] = np.ones(kernels[0].shape[-2], bool)
        mask = masks[l][..., kept_rows[l], :]
        varying = mask.reshape(-1, mask.shape[-1]).any(axis=0)
        if l == n - 1:
            kept_out[l] = np.ones_like(read[l])  # classes are never removed, constant or not
            break
        kept_out[l] = read[l] & varying
        constant = read[l] & ~varying
        to_unit = input_unit(l + 1)
        if constant.any():
            value = _constant_map(stages, positions[l], positions[l + 1])(biases[l])
            rows = constant[to_unit]
            # Σ over taps / positions of the rows fed by a constant unit, times its constant.
            contribution = (kernels[l + 1][..., rows, :]
                            * value[to_unit[rows]][:, None]).reshape(-1, kernels[l + 1].shape[-1])
            biases[l + 1] += contribution.sum(axis=0)
        rows = kept_out[l][to_unit]
        if stages[positions[l + 1]].kind == "dense" and kernels[l].ndim == 4:
            # After the flatten: also drop positions of kept channels the dense layer never reads.
            rows &= rows_used(l + 1, read[l + 1])
        kept_rows[l + 1] = rows

    layers, kept_units = {}, {}
    padded_channels = {}  # conv layer index -> (kept channels, channels after zero padding)
    for l, name in enumerate(names):
        out_index = np.flatnonzero(kept_out[l])
        kept_units[name] = out_index
        kernel = kernels[l][..., out_index]
        if kernels[l].ndim == 4:
            in_index = np.flatnonzero(kept_out[l - 1]) if l > 0 else np.flatnonzero(kept_rows[0])
            kernel, bias = kernel[..., in_index, :], biases[l][out_index]
            if l - 1 in padded_channels:  # zero weights from the previous layer's zero channels
                extra = padded_channels[l - 1][1] - kernel.shape[-2]
                kernel = np.pad(kernel, [(0, 0), (0, 0), (0, extra), (0, 0)])
            if l < n - 1:
                kept = kernel.shape[-1]
                extra = -kept % int(channel_multiple)
                padded_channels[l] = (kept, kept + extra)
                kernel = np.pad(kernel, [(0, 0), (0, 0), (0, 0), (0, extra)])
                bias = np.pad(bias, (0, extra))
            layers[name] = PrunedConv(kernel, bias)
            continue
        if l > 0 and kernels[l - 1].ndim == 2:  # dense after dense: rows are the kept units
            layers[name] = PrunedDense(kernel[np.flatnonzero(kept_out[l - 1])],
                                       biases[l][out_index])
            continue
        # Dense after a flatten (of the image or of the last conv's kept channels).
        if l == 0:
            flat_rows = np.arange(kernel.shape[0])
        else:  # rows of kept channels, in order: the flatten of the C'-channel map, p·C' + c'
            flat_rows = np.flatnonzero(kept_out[l - 1][input_unit(l)])
        read_rows = kept_rows[l][flat_rows]
        gather = None if read_rows.all() else np.flatnonzero(read_rows)
        if l - 1 in padded_channels:  # the flatten interleaves zero channels: skip them
            kept, padded = padded_channels[l - 1]
            if padded != kept:
                index = np.arange(read_rows.size) if gather is None else gather
                gather = index // kept * padded + index % kept  # p·C' + c' -> p·C'' + c'
        layers[name] = PrunedDense(kernel[flat_rows[read_rows]], biases[l][out_index], gather)
    return PrunedNetwork(stages, layers, input_shape=input_shape, num_classes=num_classes,
                         kept_units=kept_units)


def export_decoded(network, channel_multiple: int = 1) -> PrunedNetwork:
    """:func:`export_pruned` of a :class:`bayescomp.compression.codec.DecodedNetwork`."""
    return export_pruned(network.kernels, network.biases, network.masks,
                         model_name=network.model_name, input_shape=network.input_shape,
                         num_classes=network.num_classes, channel_multiple=channel_multiple)


def export_from_file(path: str | Path, channel_multiple: int = 1) -> PrunedNetwork:
    """Read a ``.bcz`` file and export its pruned network (see :func:`export_pruned`).

    Raises:
        CompressedFileError: If the file cannot be read or is not a valid ``.bcz`` file.
    """
    from bayescomp.compression import codec  # late import: codec pulls in the model stack

    _, network = codec.load(path)
    return export_decoded(network, channel_multiple)
