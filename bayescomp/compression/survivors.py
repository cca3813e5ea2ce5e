"""Which channels an exported network keeps, and which it folds into its consumers' biases.

Per channel group (:mod:`bayescomp.models.graph`), from the keep masks (kernels in Flax layout:
dense ``(in, out)``, conv ``(kh, kw, in, out)``; a consumer's input row ``p·C + c`` is channel c
at flatten position p):

* **read**: channel c is read if some consumer keeps a weight from one of its rows to a read
  output channel of that consumer. Every channel of a group without consumers (the classes) is
  read. A channel nobody reads never matters.
* **constant**: channel c is input-independent unless some producer keeps a weight from a
  *live* channel of its own input (one that stays in the network: varying, unread, or constant
  but not foldable). Every producer then outputs its bias plus folded constants, the same at
  every position, and the element-wise operations after it (BatchNorm in running-average mode,
  ReLU, the residual add, unpadded pooling) keep it so. Unstructured pruning makes such
  channels (every incoming weight removed, the bias kept), and so does a BatchNorm after a
  removed channel: its output there is ``β − μ·γ/√(σ²+ε)``, not 0. Any channel whose value
  reaches a group's producers through a padded convolution stays live, so it is never assumed
  uniform.
* **folded**: read, constant, in a prunable group, and every consumer that reads it can take a
  constant into its bias exactly: a dense layer, or a convolution without padding (a padded
  convolution sees zeros at the borders, not the constant, so there the channel stays). Its
  contribution ``Σ W·v`` becomes bias (:mod:`bayescomp.compression.export`) and the channel
  goes. This cascades: a channel fed only by folded channels is constant in turn.
* **kept** = read and not folded, in prunable groups; every channel of a non-prunable group
  (the network input, the classes).

An identity shortcut makes the groups a loop (the trunk feeds the block whose last layer writes
the trunk), so both properties are computed as least fixed points: *read* grows from the classes
backward, *non-constant* from the network input forward, until nothing changes. On a chain this
is one backward and one forward pass.

A zero-padded shortcut (:class:`bayescomp.models.graph.PaddedShortcut`: group S's channel c is
added into group T's channel ``offset + c``) is followed both ways: S's channel c is read where
T's channel ``offset + c`` is, and T's channel ``offset + c`` varies where S's channel c does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from bayescomp.models.graph import ChannelGraph
from bayescomp.pruning import channels_read, input_rows_kept, output_columns_kept


@dataclasses.dataclass(frozen=True)
class GroupChannels:
    """The fate of one group's channels (boolean vectors over its channels).

    Attributes:
        read: Some consumer keeps a weight from it to a read output (the classes: all).
        folded: Input-independent, folded into its consumers' biases and removed.
        kept: Computed by the exported network.
    """

    read: np.ndarray
    folded: np.ndarray
    kept: np.ndarray


def rows_reaching(mask: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Input rows of a kernel mask that keep a weight to one of ``columns`` (any tap)."""
    return input_rows_kept(mask[..., columns])


