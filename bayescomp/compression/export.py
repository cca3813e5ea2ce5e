"""Export a pruned network as plain Flax layers with physically smaller kernels.

The quantized network (:mod:`bayescomp.compression.quantize`) keeps the original shapes and
zeros the removed weights, so predicting with it costs as much as with the unpruned network.
:func:`export_model` instead keeps only the channels that carry information. Which ones, and
which input-independent ones are folded into biases, is decided per channel group of the model's
declaration (:mod:`bayescomp.models.graph`, :mod:`bayescomp.compression.survivors`); a group's
kept index set is taken from every producer's output columns, every BatchNorm's γ, β and running
statistics, and every consumer's input rows (all ``H·W`` rows of a flatten), so the operands of
a residual add stay aligned.

**The forward pass is the model's own.** The exported network is the model with each weight
layer replaced by a :class:`PrunedDense` or :class:`PrunedConv` holding its kept block and each
BatchNorm by one over its kept channels in running-average mode; the model's ``__call__`` runs
unchanged over them. The alternative, a stage list derived from the declaration, would write
every model's forward pass a second time (ReLUs, pooling, adds), the duplication the channel
groups exist to remove. What this asks of a model: its forward pass uses its weight layers and
BatchNorms only by calling them, and does not hard-code channel counts (``reshape(n, -1)``).

* **Constant channels** (:mod:`bayescomp.compression.survivors`): a read channel that does not
  depend on the input (every incoming weight removed; or a BatchNorm after a removed channel,
  which outputs ``β − μ·γ/√(σ²+ε)``) adds ``Σ_taps,positions W·v`` to each consumer's output, a
  bias. Its values ``v`` at each consumer's input are read off the model's own forward pass at
  full size, with the masked weights, in float64 (:func:`_constant_inputs`), and the sums are
  folded into the consumers' biases in float64 before the one rounding to float32. Exact for
  dense consumers and unpadded convolutions; a channel read by a padded convolution is kept.
* **Gathers**: a dense consumer keeps the rows of its input group's kept channels, ``p·C' + c'``
  in the flatten of the exported ``C'``-channel map; rows that still keep no weight to a read
  output (an unread pixel before LeNet-300's first layer, a position of a kept channel that
  LeNet-5's fc1 never reads) are dropped by a static gather of the flattened features.
* **Channel padding** (``channel_multiple``). XLA's CPU convolutions are several times slower
  when a conv's input channels are not a multiple of the vector width: on a 2-core AVX2 CPU,
  LeNet-5 with 7 and 39 kept channels predicted *slower* than the unpruned 20-50 network, and
  1.7x faster once padded to 8 and 40 (``benchmarks/inference_speed.py --channel-multiple 1 8``).
  With ``channel_multiple = m > 1`` every prunable group written by convolutions gets zero
  channels up to a multiple of ``m``: zero filters and biases in its producers, γ = β = 0
  (mean 0, variance 1) in its BatchNorms, zero input weights in its conv consumers, and its
  dense consumers' gathers skip them; they are exactly 0 everywhere, so the logits are
  unchanged. ``kept_units`` lists only real channels. Whether it pays depends on the backend and
  shapes, so the default is no padding and the benchmark measures both.

* **Zero-padded shortcuts** (:class:`bayescomp.models.graph.PaddedShortcut`, He et al.'s option
  A: group S's channel c is added into group T's channel c, T's other channels get zeros). The
  model pads what arrives from S up to T's width, so in the exported network S's kept channels
  must be T's first kept channels, in order: T keeps, among its first ``C_S`` channels, exactly
  the channels S keeps. Export makes it so by keeping in both every channel either keeps (a
  channel kept only for this is computed exactly, a folded one is kept instead), to a fixed
  point over chained stages. Only ``offset = 0`` (zeros appended) is exported, and the model
  must compute the padding from the shapes it is given (``T − S`` channels of its operands),
  never from its constructor's widths; export checks the shapes once and says so otherwise.
* **BatchNorms are kept**, not folded into the preceding convolution: each exported BatchNorm
  is the trained one (γ, β, running mean and variance, ε) over the kept channels, in
  running-average mode, so that the exported network runs the model's own forward pass and its
  BatchNorm parameters stay inspectable; folding them (``W·γ/√(σ²+ε)``) is an inference
  optimisation XLA's fusion already approximates (one fused multiply-add per activation).

The exported network computes the same function as the full-size masked one; its logits differ
only by float32 rounding, because the smaller contractions (and the folded biases) add the same
non-zero terms in a different order without the zero terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp.compression.survivors import GroupChannels, rows_reaching, surviving_channels
from bayescomp.errors import ConfigError
from bayescomp.models.graph import ChannelGraph, batch_norms, channel_graph, weight_layers
from bayescomp.nn import onednn_conv
from bayescomp.nn.norm import BatchNorm
from bayescomp.pruning import masked_bias


class PrunedDense(nnx.Module):
    """A plain dense layer, optionally reading only some of its input features.

    Args:
        kernel: ``(kept_in, kept_out)``.
        bias: ``(kept_out,)``.
        input_index: Sorted indices of the input features read (a static gather applied before
            the matmul), or ``None`` to read all of them.
        dtype: Of the parameters (float64 only for the constant probe).
    """

    def __init__(self, kernel: np.ndarray, bias: np.ndarray,
                 input_index: Sequence[int] | None = None, *, dtype=jnp.float32):
        self.kernel = nnx.Param(jnp.asarray(kernel, dtype))
        self.bias = nnx.Param(jnp.asarray(bias, dtype))
        # A tuple, not an array: it stays in the graph definition, so the gather indices are
        # compile-time constants under jit instead of a traced argument.
        self.input_index = None if input_index is None else tuple(int(i) for i in input_index)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """``(batch, in) -> (batch, kept_out)``; ``rngs`` is accepted and unused (point weights)."""
        del rngs
        if self.input_index is not None:
            x = jnp.take(x, np.asarray(self.input_index, np.int32), axis=1,
                         indices_are_sorted=True, unique_indices=True)
        return x @ self.kernel[...] + self.bias[...]


class PrunedConv(nnx.Module):
    """A plain 2-D convolution, NHWC, with the original layer's strides and padding.

    Args:
        kernel: ``(kh, kw, kept_in, kept_out)``.
        bias: ``(kept_out,)``.
        strides: As the original layer's.
        padding: As the original layer's (``"VALID"`` for the LeNets).
        dtype: Of the parameters.
    """

    def __init__(self, kernel: np.ndarray, bias: np.ndarray, *, strides=(1, 1),
                 padding="VALID", dtype=jnp.float32):
        self.kernel = nnx.Param(jnp.asarray(kernel, dtype))
        self.bias = nnx.Param(jnp.asarray(bias, dtype))
        self.strides = tuple(strides)
        self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """``(batch, h, w, kept_in) -> (batch, h', w', kept_out)``."""
        del rngs
        kernel = self.kernel[...]
        # The same convolution as the full network's (oneDNN's on CPU where it is installed),
        # so that a measured speed-up compares like with like.
        if onednn_conv.applies(x, kernel, self.strides, self.padding):
            y = onednn_conv.conv(x, kernel, self.strides, self.padding)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, window_strides=self.strides,
                                             padding=self.padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...]


class PrunedNetwork(nnx.Module):
    """The exported network: the model's forward pass over plain, smaller layers.

    Attribute access falls through to the model, so ``net.fc1`` is the exported ``fc1`` and
    ``nnx.state(net, nnx.Param)`` lists the kept kernels and biases.

    Args:
        network: The model with its weight layers and BatchNorms replaced.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs.
        kept_units: Layer path → indices of the original output channels kept (the classes for
            the last layer), padding excluded.
    """

    def __init__(self, network: nnx.Module, *, input_shape, num_classes: int,
                 kept_units: Mapping[str, Sequence[int]]):
        self.network = network
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.kept_units = {name: tuple(int(i) for i in idx) for name, idx in kept_units.items()}

    def __getattr__(self, name: str):
        # Only reached for names the wrapper lacks; guard the attribute it delegates to.
        network = self.__dict__.get("network")
        if network is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(network, name)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, c)``."""
        return self.network(x)

    def num_params(self) -> int:
        """Stored numbers: kernels, biases, and BatchNorm scales, shifts and statistics."""
        return sum(int(p.size) for p in jax.tree.leaves(nnx.state(self, nnx.Param))) + sum(
            int(p.size) for p in jax.tree.leaves(nnx.state(self, nnx.BatchStat)))


