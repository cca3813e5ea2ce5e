r"""Export of residual networks with BatchNorm: channel groups removed everywhere, same logits.

The networks are ``tests/residual_nets.py``. The reference is *the masked network*: a point-weight
copy of the model with kernels ``E[W]·mask``, the masked biases
(:func:`bayescomp.pruning.masked_bias`) and the same BatchNorms in running-average mode, at full
size.

**Tolerance.** Both networks are the same function; they differ by float32 rounding only. With
``u = 2^-24`` and ``γ_k = k·u / (1 − k·u)``, a dot product of ``n`` terms plus a bias computed
in any order is off by at most ``γ_{n+1}·(Σ|x_i w_i| + |b|)`` (Higham 2002, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and §3.1), a BatchNorm
``(x − μ)·rsqrt(σ²+ε)·γ + β`` by at most ``γ_5·(|x||s| + |μ||s| + |β|)`` with
``s = γ/√(σ²+ε)`` (five roundings, counting rsqrt's as one), an add by ``u·|a + b|``, and a
folded bias by one rounding of its float64 value. ReLU and the flatten are exact and
non-expansive, so to first order each rounding error reaches the logits at most multiplied by
the absolute weights after it, and every term is bounded by the *magnitude network*: the same
network with ``|W|``, ``|b|``, each BatchNorm replaced by ``|x|·|s| + |μ||s| + |β|``, on ``|x|``.
With ``A`` its logits and ``K = Σ_layers (n_l + 2) + 5·#BatchNorms + #adds``,

.. math:: |\text{exported} − \text{masked}| \le 2\,\gamma_K\,A

(each of the two networks is within ``γ_K·A`` of the exact value). For these networks
``K ≈ 525`` and ``γ_K ≈ 3·10⁻⁵``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from residual_nets import IdentityResNet, ProjectionResNet, nontrivial

from bayescomp.compression.export import export_model
from bayescomp.errors import ConfigError
from bayescomp.models.graph import batch_norms, channel_graph, weight_layers
from bayescomp.nn import LayerFactory
from bayescomp.pruning import apply_group_masks, masked_bias, own_masks, propagated_masks

INPUT_SHAPE = (8, 8, 3)
GNJ = LayerFactory(posterior="group_normal", prior="group_nj", threshold=-3.0)


def _nontrivial(model, seed=0):
    return nontrivial(model, seed)


def _point_copy(model, masks, magnitude=False):
    """The masked network as point weights (module docstring); ``magnitude``: its bound network."""
    copy = type(model)(LayerFactory(), rngs=nnx.Rngs(0))
    absolute = np.abs if magnitude else (lambda a: a)
    for (name, layer), (_, target) in zip(weight_layers(model), weight_layers(copy)):
        kernel = np.where(masks[name], np.asarray(layer.posterior.mean()), 0.0)
        target.posterior.weight[...] = jnp.asarray(absolute(kernel), jnp.float32)
        target.bias[...] = jnp.asarray(absolute(masked_bias(layer, masks[name])), jnp.float32)
    copies = batch_norms(copy)
    for path, norm in batch_norms(model).items():
        target = copies[path]
        gamma, beta, mean, var = (np.asarray(v[...], np.float64)
                                  for v in (norm.scale, norm.bias, norm.mean, norm.var))
        if magnitude:  # |x|·|s| + |μ||s| + |β|: mean 0, σ² + ε = 1
            s = np.abs(gamma / np.sqrt(var + norm.epsilon))
            gamma, beta, mean, var = s, np.abs(mean) * s + np.abs(beta), 0 * mean, 1 - norm.epsilon
        for variable, value in zip((target.scale, target.bias, target.mean, target.var),
                                   (gamma, beta, mean, np.broadcast_to(var, gamma.shape))):
            variable[...] = jnp.asarray(value, jnp.float32)
    return nnx.view(copy, deterministic=True, use_running_average=True)


def _tolerance(model, masks, x):
    """``2·γ_K·A`` (module docstring), elementwise."""
    k = sum(int(np.prod(layer.posterior.mean().shape[:-1])) + 2
            for _, layer in weight_layers(model))
    k += 5 * len(batch_norms(model)) + 1
    u = 2.0 ** -24
    magnitude = np.asarray(_point_copy(model, masks, magnitude=True)(jnp.abs(x)))
    return 2 * k * u / (1 - k * u) * magnitude


def _assert_same_logits(model, masks, net, key):
    x = jax.random.normal(key, (16, *INPUT_SHAPE))
    expected = np.asarray(_point_copy(model, masks)(x))
    got = np.asarray(net(x))
    assert np.abs(expected).max() > 0.1  # not trivially zero
    assert np.all(np.abs(got - expected) <= _tolerance(model, masks, x))
    return x, expected


def _fc_rows(channels, width, positions=64):
    return np.asarray([p * width + c for p in range(positions) for c in channels], int)


def test_a_removed_group_leaves_every_producer_norm_and_consumer(key):
    model = _nontrivial(IdentityResNet(LayerFactory(), rngs=nnx.Rngs(0)))
    trunk, hidden = [0, 2, 3, 5], [0, 1, 3]  # trunk loses 1 and 4, hidden loses 2
    masks = apply_group_masks(model, own_masks(model), {"trunk": np.isin(np.arange(6), trunk),
                                                        "hidden": np.isin(np.arange(4), hidden)})
    net = export_model(model, masks, input_shape=INPUT_SHAPE)
    weights = {name: (np.asarray(layer.posterior.mean()), np.asarray(layer.bias[...]))
               for name, layer in weight_layers(model)}
    assert net.kept_units == {"stem": tuple(trunk), "conv1": tuple(hidden),
                              "conv2": tuple(trunk), "fc": tuple(range(5))}
    expected_kernels = {
        "stem": weights["stem"][0][..., trunk],
        "conv1": weights["conv1"][0][..., trunk, :][..., hidden],
        "conv2": weights["conv2"][0][..., hidden, :][..., trunk],
        "fc": weights["fc"][0][_fc_rows(trunk, 6)],  # all 64 positions, p·6 + c in order
    }
    for name, kernel in expected_kernels.items():
        np.testing.assert_array_equal(np.asarray(getattr(net, name).kernel[...]), kernel)
    np.testing.assert_array_equal(np.asarray(net.stem.bias[...]), weights["stem"][1][trunk])
    assert net.fc.input_index is None
    for path, channels in (("bn0", trunk), ("bn2", trunk), ("bn1", hidden)):
        original, exported = getattr(model, path), getattr(net, path)
        for field in ("scale", "bias", "mean", "var"):
            np.testing.assert_array_equal(np.asarray(getattr(exported, field)[...]),
                                          np.asarray(getattr(original, field)[...])[channels])
        assert exported.use_running_average
    _assert_same_logits(model, masks, net, key())


def _random_point_masks(model, seed):
    """Per-weight masks, random channels of every group removed, and per group one constant
    channel (every producer's column emptied, the consumers' rows kept)."""
    rng = np.random.default_rng(seed)
    masks = {name: rng.random(m.shape) < 0.7 for name, m in own_masks(model).items()}
    graph = channel_graph(model)
    keep = {}
    for group in graph.groups:
        if group.prunable:
            constant = rng.integers(graph.sizes[group.name])
            for producer in group.producers:
                masks[producer][..., constant] = False
            keep[group.name] = rng.random(graph.sizes[group.name]) < 0.7
            keep[group.name][constant] = True
    return apply_group_masks(model, masks, keep)


def _random_group_model(model_cls, seed):
    """A BC-GNJ model (z mean 1) with random groups dropped: conv outputs, and fc inputs by
    whole channels (all 64 positions) so that some channels go from every producer."""
    rng = np.random.default_rng(seed)
    model = _nontrivial(model_cls(GNJ, rngs=nnx.Rngs(seed)), seed)
    for name, layer in weight_layers(model):
        shape = layer.posterior.z_log_var[...].shape
        dropped = rng.random(shape) < 0.3
        if name == "fc":
            dropped = np.tile(rng.random(6) < 0.4, 64)
        layer.posterior.z_mean_param[...] = jnp.ones(shape)
        layer.posterior.z_log_var[...] = jnp.asarray(np.where(dropped, 10.0, -10.0),
                                                     jnp.float32)
    return model


@pytest.mark.parametrize("model_cls", [IdentityResNet, ProjectionResNet])
@pytest.mark.parametrize("weights", ["point", "group_normal"])
@pytest.mark.parametrize("channel_multiple", [1, 4])
def test_exported_logits_are_the_masked_networks(model_cls, weights, channel_multiple, key):
    if weights == "point":
        model = _nontrivial(model_cls(LayerFactory(), rngs=nnx.Rngs(1)), 1)
        masks = _random_point_masks(model, 1)
    else:
        model = _random_group_model(model_cls, 2)
        masks = propagated_masks(model)
    net = export_model(model, masks, input_shape=INPUT_SHAPE, channel_multiple=channel_multiple)
    x, expected = _assert_same_logits(model, masks, net, key())
    if weights == "group_normal":  # propagation changed no prediction of the pruned view
        pruned = nnx.view(model, deterministic=True, pruned=True, use_running_average=True)
        assert np.all(np.abs(np.asarray(pruned(x)) - expected)
                      <= _tolerance(model, masks, x))
    full = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(_point_copy(model, masks))))
    assert net.num_params() < full
    graphdef, state = nnx.split(net)  # and it jits
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    np.testing.assert_allclose(forward(state, x), net(x), rtol=1e-5, atol=1e-5)


def test_channel_padding_pads_every_member_of_a_group(key):
    model = _nontrivial(IdentityResNet(LayerFactory(), rngs=nnx.Rngs(0)))
    masks = apply_group_masks(model, own_masks(model), {"trunk": np.arange(6) != 4,
                                                        "hidden": np.arange(4) != 0})
    net = export_model(model, masks, input_shape=INPUT_SHAPE, channel_multiple=4)
    # trunk keeps 5 channels, padded to 8 in both operands of the add; hidden 3, padded to 4.
    assert net.stem.kernel.shape == (3, 3, 3, 8) and net.conv2.kernel.shape == (3, 3, 4, 8)
    assert net.conv1.kernel.shape == (3, 3, 8, 4)
    assert not np.any(np.asarray(net.stem.kernel[...])[..., 5:])
    assert not np.any(np.asarray(net.conv1.kernel[...])[..., 5:, :])
    for path, kept in (("bn0", 5), ("bn2", 5), ("bn1", 3)):
        norm = getattr(net, path)
        assert not np.any(np.asarray(norm.scale[...])[kept:])
        assert not np.any(np.asarray(norm.bias[...])[kept:])
    # fc reads 64 positions of 5 real channels out of the 8-channel flatten: p·8 + c, c < 5.
    index = np.asarray(net.fc.input_index)
    np.testing.assert_array_equal(index, [p * 8 + c for p in range(64) for c in range(5)])
    assert net.kept_units["stem"] == (0, 1, 2, 3, 5)
    _assert_same_logits(model, masks, net, key())


# ---------------------------------------------------------------------------------------------
# A BatchNorm after a removed channel outputs β − μ·γ/√(σ²+ε), not 0
# ---------------------------------------------------------------------------------------------


def _batch_norm(norm, x):
    """float64 BatchNorm in running-average mode, by hand."""
    gamma, beta, mean, var = (np.asarray(v[...], np.float64)
                              for v in (norm.scale, norm.bias, norm.mean, norm.var))
    return (x - mean) / np.sqrt(var + norm.epsilon) * gamma + beta


def test_a_constant_channel_after_batch_norm_is_folded_into_the_classifier(key):
    # Channel 1 of `out` loses every weight of conv2 and of the shortcut; with point weights
    # their biases stay, so fc reads the constant relu(bn2(b2) + bn_s(b_s)) at all 64 positions.
    model = _nontrivial(ProjectionResNet(LayerFactory(), rngs=nnx.Rngs(0)))
    masks = own_masks(model)
    masks["conv2"][..., 1] = False
    masks["shortcut"][..., 1] = False
    net = export_model(model, masks, input_shape=INPUT_SHAPE)
    assert 1 not in net.kept_units["conv2"] and net.kept_units["conv2"] == net.kept_units[
        "shortcut"]
    b2, bs = (np.asarray(model.conv2.bias[...], np.float64),
              np.asarray(model.shortcut.bias[...], np.float64))
    constant = np.maximum(_batch_norm(model.bn2, b2) + _batch_norm(model.bn_s, bs), 0.0)[1]
    fc = np.asarray(model.fc.posterior.weight[...], np.float64)
    folded = np.asarray(model.fc.bias[...], np.float64) + constant * fc[_fc_rows([1], 6)].sum(0)
    np.testing.assert_allclose(np.asarray(net.fc.bias[...]), folded, rtol=1e-6, atol=1e-6)
    x, _ = _assert_same_logits(model, masks, net, key())
    # Dropping the channel without the fold would move the logits far beyond the tolerance.
    assert np.abs(folded - np.asarray(model.fc.bias[...])).max() > 10 * _tolerance(
        model, masks, x).max()


def test_group_pruned_channels_after_batch_norm_are_folded(key):
    # Group scales remove conv2's and the shortcut's channel 1 with its bias: both BatchNorms
    # see 0 and output β − μ·γ/√(σ²+ε); propagation keeps fc's rows (not zero), export folds.
    model = _random_group_model(ProjectionResNet, 3)
    for name in ("conv2", "shortcut", "conv1", "fc"):
        z = np.full(getattr(model, name).posterior.z_log_var[...].shape, -10.0)
        if name in ("conv2", "shortcut"):
            z[1] = 10.0
        getattr(model, name).posterior.z_log_var[...] = jnp.asarray(z, jnp.float32)
    model.bn2.bias[...] = model.bn2.bias[...].at[1].set(2.0)  # so that relu(...) > 0 below
    masks = propagated_masks(model)
    assert masks["fc"][_fc_rows([1], 6)].all()
    net = export_model(model, masks, input_shape=INPUT_SHAPE)
    assert net.kept_units["conv2"] == (0, 2, 3, 4, 5)
    constant = max(_batch_norm(model.bn2, 0.0)[1] + _batch_norm(model.bn_s, 0.0)[1], 0.0)
    assert constant > 0  # the test would be vacuous at relu(...) = 0
    _assert_same_logits(model, masks, net, key())


def test_with_gamma_and_beta_pruned_the_channel_is_zero_and_folds_to_nothing():
    model = _random_group_model(ProjectionResNet, 3)
    for norm in (model.bn2, model.bn_s):
        for variable in (norm.scale, norm.bias):
            variable[...] = variable[...].at[1].set(0.0)
    for name in ("conv2", "shortcut"):
        z = np.full(6, -10.0)
        z[1] = 10.0
        getattr(model, name).posterior.z_log_var[...] = jnp.asarray(z, jnp.float32)
    masks = propagated_masks(model)
    net = export_model(model, masks, input_shape=INPUT_SHAPE)
    assert 1 not in net.kept_units["conv2"]
    kept_rows_bias = np.asarray(model.fc.mean_bias(), np.float32)
    np.testing.assert_array_equal(np.asarray(net.fc.bias[...]), kept_rows_bias)


def test_a_constant_channel_read_by_a_padded_conv_is_kept(key):
    # Trunk channel 3 loses stem's and conv2's weights but conv1 (3x3 SAME) still reads it: a
    # padded conv sees zeros at the borders, not the constant, so it cannot fold it.
    model = _nontrivial(IdentityResNet(LayerFactory(), rngs=nnx.Rngs(0)))
    masks = own_masks(model)
    masks["stem"][..., 3] = False
    masks["conv2"][..., 3] = False
    net = export_model(model, masks, input_shape=INPUT_SHAPE)
    assert 3 in net.kept_units["stem"] and net.stem.kernel.shape[-1] == 6
    _assert_same_logits(model, masks, net, key())


class _MixingNet(ProjectionResNet):
    """Adds a neighbouring channel to each channel: not element-wise per channel."""

    def __call__(self, x, *, rngs=None):
        branch = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(branch)) + self.bn_s(self.shortcut(x)))
        y = y + jnp.roll(y, 1, axis=-1)
        return self.fc(y.reshape(y.shape[0], -1))


def test_a_forward_pass_that_mixes_channels_is_refused():
    model = _nontrivial(_MixingNet(LayerFactory(), rngs=nnx.Rngs(0)))
    masks = own_masks(model)
    masks["conv2"][..., 1] = False
    masks["shortcut"][..., 1] = False
    with pytest.raises(ConfigError, match="still vary at the input of fc"):
        export_model(model, masks, input_shape=INPUT_SHAPE)
