r"""Parameters and multiply-adds per layer and in total, of a dense or a channel-pruned network.

The convention of the CIFAR channel-pruning papers (Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017, Table 1; Liu et al., "Learning Efficient Convolutional Networks through
Network Slimming", ICCV 2017, Table 1; Zhao et al., "Variational Convolutional Neural Network
Pruning", CVPR 2019, Table 1), per example:

.. math::

    \mathrm{MACs}_\mathrm{conv} = H_\mathrm{out} W_\mathrm{out} \cdot k_h k_w \cdot
        C_\mathrm{in} C_\mathrm{out}, \qquad
    \mathrm{MACs}_\mathrm{dense} = P \cdot C_\mathrm{in} \cdot C_\mathrm{out},

with ``C`` the *kept* channels of the groups the layer reads and writes
(:mod:`bayescomp.models.graph`) and ``P`` the flatten positions per input channel (``H·W`` of the
map a dense layer flattens, 1 otherwise). Pooling, ReLU, residual adds and the parameter-free
option-A shortcuts cost nothing. A BatchNorm at inference is one multiply-add per element
(``a·x + b``, the statistics folded into a and b); :attr:`Count.norm_macs` reports it separately,
since the papers differ on it (below).

Parameters: kernel entries (:attr:`Count.weights`), BatchNorm γ and β (:attr:`Count.norm_params`;
the running statistics are state, not parameters), and biases (:attr:`Count.biases`) of the
layers whose output group has no BatchNorm. Every model here normalises a BatchNorm'd group
before any non-linearity on every path (conv → BN → ReLU; the pre-activation sum reaches its
BatchNorms through sums and convolutions only), so a bias there is removed by the batch mean: its
gradient is zero, it never leaves its initial 0, and the papers' PyTorch networks have none
(``bias=False``). bayescomp's layers all carry a bias (:mod:`bayescomp.nn.layer`); these are not
counted. :attr:`Count.params` is the sum of the three, PyTorch's
``sum(p.numel() for p in model.parameters())`` for the papers' networks.

What gives each published number (``tests/models/test_counting.py`` checks them; 32x32x3, 10
classes):

=========== =============================== ================================================
network     parameters (``params``)         multiply-adds
=========== =============================== ================================================
VGG-16      14,987,210 = 14.99M (Li et al.   ``macs`` 313,463,808 = 313.5M (Li et al. Table
            Table 2, 1.5×10⁷; VCNN's 14.71M  2, 3.13×10⁸; VCNN 313M)
            is the conv kernels alone)
VGG-19      20,035,018 = 20.04M (Liu et al.) ``macs + norm_macs`` 398,439,424 = 398.4M: half
                                            of Liu et al.'s 7.97×10⁸ FLOPs; conv and dense
                                            alone give 398.1M (7.96×10⁸)
ResNet-20   269,722 = 0.27M                  ``macs`` 40,551,040 = 40.6M
ResNet-56   853,018 = 0.85M                  ``macs`` 125,485,696 = 125.5M
ResNet-110  1,727,962 = 1.73M                ``macs`` 252,887,680 = 252.9M
ResNet-164  1,703,258 = 1.70M (Liu et al.)   ``macs`` 247,646,720 = 247.6M
LeNet-5     ``weights`` 430,500              ``macs`` 2,293,000
=========== =============================== ================================================

Each term matters somewhere: counting the dead biases too gives ResNet-56 855,050 = 0.86M;
leaving γ and β out gives ResNet-110 1.72M and VGG-19 20.02M; counting BatchNorm's
multiply-adds gives ResNet-20 40.7M and VGG-16 313.7M, and leaving them out of VGG-19's gives
398.1M. Hence the table names the term each paper's total includes.

Usage::

    count(model, (32, 32, 3))                              # the dense network
    count(model, (32, 32, 3), keep={"stage1.0.conv1": mask})  # a channel-pruned one

``keep`` maps group names to boolean keep vectors over the group's channels (groups left out
keep everything). The model may be abstract (``nnx.eval_shape(lambda: Model(...))``): only
shapes are read, from one abstract forward pass (``jax.eval_shape``) that records each weight
layer's contraction output and each BatchNorm's output.

**A pruned network's count, from its kernel masks** (every run's ``counting`` in
``metrics.json``, :func:`summary`, written by :func:`bayescomp.metrics.finish_run`):

* ``pruned`` is *structural*: what the physically smaller network of
  :func:`bayescomp.compression.export.export_model` computes. Its channels are the ones export
  keeps (:func:`pruned_structure`: read by some kept weight, and not input-independent, which
  export folds into the consumers' biases; so a unit whose outgoing weights are all pruned, or
  whose incoming are, is gone), and a dense layer counts only the input rows export gathers
  (a pixel LeNet-300-100's first layer never reads, a flatten position LeNet-5's fc1 never
  reads: ``rows × kept outputs`` weights rather than ``positions × channels × outputs``). A
  conv keeps whole ``k_h × k_w`` filters between kept channels: a weight pruned inside a kept
  filter is still multiplied (as a zero). Biases, BatchNorm γ, β and their multiply-adds as
  above, over the kept channels. For per-weight (unstructured) pruning such as Deep
  Compression and soft weight-sharing this is mostly the dense count: few units lose every
  weight.
* ``nonzero_macs`` is what unstructured-pruning papers count: per layer, the weights the mask
  keeps times the layer's output positions (``H_out·W_out`` for a conv, 1 for a dense layer),
  the multiply-adds of a sparse kernel that skips every pruned weight. No biases, no
  BatchNorm. For group pruning whose groups are whole channels and units it equals the
  structural ``macs`` in networks without BatchNorm (the LeNets); where a BatchNorm follows a
  removed channel, its shift is a constant that export cannot fold into a zero-padded conv, so
  the channel and its consumers' rows stay in the structural count (:func:`pruned_structure`)
  and ``macs`` exceeds ``nonzero_macs``.

Channel padding (export's ``channel_multiple``) is a speed choice and is never counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.models.graph import ChannelGraph, batch_norms, channel_graph, weight_layers
from bayescomp.nn.conv import VariationalConv


@dataclasses.dataclass(frozen=True)
class LayerCount:
    """What one weight layer costs.

    Attributes:
        kind: ``"conv"`` or ``"dense"``.
        weights: Kernel entries between kept channels.
        biases: Counted biases: the kept outputs, or 0 where a BatchNorm normalises them.
        macs: Multiply-adds per example.
    """

    kind: str
    weights: int
    biases: int
    macs: int


@dataclasses.dataclass(frozen=True)
class NormCount:
    """What one BatchNorm costs.

    Attributes:
        params: γ and β of the kept channels.
        macs: One multiply-add per normalised element per example (inference).
    """

    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class Count:
    """Per-layer and total counts (module docstring).

    Attributes:
        layers: By weight-layer path, in the model's ``layer_names`` order.
        norms: By BatchNorm path, in the order the channel groups declare them.
    """

    layers: Mapping[str, LayerCount]
    norms: Mapping[str, NormCount]

    @property
    def weights(self) -> int:
        """Kernel entries."""
        return sum(c.weights for c in self.layers.values())

    @property
    def biases(self) -> int:
        """Counted biases (of layers whose outputs no BatchNorm normalises)."""
        return sum(c.biases for c in self.layers.values())

    @property
    def norm_params(self) -> int:
        """BatchNorm γ and β."""
        return sum(c.params for c in self.norms.values())

    @property
    def params(self) -> int:
        """Weights, counted biases and BatchNorm γ, β."""
        return self.weights + self.biases + self.norm_params

    @property
    def macs(self) -> int:
        """Multiply-adds of the conv and dense layers, per example."""
        return sum(c.macs for c in self.layers.values())

    @property
    def norm_macs(self) -> int:
        """Multiply-adds of the BatchNorms at inference, per example."""
        return sum(c.macs for c in self.norms.values())

    def as_dict(self) -> dict:
        """Totals and per-layer counts as plain JSON-ready values."""
        return {
            "params": self.params, "weights": self.weights, "biases": self.biases,
            "norm_params": self.norm_params, "macs": self.macs, "norm_macs": self.norm_macs,
            "layers": {name: dataclasses.asdict(c) for name, c in self.layers.items()},
            "norms": {name: dataclasses.asdict(c) for name, c in self.norms.items()},
        }


def count(model: nnx.Module, input_shape, keep: Mapping[str, np.ndarray] | None = None
          ) -> Count:
    """Parameters and multiply-adds of ``model`` on ``input_shape`` inputs, channels ``keep``.

    Args:
        model: A model declaring its channel groups (concrete or abstract).
        input_shape: ``(h, w, c)`` of one example.
        keep: Group name → boolean keep vector over the group's channels; ``None`` (or a group
            left out) keeps every channel.

    Returns:
        The :class:`Count`.

    Raises:
        ConfigError: ``keep`` names a group the model does not have, or one that is not
            prunable and drops a channel, or a vector of the wrong size.
    """
    graph = channel_graph(model)
    kept = _kept_channels(graph, keep or {})
    return _count(model, graph, kept, {}, _output_shapes(model, tuple(int(d) for d in input_shape)))


def macs_of_widths(model: nnx.Module, input_shape) -> Callable[[Mapping[str, int]], int]:
    """A function from kept channels per group to the network's multiply-adds per example.

    The same count as ``count(model, input_shape, keep).macs`` for any ``keep`` with those
    numbers of channels (which channels does not change a count), with the abstract forward pass
    that finds each layer's output positions run once, not per call: what a search over widths
    (:func:`bayescomp.channel_selection.budget_widths`) needs.

    Args:
        model: A model declaring its channel groups.
        input_shape: ``(h, w, c)`` of one example.

    Returns:
        ``macs(widths)``: ``widths`` maps prunable group names to kept channel counts; groups
        left out keep all their channels.
    """
    graph = channel_graph(model)
    outputs = _output_shapes(model, tuple(int(d) for d in input_shape))

    def macs(widths: Mapping[str, int]) -> int:
        kept = dict(graph.sizes)
        for name, width in widths.items():
            if name not in graph.sizes or not graph.group(name).prunable:
                raise ConfigError(f"{name!r} is not a prunable channel group; the groups are "
                                  f"{list(graph.sizes)}")
            if (isinstance(width, bool) or not isinstance(width, (int, np.integer))
                    or not 1 <= width <= graph.sizes[name]):
                raise ConfigError(f"the width of {name!r} must be an integer in "
                                  f"[1, {graph.sizes[name]}], got {width!r}")
            kept[name] = int(width)
        return _count(model, graph, kept, {}, outputs).macs

    return macs


def _count(model: nnx.Module, graph: ChannelGraph, kept: Mapping[str, int],
           rows: Mapping[str, int], outputs: Mapping[str, list]) -> Count:
    """The :class:`Count` of ``kept`` channels per group; ``rows``: the input rows a dense layer
    keeps where fewer than its kept channels' (:func:`pruned_structure`)."""
    layers = {}
    for name, layer in weight_layers(model):
        in_group, consumer = graph.input_of(name)
        out_group = graph.output_of(name)
        conv = isinstance(layer, VariationalConv)
        if name in rows:
            weights = rows[name] * kept[out_group.name]
        else:
            taps = int(np.prod(layer.kernel_size)) if conv else 1
            weights = taps * consumer.positions * kept[in_group.name] * kept[out_group.name]
        layers[name] = LayerCount(
            kind="conv" if conv else "dense", weights=weights,
            biases=0 if out_group.norms else kept[out_group.name],
            macs=weights * _positions(outputs, name))
    norms = {}
    for group in graph.groups:
        for path in group.norms:
            elements = sum(int(np.prod(shape[1:-1])) for shape in outputs[f"{path}.__call__"])
            norms[path] = NormCount(params=2 * kept[group.name],
                                    macs=elements * kept[group.name])
    return Count(layers, norms)


