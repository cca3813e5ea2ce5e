r"""Channel groups: the one declaration of how a model's weight layers are wired.

Pruning removes *channels* (a conv layer's output channels, a dense layer's units). One channel
is one index into several arrays at once: the output axis of every weight layer that writes it,
γ, β and the running statistics of every BatchNorm that normalises it, and the input axis of
every weight layer that reads it. A :class:`ChannelGroup` names those arrays:

* **a chain** (LeNet): layer l's outputs and layer l+1's inputs;
* **a residual add** ``y = F(x) + x``: the add is element-wise per channel, so the operands and
  the sum share one index set. Every layer writing an operand, every BatchNorm on an operand and
  every layer reading ``x`` or ``y`` is in the one group, and removing channel c removes it from
  all of them (He et al. 2016, "Deep Residual Learning for Image Recognition", §3.2; the same
  coupling is why Li et al. 2017, "Pruning Filters for Efficient ConvNets", §4.2, prune a
  residual block's shortcut channels together);
* **a flatten** of an ``H×W×C`` map into a dense layer: channel c feeds ``H·W`` inputs, input
  ``p·C + c`` being channel c at position ``p = h·W + w`` (NHWC, channel fastest). A
  :class:`Consumer` with ``positions=H·W`` declares it;
* **a zero-padded shortcut** (He et al. 2016, §3.3, option A, their CIFAR ResNets' choice in
  §4.2): where a residual stage widens, the shortcut subsamples its input and pads the new
  channels with zeros, adding no parameter. Group S's channel c enters group T's add as T's
  channel ``offset + c``; T's other channels receive zeros. S and T cannot be one group (their
  sizes differ) and need not be pruned together: a removed channel of S enters T as the zero it
  is, and a removed channel of T drops what S sent it. A :class:`PaddedShortcut` in T's
  ``shortcuts`` declares the link, and analyses over the groups must follow it: S's channel c is
  *read* wherever T's channel ``offset + c`` is, and T's channel ``offset + c`` *varies with the
  input* wherever S's channel c does.

The network input is the group without producers and the classifier outputs are the group
without consumers; neither may be pruned (``prunable=False``).

A model declares two things, next to the layers they name:

* ``layer_names`` (class attribute): the dotted paths of its weight layers, in the order of every
  per-layer list (kernel lists, ``.bcz`` layers, per-layer metrics). It is an order, not a
  wiring: nothing pairs consecutive entries.
* ``channel_groups()`` (method, since flatten positions depend on the input shape): its groups.

:func:`channel_graph` checks the declaration against the model's layers (every weight layer
writes exactly one group and reads exactly one, every BatchNorm normalises exactly one, sizes
agree) and is what pruning, export, quantization and threshold selection read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.nn.layer import VariationalLayer
from bayescomp.nn.norm import BatchNorm


@dataclasses.dataclass(frozen=True)
class Consumer:
    """A weight layer reading a group on its input axis (``-2`` of its kernel).

    Attributes:
        layer: Dotted path of the weight layer.
        positions: Input rows per channel: 1 when the layer reads the channels themselves (a
            conv, a dense layer after a dense one), ``H·W`` when it reads the NHWC flatten of an
            ``H×W`` map, whose row ``p·C + c`` is channel c at position p.
    """

    layer: str
    positions: int = 1


@dataclasses.dataclass(frozen=True)
class PaddedShortcut:
    """A parameter-free shortcut adding another group's channels into this one's residual add.

    Channel c of ``source`` is added to channel ``offset + c`` of the group declaring it; the
    group's other channels receive zeros (He et al. 2016, "Deep Residual Learning for Image
    Recognition", CVPR, §3.3 option A, used for CIFAR in §4.2; subsampling the map on the way
    does not change which channel is which). He et al. do not say where the zeros go:
    bayescomp's ResNets append them (``offset=0``); some PyTorch ports pad both sides
    (``offset = C_prev / 2``).

    Attributes:
        source: Name of the group whose channels the shortcut carries.
        offset: Channel of this group that the source's channel 0 is added to.
    """

    source: str
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Weight-layer outputs, BatchNorms and weight-layer inputs that share one channel index.

    Attributes:
        name: What the channels are (``"conv1"``, ``"block1.out"``, ``"image"``, ``"logits"``).
        producers: Weight layers whose outputs (kernel axis ``-1``) are these channels; several
            for the operands of a residual add.
        norms: BatchNorms over these channels.
        consumers: Weight layers reading these channels; a plain path stands for
            ``Consumer(path)``.
        prunable: False for the network input and the classifier outputs, whose channels are
            never removed.
        shortcuts: Zero-padded shortcuts from other (narrower) groups into this group's
            residual add (:class:`PaddedShortcut`).
    """

    name: str
    producers: tuple[str, ...] = ()
    norms: tuple[str, ...] = ()
    consumers: tuple[Consumer, ...] = ()
    prunable: bool = True
    shortcuts: tuple[PaddedShortcut, ...] = ()

    def __post_init__(self):
        # Frozen: normalise through object.__setattr__ so declarations may use lists, a single
        # path, and plain paths for consumers.
        def paths(value):
            return (value,) if isinstance(value, (str, Consumer)) else tuple(value)

        object.__setattr__(self, "producers", paths(self.producers))
        object.__setattr__(self, "norms", paths(self.norms))
        object.__setattr__(self, "consumers", tuple(
            c if isinstance(c, Consumer) else Consumer(c) for c in paths(self.consumers)))
        object.__setattr__(self, "shortcuts", (self.shortcuts,) if isinstance(
            self.shortcuts, PaddedShortcut) else tuple(self.shortcuts))


