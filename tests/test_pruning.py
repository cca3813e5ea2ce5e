"""Group pruning masks on hand-made networks, including the conv → dense boundary.

Expected counts are worked out by hand in the comments from the LeNet-5 shapes:
conv1 (5,5,1,20), conv2 (5,5,20,50), fc1 (800,500) with input j fed by conv2 channel j mod 50
(NHWC flatten of a 4x4x50 map, declared as 16 positions in ``LeNet5.channel_groups``),
fc2 (500,10).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import objectives
from bayescomp.compression.report import kept_architecture
from bayescomp.models import LeNet5, LeNet300
from bayescomp.models.graph import ChannelGroup
from bayescomp.nn import LayerFactory
from bayescomp.pruning import kept_weight_counts, own_masks, propagated_masks


def test_lenet5_masks_across_the_conv_dense_boundary(group_pruned):
    model = group_pruned(LeNet5, {
        "conv1": [3],                                   # conv1 channel 3 (its kernel and bias)
        "conv2": [7],                                   # conv2 channel 7
        "fc1": [j for j in range(800) if j % 50 == 9],  # all 16 fc1 inputs of channel 9
        "fc2": [5],                                     # fc2 input 5 = fc1 output unit 5
    })

    masks = propagated_masks(model)
    conv1, conv2, fc1, fc2 = (masks[k] for k in ("conv1", "conv2", "fc1", "fc2"))
    # conv1: channel 3 removed by its own z: 19 of 20 channels x 25 weights.
    assert conv1.sum() == 19 * 25
    # conv2: own z removes output channel 7; forward rule removes input channel 3 (conv1's zero
    # output); backward rule removes output channel 9 (fc1 no longer reads it).
    # Kept: 48 output channels x 19 input channels x 25.
    assert conv2.sum() == 48 * 19 * 25
    assert not conv2[..., 3, :].any() and not conv2[..., 7].any() and not conv2[..., 9].any()
    # fc1: own z removes the 16 inputs of channel 9; forward rule the 16 inputs of channel 7;
    # backward rule removes output unit 5 (fc2 no longer reads it): (800 - 32) x 499.
    assert fc1.sum() == (800 - 32) * 499
    assert not fc1[:, 5].any() and not fc1[7::50].any() and not fc1[9::50].any()
    # fc2: input 5 removed by its own z; the 10 outputs are never removed: 499 x 10.
    assert fc2.sum() == 499 * 10
    # Architecture as the paper writes it: conv1 out, conv2 out, fc1 in, fc2 in.
    assert kept_architecture(list(masks.values())) == [19, 48, 768, 499]
    total, kept, _, kept_per_layer = kept_weight_counts(masks)
    assert total == 430_500 and kept == sum(kept_per_layer) == 475 + 22_800 + 383_232 + 4_990


def test_lenet300_removed_input_removes_previous_row(group_pruned):
    model = group_pruned(LeNet300, {
        "fc1": range(100),             # 100 pixels
        "fc2": [0, 1, 2],              # fc1 outputs 0-2 unused
        "fc3": range(50),              # fc2 outputs 0-49 unused
    })
    masks = propagated_masks(model)
    assert masks["fc1"].sum() == 684 * 297
    assert masks["fc2"].sum() == 297 * 50
    assert masks["fc3"].sum() == 50 * 10
    assert kept_architecture(list(masks.values())) == [684, 297, 50]


def test_unstructured_masks_only_propagate_backward():
    # Sparse VD: a unit with no incoming weights still outputs relu(bias), so nothing propagates
    # forward; a unit with no outgoing weights loses its incoming weights.
    model = LeNet300(LayerFactory(posterior="gaussian", prior="log_uniform", threshold=3.0),
                     rngs=nnx.Rngs(0))
    for layer in (model.fc1, model.fc2, model.fc3):  # keep everything (log α ≈ −30 − log θ²) ...
        layer.posterior.log_sigma2[...] = jnp.full_like(layer.posterior.log_sigma2[...], -30.0)
    log_sigma2 = np.full((300, 100), -30.0)
    log_sigma2[4, :] = 10.0            # ... but fc2 row 4: fc1 unit 4 is unused (log α > 3)
    model.fc2.posterior.log_sigma2[...] = jnp.asarray(log_sigma2)
    log_sigma2 = np.full((784, 300), -30.0)
    log_sigma2[:, 7] = 10.0            # fc1 unit 7 has no incoming weights
    model.fc1.posterior.log_sigma2[...] = jnp.asarray(log_sigma2)
    own = own_masks(model)
    masks = propagated_masks(model)
    assert not masks["fc1"][:, 4].any() and own["fc1"][:, 4].all()  # backward
    assert masks["fc2"][7, :].all()                                  # not forward


@pytest.mark.parametrize("model_cls", [LeNet300, LeNet5])
def test_propagation_does_not_change_predictions(model_cls, group_pruned):
    # Groups removed in every layer, and non-zero biases: a unit whose inputs are all removed
    # still outputs relu(bias) unless its z scales the bias too, so propagating such a removal
    # forward would move the outputs; with zero biases that mistake could not be seen.
    removed = ({"conv1": [0, 1], "conv2": [3, 7, 11], "fc1": [5, 60, 700], "fc2": [2, 9, 400]}
               if model_cls is LeNet5 else
               {"fc1": [0, 1, 400], "fc2": [3, 7, 250], "fc3": [4, 50]})
    model = group_pruned(model_cls, removed)
    rng = np.random.default_rng(1)
    for _, layer in objectives.variational_layers(model):
        layer.bias[...] = jnp.asarray(rng.normal(0.0, 0.1, layer.bias[...].shape), jnp.float32)
    x = jnp.asarray(rng.normal(size=(8, 28, 28, 1)), jnp.float32)
    pruned = nnx.view(model, deterministic=True, pruned=True)
    before = pruned(x)
    masks = propagated_masks(model)
    own = own_masks(model)
    assert sum(m.sum() for m in masks.values()) < sum(m.sum() for m in own.values())
    # Zero the propagated-away weights in the means and check the outputs do not move.
    for name, layer in nnx.iter_modules(model):
        key = ".".join(map(str, name))
        if key in masks:
            layer.posterior.w_mean[...] = layer.posterior.w_mean[...] * masks[key]
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(before), rtol=1e-5, atol=1e-5)


def _unsorted_chain(with_order: bool, with_groups: bool = True):
    """A GNJ chain whose forward order (layer2 → layer10 → b → a) is not its names' sort order."""
    factory = LayerFactory(posterior="group_normal", prior="group_nj", threshold=-3.0)

    class Chain(nnx.Module):
        if with_order:
            layer_names = ("layer2", "layer10", "b", "a")

        def __init__(self, rngs):
            self.layer2 = factory.dense("layer2", 12, 6, rngs=rngs)
            self.layer10 = factory.dense("layer10", 6, 5, rngs=rngs)
            self.b = factory.dense("b", 5, 4, rngs=rngs)
            self.a = factory.dense("a", 4, 3, rngs=rngs)

        def __call__(self, x):
            return self.a(self.b(self.layer10(self.layer2(x))))

        if with_groups:
            def channel_groups(self):
                return (ChannelGroup("x", consumers=("layer2",), prunable=False),
                        ChannelGroup("h2", producers=("layer2",), consumers=("layer10",)),
                        ChannelGroup("h10", producers=("layer10",), consumers=("b",)),
                        ChannelGroup("hb", producers=("b",), consumers=("a",)),
                        ChannelGroup("y", producers=("a",), prunable=False))

    return Chain(nnx.Rngs(0))