def read_channels(graph: ChannelGraph, masks: Mapping[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read channels (module docstring), a least fixed point grown from the classes.

    Returns:
        ``(by_group, by_consumer)``: per group name, its read channels; per weight layer, the
        channels of its input group that it reads.
    """
    read = {g.name: np.full(graph.sizes[g.name], not g.consumers) for g in graph.groups}
    read_by: dict[str, np.ndarray] = {}
    changed = True
    while changed:
        changed = False
        for group in graph.groups:
            for consumer in group.consumers:
                rows = rows_reaching(masks[consumer.layer],
                                     read[graph.output_of(consumer.layer).name])
                read_by[consumer.layer] = rows.reshape(consumer.positions, -1).any(axis=0)
                new = read[group.name] | read_by[consumer.layer]
                changed |= bool((new != read[group.name]).any())
                read[group.name] = new
            for shortcut in getattr(group, "shortcuts", ()):
                source = read[shortcut.source]
                new = source | read[group.name][shortcut.offset: shortcut.offset + source.size]
                changed |= bool((new != source).any())
                read[shortcut.source] = new
    return read, read_by


def _varying(graph: ChannelGraph, masks, read, foldable) -> dict[str, np.ndarray]:
    """Non-constant channels (module docstring), a least fixed point grown from the input."""
    varying = {g.name: np.full(graph.sizes[g.name], not g.prunable) for g in graph.groups}

    def grow(group) -> bool:
        new = varying[group.name].copy()
        for producer in group.producers:
            source, consumer = graph.input_of(producer)
            live = varying[source.name] | ~(read[source.name] & foldable[source.name])
            rows = np.tile(live, consumer.positions)
            new |= output_columns_kept(masks[producer][..., rows, :])
        for shortcut in getattr(group, "shortcuts", ()):
            source = varying[shortcut.source]
            new[shortcut.offset: shortcut.offset + source.size] |= source
        changed = bool((new != varying[group.name]).any())
        varying[group.name] = new
        return changed

    graph.until_stable(grow)
    return varying


def surviving_channels(graph: ChannelGraph, masks: Mapping[str, np.ndarray],
                       absorbs_constants: Mapping[str, bool]) -> dict[str, GroupChannels]:
    """Read, folded and kept channels of every group.

    Args:
        graph: The model's channel groups.
        masks: Kernel-shaped keep masks by layer path.
        absorbs_constants: Per weight layer, whether a constant input channel can be folded into
            its bias exactly (dense, or a convolution without padding).

    Returns:
        Group name → :class:`GroupChannels`.
    """
    read, read_by = read_channels(graph, masks)
    foldable = {}  # prunable, and every consumer reading the channel absorbs constants
    for group in graph.groups:
        foldable[group.name] = np.full(graph.sizes[group.name], group.prunable)
        for consumer in group.consumers:
            if not absorbs_constants[consumer.layer]:
                foldable[group.name] &= ~read_by[consumer.layer]
    varying = _varying(graph, masks, read, foldable)
    result = {}
    for group in graph.groups:
        folded = read[group.name] & foldable[group.name] & ~varying[group.name]
        kept = read[group.name] & ~folded if group.prunable else np.ones_like(folded)
        result[group.name] = GroupChannels(read[group.name], folded, kept)
    return result


def norm_channels(graph: ChannelGraph, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Channels of each group whose BatchNorm parameters can change the logits.

    A BatchNorm's channel c reaches the rest of the network only through channel c of its group
    (every operation between a group's producers and its consumers is per channel), and, where
    the group is the source of a zero-padded shortcut, through channel ``offset + c`` of the
    shortcut's target group. So its γ, β, mean and variance matter exactly where some consumer
    keeps a weight reading that channel, or the target's channel matters in turn (a least fixed
    point, as shortcuts chain from stage to stage). Every channel of a group without consumers
    (the classes) or that is not prunable matters.

    This is what the ``.bcz`` file stores of each BatchNorm (:mod:`bayescomp.compression.codec`);
    it is coarser than :func:`surviving_channels`' *kept* (a constant channel that the export
    folds into a bias still needs its BatchNorm's values to be folded).

    Args:
        graph: The model's channel groups (its ``sizes`` and declarations; no live model needed).
        masks: Kernel-shaped keep masks by layer path.

    Returns:
        Group name → boolean vector over its channels.
    """
    needed = {}
    for group in graph.groups:
        if not group.prunable or not group.consumers:
            needed[group.name] = np.ones(graph.sizes[group.name], bool)
        else:
            needed[group.name] = channels_read(graph, group, masks)
    changed = True
    while changed:
        changed = False
        for target in graph.groups:
            for shortcut in getattr(target, "shortcuts", ()):
                source = needed[shortcut.source]
                reached = needed[target.name][shortcut.offset: shortcut.offset + source.size]
                if (reached & ~source).any():
                    needed[shortcut.source] = source | reached
                    changed = True
    return needed
