"""Pruning masks from posterior statistics, propagated through the channel groups, and what remains.

A weight (or a group of weights) is removed when its log dropout rate reaches the layer's threshold,
``log α >= t``. Sparse VD uses t = 3 per weight (Molchanov et al. 2017, §5.1: dropout rate above
0.95; the log α histogram is bimodal around it). Bayesian Compression prunes groups with per-layer
thresholds picked from the histograms (the authors' example: −2.8, −3, −5 for LeNet-300-100's three
layers, ``example.py`` of github.com/KarenUllrich/Tutorial_BayesianCompressionForDL) —
:func:`save_log_alpha_histograms` draws them.

Removing a channel has consequences across layers (Louizos et al., NIPS 2017, arXiv:1705.08665, §3).
Which layers share a channel is the model's declaration (:mod:`bayescomp.models.graph`): the
producers that write it, the BatchNorms that normalise it and the consumers that read it, one
group per residual add, the flatten's ``H·W`` rows per channel declared, not guessed. Within a
prunable group, channel c is removed from every producer (output column) and every consumer
(input rows, every flatten position) when

* **backward**: no consumer keeps a weight reading it, so its value is never used;
* **forward**: it is exactly zero: every producer removed its whole column *and* its bias with
  it (a conv channel whose group scale removed its kernel), and no BatchNorm normalises it. The
  operations a model applies between a group's producers and its consumers (ReLU, pooling, the
  residual add) keep a zero at zero; a BatchNorm does not: it turns 0 into
  ``β − μ·γ/√(σ²+ε)``, a constant that export folds into the consumers' biases
  (:mod:`bayescomp.compression.survivors`), so here its consumers keep their weights.

The network input and the classifier outputs are not prunable. These rules never change the
network's predictions; they only make the count of what must be stored honest. Per-weight
(unstructured) masks propagate backward only: a unit with no incoming weights still outputs
``relu(bias)``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np
from flax import nnx

from bayescomp import histogram_figure
from bayescomp.errors import ConfigError
from bayescomp.models.graph import ChannelGraph, ChannelGroup, channel_graph, weight_layers
from bayescomp.nn.layer import VariationalLayer


def own_masks(model: nnx.Module) -> dict[str, np.ndarray]:
    """Each layer's keep mask from its own log α and threshold, kernel-shaped (bool)."""
    masks = {}
    for name, layer in weight_layers(model):
        kernel_shape = layer.posterior.mean().shape
        mask = layer.keep_mask()
        masks[name] = np.ones(kernel_shape, bool) if mask is None else np.array(
            np.broadcast_to(np.asarray(mask) > 0, kernel_shape))
    return masks


def masked_bias(layer: VariationalLayer, mask: np.ndarray) -> np.ndarray:
    """The layer's posterior-mean bias under ``mask`` (float32).

    A posterior whose groups scale the bias (output-channel group scales) removes the bias of an
    output channel that keeps no weight, as its pruned view does; any other bias stays.
    """
    bias = np.asarray(layer.mean_bias(), np.float32)
    if not layer.posterior.masks_bias:
        return bias
    return np.where(mask.reshape(-1, mask.shape[-1]).any(axis=0), bias, 0.0).astype(np.float32)


def input_rows_kept(mask: np.ndarray) -> np.ndarray:
    """Input rows (kernel axis ``-2``) that keep a weight, over every tap and output."""
    return mask.any(axis=tuple(a for a in range(mask.ndim) if a != mask.ndim - 2))


def output_columns_kept(mask: np.ndarray) -> np.ndarray:
    """Output columns (kernel axis ``-1``) that keep a weight."""
    return mask.reshape(-1, mask.shape[-1]).any(axis=0)