def _set_module(root: nnx.Module, path: str, module) -> None:
    """Put ``module`` at dotted ``path`` under ``root`` (integer parts index lists)."""
    *parents, last = path.split(".")
    parent = root
    for part in parents:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    if last.isdigit():
        parent[int(last)] = module
    else:
        setattr(parent, last, module)


def _with_modules(model: nnx.Module, modules: Mapping[str, object]) -> nnx.Module:
    """A copy of ``model`` with the modules at the given paths replaced."""
    network = nnx.clone(model)
    for path, module in modules.items():
        _set_module(network, path, module)
    return network


def _plain_layer(layer, kernel, bias, input_index=None, dtype=jnp.float32):
    if kernel.ndim == 4:
        return PrunedConv(kernel, bias, strides=layer.strides, padding=layer.padding, dtype=dtype)
    return PrunedDense(kernel, bias, input_index, dtype=dtype)


def _plain_norm(norm: BatchNorm, index: np.ndarray, width: int, dtype=jnp.float32) -> BatchNorm:
    """``norm`` over the channels ``index``, zero-padded to ``width``, running-average view.

    A padding channel has γ = β = 0, mean 0 and variance 1, so it outputs exactly 0.
    """
    exported = BatchNorm(width, momentum=norm.momentum, epsilon=norm.epsilon,
                         use_running_average=True)
    extra = width - index.size
    for variable, source, fill in ((exported.scale, norm.scale, 0.0),
                                   (exported.bias, norm.bias, 0.0),
                                   (exported.mean, norm.mean, 0.0),
                                   (exported.var, norm.var, 1.0)):
        kept = np.asarray(source[...])[index]
        variable.set_value(jnp.asarray(np.pad(kept, (0, extra), constant_values=fill), dtype))
    return exported