def _positions(outputs: Mapping[str, list], name: str) -> int:
    """Output positions of weight layer ``name``: a conv's ``H_out·W_out`` (summed over calls),
    1 for a dense layer (its contraction output is ``(1, out)``)."""
    return sum(int(np.prod(shape[1:-1])) for shape in outputs[f"{name}.contract"])


@dataclasses.dataclass(frozen=True)
class Structure:
    """What the exported network of a pruned model keeps (:func:`pruned_structure`).

    Attributes:
        keep: Prunable group name → boolean vector of the channels export keeps.
        rows: Dense layer path → the input rows export's gather keeps.
    """

    keep: Mapping[str, np.ndarray]
    rows: Mapping[str, int]


def pruned_structure(model: nnx.Module, masks: Mapping[str, np.ndarray]) -> Structure:
    """The channels and dense input rows that :func:`bayescomp.compression.export.export_model`
    keeps for ``masks``, computed from the masks and the model's shapes alone.

    Args:
        model: The model (concrete or abstract).
        masks: Kernel-shaped keep masks by layer path (propagated or not: export's own analysis
            removes what propagation would).

    Returns:
        The :class:`Structure` (channel padding never included).
    """
    # Late: export builds on the model stack, which must not import counting at load time.
    from bayescomp.compression.export import _absorbs_constants, _align_shortcuts
    from bayescomp.compression.survivors import rows_reaching, surviving_channels

    graph, layers = channel_graph(model), dict(weight_layers(model))
    masks = {name: np.asarray(masks[name], bool) for name in graph.layers}
    # Export's own two steps, so that this count is the exported network's by construction.
    channels = surviving_channels(graph, masks, {n: _absorbs_constants(layers[n])
                                                 for n in graph.layers})
    channels = _align_shortcuts(graph, channels)
    rows = {}
    for name, layer in layers.items():
        if isinstance(layer, VariationalConv):
            continue  # a conv keeps whole filters between kept channels
        in_group, consumer = graph.input_of(name)
        # export._exported_layer: the rows p·C + c of kept channels that still reach a read
        # output of this layer.
        flat_rows = np.flatnonzero(np.tile(channels[in_group.name].kept, consumer.positions))
        reaching = rows_reaching(masks[name], channels[graph.output_of(name).name].read)
        rows[name] = int(reaching[flat_rows].sum())
    return Structure({g.name: channels[g.name].kept for g in graph.groups if g.prunable}, rows)