def weight_layers(model: nnx.Module) -> list[tuple[str, VariationalLayer]]:
    """The model's weight layers (point or variational) with their dotted paths, declared order.

    ``nnx.iter_modules`` cannot give the order: it visits attributes sorted by name (``conv10``
    before ``conv2``). The order is the model's ``layer_names``; a module with a single weight
    layer needs none.

    Raises:
        ConfigError: several weight layers and no ``layer_names``, or ``layer_names`` that do
            not name exactly the weight layers.
    """
    found = {_path(parts): module for parts, module in nnx.iter_modules(model)
             if isinstance(module, VariationalLayer)}
    order = getattr(model, "layer_names", None)
    if order is None:
        if len(found) > 1:
            raise ConfigError(
                f"{type(model).__name__} has {len(found)} weight layers "
                f"({', '.join(sorted(found))}) but no `layer_names`: declare their dotted paths "
                "as the class attribute `layer_names` and their wiring as `channel_groups()` "
                "(bayescomp.models.graph)")
        return list(found.items())
    if sorted(order) != sorted(found):
        raise ConfigError(
            f"{type(model).__name__}.layer_names = {tuple(order)!r} must name exactly its "
            f"weight layers, which are {tuple(sorted(found))!r}")
    return [(name, found[name]) for name in order]


def batch_norms(model: nnx.Module) -> dict[str, BatchNorm]:
    """The model's BatchNorms by dotted path."""
    return {_path(parts): module for parts, module in nnx.iter_modules(model)
            if isinstance(module, BatchNorm)}


@dataclasses.dataclass(frozen=True)
class ChannelGraph:
    """A model's checked channel groups (built by :func:`channel_graph`).

    Attributes:
        layers: Weight-layer paths in the declared order (``layer_names``).
        groups: The groups as declared. Groups may form a loop (an identity shortcut: the
            trunk feeds a block whose last layer writes the trunk again), so nothing here
            orders them; analyses iterate to a fixed point instead.
        sizes: Channels per group name.
    """

    layers: tuple[str, ...]
    groups: tuple[ChannelGroup, ...]
    sizes: Mapping[str, int]

    def group(self, name: str) -> ChannelGroup:
        """The group called ``name``."""
        return next(g for g in self.groups if g.name == name)

    def output_of(self, layer: str) -> ChannelGroup:
        """The group ``layer`` writes."""
        return next(g for g in self.groups if layer in g.producers)

    def input_of(self, layer: str) -> tuple[ChannelGroup, Consumer]:
        """The group ``layer`` reads, and how (its :class:`Consumer` entry)."""
        return next((g, c) for g in self.groups for c in g.consumers if c.layer == layer)

    def shortcuts_from(self, name: str) -> tuple[tuple[ChannelGroup, PaddedShortcut], ...]:
        """The groups that group ``name``'s channels reach through a zero-padded shortcut,
        with the shortcut (whose ``offset`` places them)."""
        return tuple((g, s) for g in self.groups for s in g.shortcuts if s.source == name)

    def until_stable(self, update) -> None:
        """Apply ``update(group) -> changed`` to every prunable group until none changes.

        The analyses over groups (mask propagation, which channels vary with the input) are
        monotone, and an identity shortcut makes the groups a loop that no order sorts, so each
        is iterated to its fixed point instead.
        """
        changed = True
        while changed:
            changed = False
            for group in self.groups:
                if group.prunable:
                    changed |= bool(update(group))


def channel_graph(model: nnx.Module) -> ChannelGraph:
    """Check ``model.channel_groups()`` against the model.

    A module with a single weight layer and no ``channel_groups`` gets the trivial declaration:
    the input and the outputs of that layer, neither prunable.

    Raises:
        ConfigError: a declaration that does not fit the model; the message says what to fix.
    """
    layers = dict(weight_layers(model))
    norms = batch_norms(model)
    declare = getattr(model, "channel_groups", None)
    model_name = type(model).__name__
    if callable(declare):
        groups = tuple(declare())
    elif len(layers) == 1 and not norms:
        (only,) = layers
        groups = (ChannelGroup("input", consumers=(only,), prunable=False),
                  ChannelGroup("output", producers=(only,), prunable=False))
    else:
        raise ConfigError(f"{model_name} declares no channel groups: define "
                          "`channel_groups()` returning bayescomp.models.graph.ChannelGroup's")
    _check_membership(model_name, groups, layers, norms)
    sizes = {group.name: _group_size(model_name, group, layers, norms) for group in groups}
    _check_shortcuts(model_name, groups, sizes)
    return ChannelGraph(tuple(layers), groups, sizes)