def _absorbs_constants(layer) -> bool:
    """Whether a constant input channel can be folded into ``layer``'s bias exactly."""
    padding = getattr(layer, "padding", "VALID")  # a dense layer has none: it always absorbs
    if isinstance(padding, str):
        return padding == "VALID"
    return all(low == high == 0 for low, high in padding)


class _InputRecorder:
    """Stands in for a layer during the constant probe and keeps the input it was called with."""

    def __init__(self, layer):
        self.layer, self.inputs = layer, None

    def __call__(self, x, **kwargs):
        self.inputs = np.asarray(x)
        return self.layer(x, **kwargs)


def _constant_inputs(model, graph: ChannelGraph, kernels, biases, readers: Sequence[str],
                     input_shape) -> dict[str, np.ndarray]:
    """Each reader's input on two random examples, from the full-size masked float64 network."""
    layers = dict(weight_layers(model))
    with jax.enable_x64(True):
        modules = {name: _plain_layer(layers[name], kernels[name], biases[name],
                                      dtype=jnp.float64) for name in graph.layers}
        for path, norm in batch_norms(model).items():
            modules[path] = _plain_norm(norm, np.arange(norm.num_features), norm.num_features,
                                        jnp.float64)
        recorders = {name: _InputRecorder(modules[name]) for name in readers}
        network = _with_modules(model, {**modules, **recorders})
        x = jax.random.normal(jax.random.key(0), (2, *input_shape), jnp.float64)
        network(x)
    return {name: recorder.inputs for name, recorder in recorders.items()}