def count_pruned(model: nnx.Module, input_shape, masks: Mapping[str, np.ndarray]) -> Count:
    """The structural :class:`Count` of ``model`` pruned by kernel ``masks`` (module docstring).

    Args:
        model: The model (concrete or abstract).
        input_shape: ``(h, w, c)`` of one example.
        masks: Kernel-shaped keep masks by layer path.
    """
    graph = channel_graph(model)
    structure = pruned_structure(model, masks)
    return _count(model, graph, _kept_channels(graph, structure.keep), structure.rows,
                  _output_shapes(model, tuple(int(d) for d in input_shape)))


def nonzero_macs(model: nnx.Module, input_shape, masks: Mapping[str, np.ndarray],
                 *, outputs: Mapping[str, list] | None = None) -> dict[str, int]:
    """Per layer, the weights ``masks`` keeps times the layer's output positions.

    Args:
        model: The model (concrete or abstract).
        input_shape: ``(h, w, c)`` of one example.
        masks: Kernel-shaped keep masks by layer path.
        outputs: The abstract forward pass's shapes, where already traced.

    Returns:
        Layer path → multiply-adds of its kept weights, per example, in ``layer_names`` order.
    """
    if outputs is None:
        outputs = _output_shapes(model, tuple(int(d) for d in input_shape))
    return {name: int(np.count_nonzero(masks[name])) * _positions(outputs, name)
            for name, _ in weight_layers(model)}


