"""CIFAR ResNets (bayescomp/models/resnet.py): shapes, widths, and their declared channel groups.

The coupling test checks the declaration against the forward pass: when every weight that reads
a channel is zeroed (in its group and, through option-A shortcuts, in the groups it is padded
into), nothing that writes the channel may change the logits. A reader the declaration missed
would let the written values through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.models import ResNet8, ResNet20
from bayescomp.models.graph import ChannelGroup, PaddedShortcut, channel_graph
from bayescomp.models.resnet import PreActResNet11
from bayescomp.models.widths import full_widths
from bayescomp.nn import LayerFactory

TINY = {ResNet8: (4, 6, 8), PreActResNet11: (4, 8, 8, 8)}


def _abstract(model_cls, factory=None, **kwargs):
    return nnx.eval_shape(lambda: model_cls(factory or LayerFactory(), rngs=nnx.Rngs(0),
                                            **kwargs))


@pytest.mark.parametrize("model_cls", [ResNet8, PreActResNet11])
@pytest.mark.parametrize("factory", [LayerFactory(),
                                     LayerFactory(posterior="gaussian", prior="log_uniform")],
                         ids=["point", "variational"])
def test_tiny_depths_give_logits(model_cls, factory):
    model = _abstract(model_cls, factory, widths=TINY[model_cls], input_shape=(8, 8, 3))
    graphdef, state = nnx.split(model)

    def logits(state, x, key):
        return nnx.merge(graphdef, state)(x, rngs=nnx.Rngs(noise=key))

    out = jax.eval_shape(logits, state, jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32),
                         jax.random.key(0))
    assert out.shape == (2, 10)


def test_resnet20_layers_and_groups(abstract_model):
    model = abstract_model("resnet20")
    graph = channel_graph(model)
    assert ResNet20.layer_names[:3] == ("stem", "stage1.0.conv1", "stage1.0.conv2")
    assert len(ResNet20.layer_names) == 20 and ResNet20.layer_names[-1] == "fc"
    assert model.stage2[0].conv1.strides == (2, 2) and model.stage2[1].conv1.strides == (1, 1)
    assert model.stage2[0].conv1.padding == ((1, 1), (1, 1))
    stage1 = graph.group("stage1")
    assert stage1.producers == ("stem", "stage1.0.conv2", "stage1.1.conv2", "stage1.2.conv2")
    assert stage1.norms == ("stem_bn", "stage1.0.bn2", "stage1.1.bn2", "stage1.2.bn2")
    assert [c.layer for c in stage1.consumers] == [
        "stage1.0.conv1", "stage1.1.conv1", "stage1.2.conv1", "stage2.0.conv1"]
    assert graph.group("stage2").shortcuts == (PaddedShortcut("stage1"),)
    assert graph.shortcuts_from("stage2") == ((graph.group("stage3"), PaddedShortcut("stage2")),)
    assert graph.input_of("fc")[1].positions == 1
    assert graph.sizes["stage3"] == 64 and graph.sizes["stage3.2.conv1"] == 64
    assert len([g for g in graph.groups if g.prunable]) == 3 + 9


def test_resnet164_layers_and_groups(abstract_model):
    graph = channel_graph(abstract_model("resnet164"))
    assert len(graph.layers) == 1 + 54 * 3 + 3 + 1  # stem, 3 convs a block, 3 projections, fc
    stem = graph.group("stem")
    assert (stem.norms, [c.layer for c in stem.consumers]) == (
        ("stage1.0.bn1",), ["stage1.0.conv1", "stage1.0.shortcut"])
    stage3 = graph.group("stage3")
    assert stage3.producers[-1] == "stage3.0.shortcut" and stage3.norms[-1] == "bn"
    assert graph.sizes["stage2"] == 128 and graph.sizes["stage2.5.conv2"] == 32
    assert not any(g.shortcuts for g in graph.groups)  # projections are weight layers


def test_full_form_widths_rebuild_a_pruned_architecture():
    """Full widths: the prunable groups' sizes in declaration order (widths.full_widths)."""
    graph = channel_graph(_abstract(ResNet8, widths=(4, 2, 6, 3, 8, 5)))
    assert [graph.sizes[f"stage{s}.0.conv1"] for s in (1, 2, 3)] == [2, 3, 5]
    assert [graph.sizes[f"stage{s}"] for s in (1, 2, 3)] == [4, 6, 8]
    assert full_widths(graph) == (4, 2, 6, 3, 8, 5)
    graph = channel_graph(_abstract(PreActResNet11, widths=(4, 8, 1, 2, 8, 3, 4, 8, 5, 6)))
    assert [graph.sizes[f"stage{s}.0.conv{c}"] for s in (1, 2, 3) for c in (1, 2)] == [
        1, 2, 3, 4, 5, 6]
    assert graph.sizes["stem"] == 4
    # The short form spelled out: inner convs as wide as (basic) or a quarter of (bottleneck)
    # their stream.
    assert full_widths(channel_graph(_abstract(ResNet20))) == (16,) * 4 + (32,) * 4 + (64,) * 4
    assert full_widths(channel_graph(_abstract(PreActResNet11))) == (
        16, 64, 16, 16, 128, 32, 32, 256, 64, 64)