def _path(parts) -> str:
    return ".".join(str(p) for p in parts)


def _check_membership(model_name: str, groups, layers, norms) -> None:
    """Every weight layer writes one group and reads one; every BatchNorm is in one group."""
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"{model_name}.channel_groups() repeats a group name ({names}); give "
                          "every group its own name")
    written, read, normed = {}, {}, {}
    for group in groups:
        for role, paths, known, seen in (
                ("producer", group.producers, layers, written),
                ("consumer", [c.layer for c in group.consumers], layers, read),
                ("norm", group.norms, norms, normed)):
            for path in paths:
                if path not in known:
                    kind = "BatchNorm" if role == "norm" else "weight layer"
                    raise ConfigError(f"{model_name} group {group.name!r} names {path!r} as a "
                                      f"{role}, but the model has no {kind} {path!r} (it has "
                                      f"{sorted(known)})")
                if path in seen:
                    raise ConfigError(f"{model_name}: {path!r} is a {role} of both "
                                      f"{seen[path]!r} and {group.name!r}; a layer's outputs, "
                                      "inputs or norm belong to one group: merge the two")
                seen[path] = group.name
        if group.prunable and not (group.producers and group.consumers):
            end = "the network input" if not group.producers else "the network outputs"
            raise ConfigError(f"{model_name} group {group.name!r} is {end} (no "
                              f"{'producers' if not group.producers else 'consumers'}): "
                              "declare it prunable=False")
    for role, seen, known in (("write (be a producer of)", written, layers),
                              ("read (be a consumer of)", read, layers),
                              ("normalise (list among the norms of)", normed, norms)):
        missing = sorted(set(known) - set(seen))
        if missing:
            raise ConfigError(f"{model_name}.channel_groups(): {missing} must {role} exactly "
                              "one group")


def _group_size(model_name: str, group: ChannelGroup, layers, norms) -> int:
    """Channels of ``group``, which every producer, norm and consumer must agree on."""
    claims = [(f"producer {p}", layers[p].out_features) for p in group.producers]
    claims += [(f"norm {n}", norms[n].num_features) for n in group.norms]
    for consumer in group.consumers:
        if not (isinstance(consumer.positions, int) and consumer.positions >= 1):
            raise ConfigError(f"{model_name} group {group.name!r}: consumer {consumer.layer} "
                              f"has positions={consumer.positions!r}; use a positive integer")
        inputs = layers[consumer.layer].in_features
        if inputs % consumer.positions:
            raise ConfigError(f"{model_name} group {group.name!r}: consumer {consumer.layer} "
                              f"has {inputs} inputs, not a multiple of positions="
                              f"{consumer.positions}; declare positions = H·W of the flatten")
        who = f"consumer {consumer.layer} ({inputs} inputs / {consumer.positions} positions)"
        claims.append((who, inputs // consumer.positions))
    if not claims:
        raise ConfigError(f"{model_name} group {group.name!r} has no producers, norms or "
                          "consumers; remove it")
    if len({size for _, size in claims}) != 1:
        listed = ", ".join(f"{who}: {size}" for who, size in claims)
        raise ConfigError(f"{model_name} group {group.name!r} members disagree on its channel "
                          f"count ({listed}); a group's members must share one index set")
    return claims[0][1]


def _check_shortcuts(model_name: str, groups, sizes: Mapping[str, int]) -> None:
    """Every padded shortcut comes from another declared group and fits inside its target."""
    for group in groups:
        sources = [shortcut.source for shortcut in group.shortcuts]
        if len(set(sources)) != len(sources):
            raise ConfigError(f"{model_name} group {group.name!r} declares more than one shortcut "
                              f"from the same group ({sources}); declare each source once")
        for shortcut in group.shortcuts:
            if shortcut.source == group.name or shortcut.source not in sizes:
                raise ConfigError(f"{model_name} group {group.name!r} has a shortcut from "
                                  f"{shortcut.source!r}, which is not another of its groups "
                                  f"({sorted(sizes)}); a same-width identity shortcut is one "
                                  "group, not a shortcut")
            offset, width = shortcut.offset, sizes[shortcut.source]
            if not (isinstance(offset, int) and 0 <= offset
                    and offset + width <= sizes[group.name]):
                raise ConfigError(f"{model_name} group {group.name!r} ({sizes[group.name]} "
                                  f"channels) cannot take the {width} channels of "
                                  f"{shortcut.source!r} from offset {offset!r}; a padded shortcut "
                                  "needs 0 <= offset and offset + source channels <= channels")