def _fold_constants(model, graph: ChannelGraph, channels: Mapping[str, GroupChannels],
                    kernels, biases, input_shape) -> dict[str, np.ndarray]:
    """Biases with every folded channel's ``Σ W·v`` added (float64), by layer path."""
    readers = [c.layer for g in graph.groups for c in g.consumers if channels[g.name].folded.any()]
    if not readers:
        return biases
    inputs = _constant_inputs(model, graph, kernels, biases, readers, input_shape)
    biases = dict(biases)
    for name in readers:
        group, consumer = graph.input_of(name)
        folded, x = channels[group.name].folded, inputs[name]
        # Per input row of the reader: a dense layer's flattened rows, a conv's channels.
        samples = x.reshape(-1, x.shape[-1])
        value = samples[0]
        rows = np.tile(folded, consumer.positions)
        if not np.allclose(samples[:, rows], value[rows], rtol=1e-9, atol=1e-12):
            raise ConfigError(
                f"{type(model).__name__}: channels of group {group.name!r} that every producer "
                f"pruned still vary at the input of {name}; its forward pass must only apply "
                "per-channel element-wise operations (BatchNorm, ReLU, add, unpadded pooling) "
                "between a group's producers and its consumers, or declare the group "
                "prunable=False")
        kernel = kernels[name]
        # Σ over taps / positions of the rows fed by a folded channel, times its constant.
        contribution = (kernel[..., rows, :] * value[rows][:, None]).reshape(-1, kernel.shape[-1])
        biases[name] = biases[name] + contribution.sum(axis=0)
    return biases


def _align_shortcuts(graph: ChannelGraph, channels: Mapping[str, GroupChannels]
                     ) -> dict[str, GroupChannels]:
    """Kept channels that line up across every zero-padded shortcut (module docstring).

    For a shortcut from S into T (offset 0), a channel c < C_S is kept in both groups if either
    keeps it, until no shortcut changes anything; a channel kept for this is no longer folded.

    Raises:
        ConfigError: a shortcut with a non-zero offset (zeros not only appended).
    """
    links = [(target, shortcut) for target in graph.groups
             for shortcut in getattr(target, "shortcuts", ())]
    if not links:
        return dict(channels)
    for target, shortcut in links:
        if shortcut.offset != 0:
            raise ConfigError(f"group {target.name!r} has a zero-padded shortcut from "
                              f"{shortcut.source!r} at offset {shortcut.offset}; export places "
                              "a shortcut's channels first (offset 0) only")
    kept = {name: group.kept.copy() for name, group in channels.items()}
    changed = True
    while changed:
        changed = False
        for target, shortcut in links:
            size = kept[shortcut.source].size
            union = kept[shortcut.source] | kept[target.name][:size]
            if (union != kept[shortcut.source]).any() or (union != kept[target.name][:size]).any():
                kept[shortcut.source] = union
                kept[target.name][:size] = union
                changed = True
    return {name: GroupChannels(group.read, group.folded & ~kept[name], kept[name])
            for name, group in channels.items()}


def _check_shapes(network: PrunedNetwork, model: nnx.Module, input_shape) -> None:
    """Trace the exported network once (shapes only, nothing computed).

    Raises:
        ConfigError: the model's forward pass does not fit the exported widths (it hard-codes a
            channel count, e.g. a zero-padded shortcut's width taken from its constructor).
    """
    try:
        jax.eval_shape(network, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"{type(model).__name__}'s forward pass does not run at the exported channel counts "
            f"({str(error).splitlines()[0][:200]}); it must take every channel count from the "
            "arrays it is given (a zero-padded shortcut pads to its operand's width), never "
            "from its constructor's widths") from None


def _widths(graph: ChannelGraph, channels, kernels, channel_multiple: int) -> dict[str, int]:
    """Exported channels per group: kept, plus zero channels for prunable conv groups."""
    widths = {}
    for group in graph.groups:
        kept = int(channels[group.name].kept.sum())
        conv = group.producers and all(kernels[p].ndim == 4 for p in group.producers)
        widths[group.name] = kept + (-kept % channel_multiple if group.prunable and conv else 0)
    return widths