@pytest.mark.parametrize("model_cls, widths, message", [
    (ResNet20, (16, 32), "3 or 12 positive integers"),
    (ResNet20, (16, 32, 64, 8), "model.widths"),
    (ResNet20, (16, 0, 64), "model.widths"),
    (ResNet20, (32, 16, 64), "must not narrow"),
    (PreActResNet11, (16, 64, 128), "4 or 10 positive integers"),
])
def test_bad_widths_are_one_line_config_errors(model_cls, widths, message):
    with pytest.raises(ConfigError, match=message) as error:
        model_cls(LayerFactory(), rngs=nnx.Rngs(0), widths=widths)
    assert "\n" not in str(error.value)


def _declaring(stage2):
    """ResNet-8 whose stage2 group is replaced by ``stage2``."""
    model = _abstract(ResNet8, widths=(4, 6, 8))
    groups = [stage2 if g.name == "stage2" else g for g in model.channel_groups()]
    model.channel_groups = lambda: groups  # an instance attribute stands in for the method
    return model


@pytest.mark.parametrize("shortcuts, message", [
    ((PaddedShortcut("stage9"),), "shortcut from 'stage9', which is not another of its groups"),
    ((PaddedShortcut("stage2"),), "shortcut from 'stage2', which is not another"),
    ((PaddedShortcut("stage1", offset=3),), "cannot take the 4 channels of 'stage1' from offset 3"),
    ((PaddedShortcut("stage1"), PaddedShortcut("stage1", 2)), "more than one shortcut"),
])
def test_bad_padded_shortcuts_are_one_line_config_errors(shortcuts, message):
    stage2 = channel_graph(_abstract(ResNet8, widths=(4, 6, 8))).group("stage2")
    model = _declaring(ChannelGroup(stage2.name, stage2.producers, stage2.norms,
                                    stage2.consumers, shortcuts=shortcuts))
    with pytest.raises(ConfigError, match=message) as error:
        channel_graph(model)
    assert "\n" not in str(error.value)


def _random_state(model, seed):
    """``(graphdef, {path: array})`` of ``model`` with random weights, biases, γ, β and
    running statistics (variances in [0.5, 1.5])."""
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, variable in nnx.to_flat_state(state):
        shape = variable.get_value().shape
        arrays[path] = (rng.uniform(0.5, 1.5, shape) if path[-1] == "var"
                        else rng.normal(0.0, 0.5, shape)).astype(np.float32)
    return graphdef, state, arrays


def _path(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def _channels(graph, group, channel, follow_shortcuts):
    """``{group: channel}`` of the channel and, following option-A shortcuts, where it goes."""
    found, todo = {}, [(group, channel)]
    while todo:
        name, c = todo.pop()
        found[name] = c
        if follow_shortcuts:
            todo += [(target.name, s.offset + c) for target, s in graph.shortcuts_from(name)]
    return found


def _cut_and_write(graph, arrays, channels, rng, shift=None, cut=True):
    """Zero every weight reading the channels (unless ``cut`` is False); random values in
    everything writing them (every producer's column and bias, every BatchNorm's γ and β), or,
    given ``shift``, BatchNorms that output ``shift`` there (γ = 0), which no ReLU downstream
    can silence."""
    arrays = {path: array.copy() for path, array in arrays.items()}
    for name, c in channels.items():
        group, width = graph.group(name), graph.sizes[name]
        for consumer in group.consumers if cut else ():
            kernel = arrays[_path(consumer.layer) + ("posterior", "weight")]
            kernel[..., c::width, :] = 0.0  # rows p·C + c, every flatten position p
        for producer in group.producers:
            arrays[_path(producer) + ("posterior", "weight")][..., c] = rng.normal(0, 3, ())
            arrays[_path(producer) + ("bias",)][c] = rng.normal(0, 3)
        for norm in group.norms:
            arrays[_path(norm) + ("scale",)][c] = rng.normal(0, 3) if shift is None else 0.0
            arrays[_path(norm) + ("bias",)][c] = rng.normal(0, 3) if shift is None else shift
    return arrays


@pytest.mark.parametrize("model_cls", [ResNet8, PreActResNet11])
def test_a_channel_nobody_reads_cannot_change_the_logits(model_cls):
    model = _abstract(model_cls, widths=TINY[model_cls], input_shape=(8, 8, 3))
    graph = channel_graph(model)
    graphdef, state, arrays = _random_state(model, seed=0)
    norms = {"use_running_average": True}

    @jax.jit
    def logits(values, x):
        network = nnx.merge(graphdef, nnx.from_flat_state(
            [(p, v.replace(values[p])) for p, v in nnx.to_flat_state(state)]))
        return nnx.view(network, deterministic=True, **norms)(x)

    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 8, 3)), jnp.float32)
    rng = np.random.default_rng(2)

    def change(channels, shifts, cut=True):
        first, second = (np.asarray(logits(_cut_and_write(graph, arrays, channels, rng, shift,
                                                          cut), x)) for shift in shifts)
        return np.abs(first - second).max()

    for group in (g for g in graph.groups if g.prunable):
        channel = graph.sizes[group.name] - 1
        # Written differently, the channel changes the logits ...
        assert change({group.name: channel}, (5.0, 50.0), cut=False) > 1e-3, group.name
        # ... and read by nobody, it cannot.
        closure = _channels(graph, group.name, channel, follow_shortcuts=True)
        assert change(closure, (None, None)) <= 1e-6, group.name
        assert change(closure, (5.0, 50.0)) <= 1e-6, group.name
    if model_cls is ResNet8:
        # Without the declared shortcut, stage1's channel 0 still reaches stage2's channel 0
        # and through it the logits: the link is real and the test sees it.
        assert change(_channels(graph, "stage1", 0, follow_shortcuts=False), (5.0, 50.0)) > 1e-3
