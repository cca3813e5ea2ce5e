"""Channel-group declarations (bayescomp/models/graph.py) and group pruning on residual networks.

The residual networks are in ``tests/residual_nets.py``: IdentityResNet's group ``trunk`` holds
stem's and conv2's outputs (6 channels), bn0 and bn2, conv1's inputs and fc's 8·8·6 = 384
inputs, fc input ``p·6 + c`` being channel c at position p.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from residual_nets import IdentityResNet, ProjectionResNet

from bayescomp import objectives
from bayescomp.errors import ConfigError
from bayescomp.models import LeNet5, LeNet300
from bayescomp.models.graph import ChannelGroup, Consumer, channel_graph, weight_layers
from bayescomp.nn import LayerFactory
from bayescomp.pruning import apply_group_masks, own_masks, propagated_masks


def test_lenet_declarations():
    graph = channel_graph(LeNet5(LayerFactory(), rngs=nnx.Rngs(0)))
    assert graph.layers == ("conv1", "conv2", "fc1", "fc2")
    assert [g.name for g in graph.groups] == ["image", "conv1", "conv2", "fc1", "logits"]
    assert dict(graph.sizes) == {"image": 1, "conv1": 20, "conv2": 50, "fc1": 500, "logits": 10}
    assert graph.input_of("fc1") == (graph.group("conv2"), Consumer("fc1", positions=16))
    assert graph.output_of("fc2").prunable is False
    graph = channel_graph(LeNet300(LayerFactory(), rngs=nnx.Rngs(0), input_shape=(32, 32, 3)))
    assert graph.input_of("fc1")[1].positions == 32 * 32 and graph.sizes["image"] == 3


def test_residual_declarations():
    graph = channel_graph(IdentityResNet(LayerFactory(), rngs=nnx.Rngs(0)))
    # trunk is written by stem and by conv2, which reads hidden, which reads trunk: with an
    # identity shortcut the groups form a loop, which is legal (the values do not).
    assert [g.name for g in graph.groups] == ["image", "trunk", "hidden", "logits"]
    assert graph.sizes["trunk"] == 6 and graph.sizes["hidden"] == 4
    assert graph.output_of("conv2").name == graph.output_of("stem").name == "trunk"
    graph = channel_graph(ProjectionResNet(LayerFactory(), rngs=nnx.Rngs(0)))
    assert [g.name for g in graph.groups] == ["image", "hidden", "out", "logits"]


def test_variational_layers_is_the_declared_order():
    model = ProjectionResNet(LayerFactory(), rngs=nnx.Rngs(0))
    assert objectives.variational_layers is weight_layers
    assert [name for name, _ in weight_layers(model)] == ["conv1", "conv2", "shortcut", "fc"]


def _declaring(groups):
    """ProjectionResNet with its groups replaced by ``groups``."""
    model = ProjectionResNet(LayerFactory(), rngs=nnx.Rngs(0))
    model.channel_groups = lambda: groups  # an instance attribute stands in for the method
    return model


IMAGE = ChannelGroup("image", consumers=("conv1", "shortcut"), prunable=False)
HIDDEN = ChannelGroup("hidden", producers="conv1", norms="bn1", consumers="conv2")
OUT = ChannelGroup("out", producers=("conv2", "shortcut"), norms=("bn2", "bn_s"),
                   consumers=(Consumer("fc", positions=64),))
LOGITS = ChannelGroup("logits", producers=("fc",), prunable=False)


@pytest.mark.parametrize("groups, message", [
    ((IMAGE, HIDDEN, OUT), r"\['fc'\] must write"),
    ((IMAGE, HIDDEN, OUT, LOGITS, ChannelGroup("x", producers=("fc",), prunable=False)),
     "'fc' is a producer of both"),
    ((IMAGE, ChannelGroup("hidden", producers="conv1", consumers="conv2"), OUT, LOGITS),
     r"\['bn1'\] must normalise"),
    ((IMAGE, HIDDEN, OUT, LOGITS, ChannelGroup("x", producers=("conv9",), prunable=False)),
     "no weight layer 'conv9'"),
    ((IMAGE, ChannelGroup("hidden", producers="conv1", norms="bn9", consumers="conv2"), OUT,
      LOGITS), "no BatchNorm 'bn9'"),
    ((IMAGE, HIDDEN, ChannelGroup("out", producers=("conv2", "shortcut"), norms=("bn2", "bn_s"),
                                  consumers=("fc",)), LOGITS), "disagree on its channel count"),
    ((IMAGE, HIDDEN, ChannelGroup("out", producers=("conv2", "shortcut"), norms=("bn2", "bn_s"),
                                  consumers=(Consumer("fc", positions=7),)), LOGITS),
     "not a multiple of positions=7"),
    ((ChannelGroup("image", consumers=("conv1", "shortcut")), HIDDEN, OUT, LOGITS),
     "network input .* prunable=False"),
    ((IMAGE, HIDDEN, OUT, ChannelGroup("logits", producers=("fc",))),
     "network outputs .* prunable=False"),
    ((IMAGE, HIDDEN, OUT, LOGITS, ChannelGroup("hidden")), "repeats a group name"),
    ((IMAGE, ChannelGroup("hidden", producers="conv1", norms="bn1", consumers=("conv2", "conv1")),
      OUT, LOGITS), "'conv1' is a consumer of both"),
])
def test_bad_declarations_are_one_line_config_errors(groups, message):
    with pytest.raises(ConfigError, match=message) as info:
        channel_graph(_declaring(groups))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Group masks and propagation through a residual add
# ---------------------------------------------------------------------------------------------


def _fc_rows(channels, width=6, positions=64):
    """fc input rows of ``channels`` of a ``width``-channel map flattened over ``positions``."""
    return np.asarray([p * width + c for p in range(positions) for c in channels])


def test_a_group_mask_removes_the_channel_from_every_producer_and_consumer():
    model = IdentityResNet(LayerFactory(), rngs=nnx.Rngs(0))
    masks = apply_group_masks(model, own_masks(model), {"trunk": np.isin(np.arange(6), [1, 4],
                                                                         invert=True)})
    gone = [1, 4]
    assert not masks["stem"][..., gone].any() and masks["stem"][..., [0, 2, 3, 5]].all()
    assert not masks["conv2"][..., gone].any() and masks["conv2"][..., [0, 2, 3, 5]].all()
    assert not masks["conv1"][..., gone, :].any() and masks["conv1"][..., [0, 2, 3, 5], :].all()
    # fc: every one of the 64 positions of channels 1 and 4, nothing else.
    assert not masks["fc"][_fc_rows(gone)].any()
    assert masks["fc"].sum() == (384 - 128) * 5
    with pytest.raises(ConfigError, match="not prunable"):
        apply_group_masks(model, masks, {"logits": np.ones(5, bool)})
    with pytest.raises(ConfigError, match="has 4 channels"):
        apply_group_masks(model, masks, {"hidden": np.ones(6, bool)})


def _sparse_vd_identity_net(unread_by_conv1, unread_by_fc):
    """Per-weight Gaussian IdentityResNet keeping every weight except the rows given."""
    model = IdentityResNet(LayerFactory(posterior="gaussian", prior="log_uniform", threshold=3.0),
                           rngs=nnx.Rngs(0))
    for _, layer in weight_layers(model):
        posterior = layer.posterior
        posterior.log_sigma2[...] = jnp.full_like(posterior.log_sigma2[...], -30.0)
    log_sigma2 = np.full((3, 3, 6, 4), -30.0)
    log_sigma2[..., unread_by_conv1, :] = 10.0
    model.conv1.posterior.log_sigma2[...] = jnp.asarray(log_sigma2, jnp.float32)
    log_sigma2 = np.full((384, 5), -30.0)
    log_sigma2[_fc_rows(unread_by_fc)] = 10.0
    model.fc.posterior.log_sigma2[...] = jnp.asarray(log_sigma2, jnp.float32)
    return model


def test_a_residual_channel_goes_only_when_no_consumer_reads_it():
    # Channel 2: read by neither conv1 nor fc, so stem and conv2 (both operands of the add) lose
    # it. Channel 3: conv1 no longer reads it but fc does, so it stays everywhere.
    model = _sparse_vd_identity_net(unread_by_conv1=[2, 3], unread_by_fc=[2])
    masks = propagated_masks(model)
    assert not masks["stem"][..., 2].any() and not masks["conv2"][..., 2].any()
    assert masks["stem"][..., 3].all() and masks["conv2"][..., 3].all()
    assert masks["fc"][_fc_rows([3])].all()
    own = own_masks(model)
    # Removed by propagation: stem's column 2 (3·3·3 weights) and conv2's (3·3·4).
    assert sum(m.sum() for m in masks.values()) == sum(m.sum() for m in own.values()) - 27 - 36


def test_a_batch_norm_stops_the_zero_rule():
    """A removed conv channel (kernel and bias) is zero, but not after its BatchNorm.

    In LeNet-5 conv2 loses its inputs from a removed conv1 channel (forward rule). In the
    projection network a removed conv2 + shortcut channel still outputs
    relu(β2 − μ2·γ2/σ2 + β_s − μ_s·γ_s/σ_s) through bn2 and bn_s, so fc keeps reading it.
    """
    factory = LayerFactory(posterior="group_normal", prior="group_nj", threshold=-3.0)
    model = ProjectionResNet(factory, rngs=nnx.Rngs(0))
    for name, layer in weight_layers(model):
        z = np.full(layer.posterior.z_log_var[...].shape, -10.0)
        if name in ("conv2", "shortcut"):
            z[1] = 10.0  # output channel 1 of both operands of the add
        layer.posterior.z_mean_param[...] = jnp.ones_like(layer.posterior.z_mean_param[...])
        layer.posterior.z_log_var[...] = jnp.asarray(z, jnp.float32)
    masks = propagated_masks(model)
    assert not masks["conv2"][..., 1].any() and not masks["shortcut"][..., 1].any()
    assert masks["fc"][_fc_rows([1])].all()