def _ratio(dense: int, pruned: int) -> float | None:
    return dense / pruned if pruned else None  # an emptied network has no finite ratio


def nonzero_summary(model: nnx.Module, input_shape, masks: Mapping[str, np.ndarray],
                    dense_macs: int, *, outputs: Mapping[str, list] | None = None) -> dict:
    """The ``nonzero_macs`` keys of ``counting`` (:func:`summary`), against ``dense_macs``."""
    per_layer = nonzero_macs(model, input_shape, masks, outputs=outputs)
    total = sum(per_layer.values())
    return {"nonzero_macs": total, "nonzero_macs_per_layer": per_layer,
            "nonzero_macs_ratio": _ratio(dense_macs, total)}


def summary(model: nnx.Module, input_shape, masks: Mapping[str, np.ndarray]) -> dict:
    """The ``counting`` entry of ``metrics.json``: dense and structurally pruned counts, their
    ratios, and the multiply-adds of the kept weights (module docstring).

    The same format as the channel-pruning procedures' own entry (``dense`` and ``pruned``:
    :meth:`Count.as_dict`; ``params_ratio``, ``macs_ratio`` dense / pruned), plus
    ``nonzero_macs`` (total), ``nonzero_macs_per_layer`` and ``nonzero_macs_ratio``.

    Args:
        model: The model (concrete or abstract, e.g. :func:`shape_model`).
        input_shape: ``(h, w, c)`` of one example.
        masks: Kernel-shaped keep masks by layer path (``zip(quantized.names,
            quantized.masks)``).
    """
    input_shape = tuple(int(d) for d in input_shape)
    graph = channel_graph(model)
    outputs = _output_shapes(model, input_shape)
    dense = _count(model, graph, dict(graph.sizes), {}, outputs)
    structure = pruned_structure(model, masks)
    pruned = _count(model, graph, _kept_channels(graph, structure.keep), structure.rows, outputs)
    return {"dense": dense.as_dict(), "pruned": pruned.as_dict(),
            "params_ratio": _ratio(dense.params, pruned.params),
            "macs_ratio": _ratio(dense.macs, pruned.macs),
            **nonzero_summary(model, input_shape, masks, dense.macs, outputs=outputs)}


