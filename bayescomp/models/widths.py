"""``model.widths``: the channel counts a model is built with, checked once for every model.

A model's ``widths`` are its prunable channel counts (hidden units, conv channels, residual
streams), so that the architecture a compression method pruned to can be rebuilt physically
smaller, or trained from scratch as a baseline (Liu et al. 2019, "Rethinking the Value of Network
Pruning", ICLR). Every model accepts them in one *full* form: the sizes of its prunable channel
groups in the order its ``channel_groups()`` declares them (:func:`full_widths`); a model may
also take a short form (the ResNets' stage widths).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bayescomp.errors import ConfigError
from bayescomp.models.graph import ChannelGraph


def check_widths(model: str, widths, lengths: Sequence[int], example: str) -> tuple[int, ...]:
    """``widths`` as a tuple of positive ints, of one of the accepted ``lengths``.

    Args:
        model: Registry name, for the message.
        widths: The value given (a list from the config, a tuple from code).
        lengths: Accepted lengths (a model may take a short form and a full one).
        example: A valid value for the message, e.g. ``"[8,16,40]"``.

    Raises:
        ConfigError: one line saying what ``model.widths`` must be.
    """
    if (isinstance(widths, (list, tuple)) and len(widths) in lengths
            and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
        return tuple(widths)
    counts = " or ".join(str(n) for n in lengths)
    raise ConfigError(f"{model} needs model.widths as a list of {counts} positive integers, e.g. "
                      f"model.widths={example}; got {widths!r}")


def full_widths(graph: ChannelGraph, kept: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """The full ``widths`` of the model with ``graph``: its prunable groups' channel counts, or
    ``kept[group]`` where given (the network a channel mask leaves), in declaration order.

    ``Model(..., widths=full_widths(channel_graph(model), kept))`` builds the physically smaller
    network of the same class.
    """
    kept = kept or {}
    return tuple(int(kept.get(g.name, graph.sizes[g.name])) for g in graph.groups if g.prunable)


def widths_from_kernels(model_cls, kernel_shapes: Sequence[Sequence[int]], *, input_shape,
                        num_classes: int) -> tuple[int, ...]:
    """The full ``widths`` of the ``model_cls`` network whose kernels have these shapes.

    Each prunable group is as wide as its first producer's output axis. The groups come from a
    shape-only template at the default widths: which layers write which group depends on the
    class (and depth), not on the widths. For the LeNets this is
    :func:`bayescomp.models.hidden_widths`.

    Args:
        model_cls: A model class of :mod:`bayescomp.models`.
        kernel_shapes: One kernel shape per layer, in ``model_cls.layer_names`` order.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs.
    """
    from flax import nnx  # late: a model module imports this one

    from bayescomp.models.graph import channel_graph
    from bayescomp.nn.factory import LayerFactory

    template = nnx.eval_shape(lambda: model_cls(LayerFactory(), rngs=nnx.Rngs(0),
                                                input_shape=tuple(input_shape),
                                                num_classes=num_classes))
    graph = channel_graph(template)
    outputs = {name: int(shape[-1]) for name, shape in zip(graph.layers, kernel_shapes)}
    return full_widths(graph, {g.name: outputs[g.producers[0]] for g in graph.groups
                               if g.prunable})