def test_masks_follow_the_declared_groups_not_attribute_names():
    # nnx.iter_modules sorts attributes by name (a, b, layer10, layer2); pairing layers in that
    # order would propagate masks between unconnected layers and prune the last layer's outputs.
    model = _unsorted_chain(with_order=True)
    for layer in (model.layer2, model.layer10, model.b, model.a):
        layer.posterior.z_log_var[...] = jnp.full_like(layer.posterior.z_log_var[...], -9.0)
    z_log_var = np.full(5, -9.0)
    z_log_var[[0, 3]] = 5.0        # b drops inputs 0 and 3, i.e. layer10's output units 0 and 3
    model.b.posterior.z_log_var[...] = jnp.asarray(z_log_var)
    masks = propagated_masks(model)
    assert list(masks) == ["layer2", "layer10", "b", "a"]
    assert masks["layer10"].any(axis=0).tolist() == [False, True, True, False, True]
    assert masks["a"].any(axis=0).all()            # the last layer's outputs are never removed
    assert [s[0] for s in (m.shape for m in masks.values())] == [12, 6, 5, 4]


def test_several_layers_without_a_declaration_is_a_clear_error():
    from bayescomp.errors import ConfigError

    with pytest.raises(ConfigError, match="layer_names"):
        propagated_masks(_unsorted_chain(with_order=False))
    with pytest.raises(ConfigError, match="channel_groups"):
        propagated_masks(_unsorted_chain(with_order=True, with_groups=False))