def shape_model(model_name: str, input_shape, num_classes: int, widths=None) -> nnx.Module:
    """The registered model ``model_name`` with every array abstract (``nnx.eval_shape``).

    Point layers stand in for the method's: counting reads only shapes, which a method's layers
    do not change.

    Args:
        model_name: A key of :data:`bayescomp.models.REGISTRY`.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs.
        widths: The model's ``widths`` (``None``: its defaults).
    """
    from bayescomp import models  # late: the registry imports every model
    from bayescomp.nn import LayerFactory

    model_cls = models.get(model_name)
    extra = {} if widths is None else {"widths": tuple(widths)}
    return nnx.eval_shape(lambda: model_cls(
        LayerFactory(), rngs=nnx.Rngs(params=0), input_shape=tuple(int(d) for d in input_shape),
        num_classes=int(num_classes), **extra))


def network_summary(model_name: str, network, input_shape, num_classes: int) -> dict:
    """:func:`summary` of a quantized or decoded network (``QuantizedNetwork``,
    ``DecodedNetwork``: ``names``, ``masks``, ``kernels``, ``widths``).

    The model is rebuilt abstractly at the network's widths (``widths``, or the LeNets'
    per-layer output sizes read off its kernels, as :func:`bayescomp.compression.quantize.
    point_model` does).
    """
    from bayescomp.models import hidden_widths

    widths = network.widths if network.widths is not None else hidden_widths(network.kernels)
    model = shape_model(model_name, input_shape, num_classes, widths)
    return summary(model, input_shape, dict(zip(network.names, network.masks)))


def _kept_channels(graph: ChannelGraph, keep: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Kept channels per group, ``keep`` checked against the graph."""
    kept = dict(graph.sizes)
    for name, mask in keep.items():
        if name not in graph.sizes:
            raise ConfigError(f"keep names no channel group {name!r}; the groups are "
                              f"{list(graph.sizes)}")
        mask = np.asarray(mask)
        if mask.shape != (graph.sizes[name],) or mask.dtype != bool:
            raise ConfigError(f"keep[{name!r}] must be a boolean vector of the group's "
                              f"{graph.sizes[name]} channels; got {mask.dtype} {mask.shape}")
        if not graph.group(name).prunable and not mask.all():
            raise ConfigError(f"channel group {name!r} is not prunable (network input or "
                              "output); keep all its channels")
        kept[name] = int(mask.sum())
    return kept


def _output_shapes(model: nnx.Module, input_shape: tuple[int, ...]) -> dict[str, list]:
    """``"<path>.contract"`` (weight layers) and ``"<path>.__call__"`` (BatchNorms) → the shapes
    of their outputs for one example, from an abstract forward pass of the deterministic view.
    """
    graphdef, state = nnx.split(model)
    # nnx.view refuses a setting no module takes: a network without BatchNorm gets none.
    view = {"deterministic": True} | ({"use_running_average": True} if batch_norms(model) else {})

    def forward(state, x):
        network = nnx.view(nnx.merge(graphdef, state), **view)
        _, captured = nnx.capture(network, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        return captured

    captured = jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, *input_shape),
                                                                   jnp.float32))
    shapes = {}
    for path, variable in nnx.to_flat_state(captured):
        values = variable.get_value() if hasattr(variable, "get_value") else variable.value
        shapes[".".join(str(p) for p in path)] = [tuple(v.shape) for v in values]
    missing = [f"{name}.contract" for name, _ in weight_layers(model)
               if f"{name}.contract" not in shapes]
    missing += [f"{name}.__call__" for name in batch_norms(model)
                if f"{name}.__call__" not in shapes]
    if missing:
        raise ConfigError(f"{type(model).__name__}'s forward pass never calls {missing}; every "
                          "declared layer and BatchNorm must be used to be counted")
    return shapes