def _exported_layer(name, layer, graph: ChannelGraph, channels, widths, kernel, bias, mask):
    """The kept block of one weight layer, zero-padded, as a plain layer."""
    out_group, (in_group, consumer) = graph.output_of(name), graph.input_of(name)
    out_index = np.flatnonzero(channels[out_group.name].kept)
    in_kept = channels[in_group.name].kept
    out_extra = widths[out_group.name] - out_index.size
    in_extra = widths[in_group.name] - int(in_kept.sum())
    bias = np.pad(bias[out_index], (0, out_extra))
    if kernel.ndim == 4:
        kernel = kernel[..., np.flatnonzero(in_kept), :][..., out_index]
        kernel = np.pad(kernel, [(0, 0), (0, 0), (0, in_extra), (0, out_extra)])
        return _plain_layer(layer, kernel, bias)
    # Rows of the kept channels, p·C + c in order: the flatten of the exported map, p·C' + c'.
    flat_rows = np.flatnonzero(np.tile(in_kept, consumer.positions))
    row_read = rows_reaching(mask, channels[out_group.name].read)[flat_rows]
    exported_rows = (np.arange(consumer.positions)[:, None] * widths[in_group.name]
                     + np.arange(int(in_kept.sum()))[None, :]).ravel()
    gather = None if row_read.all() and not in_extra else exported_rows[row_read]
    kernel = np.pad(kernel[flat_rows[row_read]][:, out_index], [(0, 0), (0, out_extra)])
    return _plain_layer(layer, kernel, bias, gather)


def export_model(model: nnx.Module, masks: Mapping[str, np.ndarray], *, input_shape,
                 channel_multiple: int = 1) -> PrunedNetwork:
    """Build the physically pruned network of ``model`` under ``masks``.

    Args:
        model: A model of :mod:`bayescomp.models` (point or variational weights; the posterior
            means are exported) with its BatchNorms' running statistics.
        masks: Kernel-shaped keep masks by layer path (e.g.
            :func:`bayescomp.pruning.propagated_masks`). Removed weights are exported as 0
            even where a mean is not; a removed output channel loses its bias where the
            posterior's groups scale it (:func:`bayescomp.pruning.masked_bias`).
        input_shape: ``(h, w, c)`` of one example.
        channel_multiple: Zero-pad conv groups to a multiple of this (module docstring).

    Returns:
        A :class:`PrunedNetwork` with the logits of the masked model (posterior means times
        masks, BatchNorms in running-average mode) up to float32 rounding.
    """
    if int(channel_multiple) < 1:
        raise ValueError(f"channel_multiple must be >= 1, got {channel_multiple}")
    graph, layers = channel_graph(model), dict(weight_layers(model))
    masks = {name: np.asarray(masks[name], bool) for name in graph.layers}
    for name in graph.layers:
        shape = tuple(layers[name].posterior.mean().shape)
        if masks[name].shape != shape:
            raise ValueError(f"{name}: mask {masks[name].shape} for kernel {shape}")
    # float64: the folded biases. The structure comes from the masks, not from kernel != 0 (a
    # kept weight may be 0); removed weights are zeroed so that no fold picks one up.
    kernels = {name: np.where(masks[name], np.asarray(layers[name].posterior.mean(), np.float64),
                              0.0) for name in graph.layers}
    biases = {name: masked_bias(layers[name], masks[name]).astype(np.float64)
              for name in graph.layers}
    channels = surviving_channels(graph, masks, {n: _absorbs_constants(layers[n])
                                                 for n in graph.layers})
    channels = _align_shortcuts(graph, channels)
    biases = _fold_constants(model, graph, channels, kernels, biases, input_shape)
    widths = _widths(graph, channels, kernels, int(channel_multiple))
    modules = {name: _exported_layer(name, layers[name], graph, channels, widths, kernels[name],
                                     biases[name], masks[name]) for name in graph.layers}
    norms = batch_norms(model)
    for group in graph.groups:
        for path in group.norms:
            modules[path] = _plain_norm(norms[path], np.flatnonzero(channels[group.name].kept),
                                        widths[group.name])
    kept_units = {name: np.flatnonzero(channels[graph.output_of(name).name].kept)
                  for name in graph.layers}
    num_classes = sum(graph.sizes[g.name] for g in graph.groups if not g.consumers)
    network = PrunedNetwork(_with_modules(model, modules), input_shape=input_shape,
                            num_classes=num_classes, kept_units=kept_units)
    _check_shapes(network, model, input_shape)
    return network