def channels_read(graph: ChannelGraph, group: ChannelGroup,
                  masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Channels of ``group`` that some consumer keeps a weight from (at any flatten position),
    directly or through a zero-padded shortcut into a group that reads them
    (:class:`bayescomp.models.graph.PaddedShortcut`: channel c of the source is channel
    ``offset + c`` of the group declaring it)."""
    read = np.zeros(graph.sizes[group.name], bool)
    for consumer in group.consumers:
        rows = input_rows_kept(masks[consumer.layer])
        read |= rows.reshape(consumer.positions, -1).any(axis=0)  # row p·C + c is channel c
    # Shortcuts only lead to later stages, so this recursion ends.
    for target in graph.groups:
        for shortcut in getattr(target, "shortcuts", ()):
            if shortcut.source == group.name:
                carried = channels_read(graph, target, masks)
                read |= carried[shortcut.offset: shortcut.offset + read.size]
    return read


def _with_group_mask(graph: ChannelGraph, masks: dict[str, np.ndarray], group: ChannelGroup,
                     keep: np.ndarray) -> bool:
    """Remove the channels ``~keep`` of ``group`` from its producers and consumers in place.

    Returns:
        Whether any mask changed.
    """
    changed = False
    for producer in group.producers:
        new = masks[producer] & keep
        changed |= bool((new != masks[producer]).any())
        masks[producer] = new
    for consumer in group.consumers:
        rows = np.tile(keep, consumer.positions)  # row p·C + c is channel c at position p
        new = masks[consumer.layer] & rows[:, None]
        changed |= bool((new != masks[consumer.layer]).any())
        masks[consumer.layer] = new
    return changed


def apply_group_masks(model: nnx.Module, masks: Mapping[str, np.ndarray],
                      group_masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Remove whole channels: ``group_masks[g][c] = False`` removes channel c of group g.

    The channel goes from every producer's output column and every consumer's input rows (all
    ``H·W`` rows of a flatten); its BatchNorm entries go when the network is exported
    (:func:`bayescomp.compression.export.export_model`), which keeps the channels that some
    weight still reads.

    Args:
        model: The model whose channel groups are meant.
        masks: Kernel-shaped keep masks by layer path.
        group_masks: Group name → boolean keep vector over its channels.

    Returns:
        New masks (the arguments are not modified).

    Raises:
        ConfigError: a group that is unknown, not prunable, or a keep vector of the wrong size.
    """
    graph = channel_graph(model)
    masks = {name: np.asarray(mask, bool).copy() for name, mask in masks.items()}
    for name, keep in group_masks.items():
        if name not in graph.sizes:
            raise ConfigError(f"no channel group {name!r}; the groups are {list(graph.sizes)}")
        group, keep = graph.group(name), np.asarray(keep, bool)
        if not group.prunable:
            raise ConfigError(f"channel group {name!r} is not prunable (network input or output)")
        if keep.shape != (graph.sizes[name],):
            raise ConfigError(f"group {name!r} has {graph.sizes[name]} channels; its keep mask "
                              f"has shape {keep.shape}")
        _with_group_mask(graph, masks, group, keep)
    return masks


def propagated_masks(model: nnx.Module) -> dict[str, np.ndarray]:
    """Keep masks after propagation through the channel groups (module docstring), by layer path.

    Removals only shrink masks, so applying the two rules group by group until nothing changes
    reaches the same fixed point in any order.
    """
    graph = channel_graph(model)
    layers = dict(weight_layers(model))
    masks = own_masks(model)

    def propagate(group) -> bool:
        zero = np.zeros(graph.sizes[group.name], bool)
        if not group.norms and all(layers[p].posterior.masks_bias for p in group.producers):
            zero = ~np.any([output_columns_kept(masks[p]) for p in group.producers], axis=0)
        return _with_group_mask(graph, masks, group, channels_read(graph, group, masks) & ~zero)

    graph.until_stable(propagate)
    return masks


class RuinousPruningError(ConfigError):
    """Pruning thresholds that would leave a ruined network: a layer emptied, or the training
    error raised past the tolerance (:func:`bayescomp.threshold_selection.ruin`).

    Attributes:
        emptied: The layers the thresholds empty (the cause first; empty when the error rise
            alone is the reason).
    """

    def __init__(self, message: str, emptied=()):
        super().__init__(message)
        self.emptied = list(emptied)


def emptied_layers(model: nnx.Module, masks: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """Layers that keep no weight at the model's thresholds, named by cause.

    A layer whose own threshold removes every group is the cause, and only such layers are
    named; propagation then empties the layers feeding it, which is a consequence. Where no
    layer empties itself, the layers that propagation empties are named (a conv channel group
    whose last channel goes can take every row a following dense layer kept with it).

    Args:
        model: The model, with its layers' ``prune_threshold`` set.
        masks: Its propagated masks (:func:`propagated_masks`), if already computed.

    Returns:
        Layer names in model order; empty when every layer keeps a weight.
    """
    causes = [name for name, mask in own_masks(model).items() if not mask.any()]
    if causes:
        return causes
    masks = propagated_masks(model) if masks is None else masks
    return [name for name, mask in masks.items() if not np.asarray(mask).any()]


def kept_groups(model: nnx.Module) -> dict[str, dict]:
    """What each thresholded layer's own threshold keeps of its groups (before propagation).

    A group is what one log α prunes: a weight (Sparse VD), an input unit of a dense layer or an
    output channel of a conv layer (Bayesian Compression's group scales z).

    Returns:
        ``{layer: {"kept": int, "groups": int, "unit": str, "threshold": float | None}}`` for
        every layer with a log α, in model order.
    """
    counts = {}
    for name, layer in weight_layers(model):
        log_alpha = layer.log_alpha()
        if log_alpha is None:
            continue
        values = np.asarray(log_alpha).ravel()
        kernel_shape = layer.posterior.mean().shape
        if values.size == int(np.prod(kernel_shape)):
            unit = "weights"
        else:
            unit = "output channels" if len(kernel_shape) == 4 else "input units"
        threshold = layer.prune_threshold
        kept = values.size if threshold is None else int((values < threshold).sum())
        counts[name] = {"kept": kept, "groups": int(values.size), "unit": unit,
                        "threshold": threshold}
    return counts


def kept_weight_counts(masks: dict[str, np.ndarray]) -> tuple[int, int, list[int], list[int]]:
    """Count weights (kernels only, no biases) before and after pruning.

    Returns:
        ``(weights_total, weights_kept, total_per_layer, kept_per_layer)``.
    """
    total_per_layer = [int(m.size) for m in masks.values()]
    kept_per_layer = [int(m.sum()) for m in masks.values()]
    return sum(total_per_layer), sum(kept_per_layer), total_per_layer, kept_per_layer


def save_log_alpha_histograms(model: nnx.Module, directory: str | pathlib.Path) -> list[str]:
    """Save one PNG per layer: the histogram of log α with the layer's threshold marked.

    A bimodal histogram with the threshold in the gap is what a well-chosen threshold looks like
    (Molchanov's answer in bayesgroup/variational-dropout-sparsifies-dnn#9).

    Returns:
        The paths written.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, layer in weight_layers(model):
        log_alpha = layer.log_alpha()
        if log_alpha is None:
            continue
        values = np.asarray(log_alpha).ravel()
        fig, ax = histogram_figure.log_count_axes(title=f"{name}", xlabel="log α",
                                                  ylabel="count (weights or groups)")
        histogram_figure.add_histogram(ax, values, 100, color="tab:blue")
        if layer.prune_threshold is not None:
            kept = int((values < layer.prune_threshold).sum())
            ax.axvline(layer.prune_threshold, color="tab:red", linestyle="--",
                       label=f"threshold {layer.prune_threshold:g}: {kept}/{values.size} kept")
            ax.legend(fontsize=8)
        path = directory / f"log_alpha_{name}.png"
        histogram_figure.save(fig, path)
        paths.append(str(path))
    return paths