def export_pruned(kernels: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                  masks: Sequence[np.ndarray], *, model_name: str, input_shape,
                  num_classes: int, channel_multiple: int = 1, norms=None,
                  widths=None) -> PrunedNetwork:
    """:func:`export_model` of the quantized (full-size) network given as per-layer lists.

    Args:
        kernels: One kernel per layer in the model's ``layer_names`` order, Flax layout (dense
            ``(in, out)``, conv ``(kh, kw, in, out)``), removed weights exactly 0.
        biases: One bias ``(out,)`` per layer.
        masks: Keep masks, kernel-shaped (bool).
        model_name: A key of :data:`bayescomp.models.REGISTRY`.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs (checked against the last kernel).
        channel_multiple: See :func:`export_model`.
        norms: BatchNorm path → :class:`~bayescomp.compression.quantize.NormParams`
            (``QuantizedNetwork.norms``, ``DecodedNetwork.norms``); required for a model with
            BatchNorms, which are exported in running-average mode over the kept channels.
        widths: The model's ``widths`` (``None``: every layer's output size but the last).

    Raises:
        ConfigError: an unknown model, or one with BatchNorms and no ``norms`` (a network
            written before BatchNorm parameters were carried: compress the run again).
    """
    from bayescomp import models
    from bayescomp.compression.quantize import point_model  # late: quantize imports models

    model_cls = models.get(model_name)
    names = list(model_cls.layer_names)
    if not len(kernels) == len(biases) == len(masks) == len(names):
        raise ValueError(f"{model_name} has layers {names}; got {len(kernels)} kernels, "
                         f"{len(biases)} biases and {len(masks)} masks")
    for name, kernel, bias, mask in zip(names, kernels, biases, masks):
        if np.shape(kernel) != np.shape(mask) or np.shape(bias) != np.shape(kernel)[-1:]:
            raise ValueError(f"{name}: kernel {np.shape(kernel)}, mask {np.shape(mask)}, bias "
                             f"{np.shape(bias)} do not fit")
    if np.shape(kernels[-1])[-1] != num_classes:
        raise ValueError(f"the last layer has {np.shape(kernels[-1])[-1]} outputs, not "
                         f"{num_classes} classes")
    model = point_model(model_cls, kernels, biases, input_shape=input_shape,
                        num_classes=num_classes, norms=norms, widths=widths)
    if norms is None and batch_norms(model):
        # Their initial values (γ = 1, β = 0, mean 0, variance 1) are not the trained network's.
        raise ConfigError(f"{model_name} has BatchNorms and the network carries no BatchNorm "
                          "parameters; pass its norms (a quantized_network.npz or .bcz file "
                          "written before they were stored: rerun the run's command and "
                          "`python -m bayescomp.compress RUN_DIR`)")
    return export_model(model, dict(zip(names, masks)), input_shape=input_shape,
                        channel_multiple=channel_multiple)


def export_decoded(network, channel_multiple: int = 1) -> PrunedNetwork:
    """:func:`export_pruned` of a :class:`bayescomp.compression.codec.DecodedNetwork`."""
    return export_pruned(network.kernels, network.biases, network.masks,
                         model_name=network.model_name, input_shape=network.input_shape,
                         num_classes=network.num_classes, channel_multiple=channel_multiple,
                         norms=network.norms, widths=network.widths)


def export_from_file(path: str | Path, channel_multiple: int = 1) -> PrunedNetwork:
    """Read a ``.bcz`` file and export its pruned network (see :func:`export_pruned`).

    Raises:
        CompressedFileError: If the file cannot be read or is not a valid ``.bcz`` file.
    """
    from bayescomp.compression import codec  # late import: codec pulls in the model stack

    _, network = codec.load(path)
    return export_decoded(network, channel_multiple)
