"""Export of the pruned architecture: same logits as the full-size quantized model, smaller kernels.

Networks are made by hand (random kernels, hand-made masks): every kind of removed unit has its
own block of indices, so the kept architecture is known in advance and checked exactly.

Tolerance: the exported model adds the same non-zero products as the full-size one, but without
the zero terms, in a different order (smaller matmuls, gathers) and with constant units folded
into the next bias, so float32 results differ by rounding only: a few ulps of the partial sums.
We allow ``1e-5`` relative to the largest logit magnitude (float32 eps is 1.2e-7; sums of a few
hundred terms of mixed sign lose up to ~1e-6 relative to the terms' scale).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.compression import codec
from bayescomp.compression.export import PrunedConv, PrunedDense, export_from_file, export_pruned
from bayescomp.compression.quantize import point_model, quantize
from bayescomp.models import LeNet5, LeNet300
from bayescomp.nn import LayerFactory
from bayescomp.pruning import propagated_masks

INPUT_SHAPE = (28, 28, 1)


def _kernels(masks, rng):
    """Random kernels (scaled by fan-in so logits are O(1)) that are exactly 0 where removed."""
    kernels = []
    for mask in masks:
        fan_in = int(np.prod(mask.shape[:-1]))
        values = rng.normal(size=mask.shape) / np.sqrt(0.3 * fan_in)
        kernels.append(np.where(mask, values, 0.0).astype(np.float32))
    return kernels


def _assert_same_logits(model_cls, kernels, biases, exported, key, batch=16):
    full = point_model(model_cls, kernels, biases, input_shape=INPUT_SHAPE, num_classes=10)
    x = jax.random.normal(key, (batch, *INPUT_SHAPE))
    expected = np.asarray(nnx.view(full, deterministic=True)(x))
    got = np.asarray(exported(x))
    scale = np.abs(expected).max()
    assert scale > 0.1  # the logits are not trivially zero
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)
    return full


def _lenet300_case():
    """LeNet-300 masks with removed pixels, removed / unread / constant units, one cascade."""
    rng = np.random.default_rng(0)
    fc1 = rng.random((784, 300)) < 0.3
    fc2 = rng.random((300, 100)) < 0.3
    fc3 = rng.random((100, 10)) < 0.8
    fc1[:100] = False  # 100 pixels never read
    fc1[:, 10:40] = False  # units removed in both layers
    fc2[10:40] = False
    fc2[40:50] = False  # units with incoming weights that fc2 never reads
    fc1[:, [5, 6]] = False  # no incoming weights, read by fc2: constant relu(b)
    fc2[:, 7] = False  # fc2 unit 7 reads only the constant fc1 unit 5: constant too (cascade)
    fc2[5, 7] = True
    fc2[:, 80:100] = False  # fc2 units removed in both layers
    fc3[80:100] = False
    masks = [fc1, fc2, fc3]
    kernels = _kernels(masks, rng)
    biases = [rng.normal(size=m.shape[-1]).astype(np.float32) * 0.3 for m in masks]
    biases[0][5], biases[0][6] = 0.7, -0.3  # one constant unit passes the ReLU, one does not
    biases[1][7] = 0.2
    kept = {"fc1": 300 - 30 - 10 - 2, "fc2": 100 - 20 - 1, "fc3": 10}
    return kernels, biases, masks, kept, 784 - 100


def _lenet5_case():
    """LeNet-5 masks with removed / unread / constant conv channels and fc1 inputs / outputs."""
    rng = np.random.default_rng(1)
    conv1 = rng.random((5, 5, 1, 20)) < 0.6
    conv2 = rng.random((5, 5, 20, 50)) < 0.3
    fc1 = rng.random((800, 500)) < 0.3
    fc2 = rng.random((500, 10)) < 0.8
    channel = np.arange(800) % 50
    position = np.arange(800) // 50
    conv1[..., [0, 1]] = False  # channels removed in both layers
    conv2[:, :, [0, 1]] = False
    conv1[..., 2] = False  # no incoming weights, read by conv2: constant relu(b) everywhere
    conv2[:, :, 3] = False  # computed, never read
    conv2[..., :10] = False  # conv2 channels removed in both layers
    fc1[channel < 10] = False
    conv2[..., 10] = False  # constant conv2 channel, read by fc1
    conv2[..., 11] = True  # computed, never read by fc1
    fc1[channel == 11] = False
    conv2[..., 12] = False  # reads only the constant conv1 channel 2: constant too (cascade)
    conv2[2, 2, 2, 12] = True
    fc1[(position == 0) & (channel >= 20) & (channel < 30)] = False  # 10 unread fc1 inputs
    fc1[:, :100] = False  # fc1 units removed in both layers
    fc2[:100] = False
    fc2[100] = False  # fc1 unit that fc2 never reads
    fc1[:, 101] = False  # constant fc1 unit
    masks = [conv1, conv2, fc1, fc2]
    kernels = _kernels(masks, rng)
    biases = [rng.normal(size=m.shape[-1]).astype(np.float32) * 0.3 for m in masks]
    biases[0][[0, 1]] = 0.0  # a removed conv channel takes its bias with it (quantize)
    biases[1][:10] = 0.0
    biases[0][2], biases[1][10], biases[1][12], biases[2][101] = 0.5, 0.4, -0.1, 0.3
    kept = {"conv1": 20 - 4, "conv2": 50 - 13, "fc1": 500 - 102, "fc2": 10}
    fc1_inputs = 16 * kept["conv2"] - 10
    return kernels, biases, masks, kept, fc1_inputs


def test_lenet300_export_matches_and_shrinks(key):
    kernels, biases, masks, kept, pixels = _lenet300_case()
    net = export_pruned(kernels, biases, masks, model_name="lenet300", input_shape=INPUT_SHAPE,
                        num_classes=10)
    _assert_same_logits(LeNet300, kernels, biases, net, key())
    assert {name: len(idx) for name, idx in net.kept_units.items()} == kept
    assert net.kept_units["fc1"][:4] == (0, 1, 2, 3)
    assert 5 not in net.kept_units["fc1"] and 6 not in net.kept_units["fc1"]  # folded
    assert 7 not in net.kept_units["fc2"]
    assert net.fc1.input_index == tuple(range(100, 784))
    assert net.fc2.input_index is None and net.fc3.input_index is None
    shapes = [(pixels, kept["fc1"]), (kept["fc1"], kept["fc2"]), (kept["fc2"], 10)]
    assert [net.fc1.kernel.shape, net.fc2.kernel.shape, net.fc3.kernel.shape] == shapes
    assert net.num_params() == sum(a * b + b for a, b in shapes)


def test_folding_is_needed(key):
    """Dropping the constant units without folding their relu(b) would change the logits."""
    kernels, biases, masks, _, _ = _lenet300_case()
    net = export_pruned(kernels, biases, masks, model_name="lenet300", input_shape=INPUT_SHAPE,
                        num_classes=10)
    folded = np.asarray(net.fc2.bias[...])
    kept = np.asarray(net.kept_units["fc2"])
    direct = biases[1] + 0.7 * kernels[1][5]  # unit 6 has relu(-0.3) = 0
    np.testing.assert_allclose(folded, direct[kept], rtol=1e-6, atol=1e-7)
    assert np.abs(folded - biases[1][kept]).max() > 0.1
    # fc2 unit 7 is constant relu(0.2 + 0.7 * W[5, 7]) and folded into fc3's bias.
    unit7 = max(0.2 + 0.7 * float(kernels[1][5, 7]), 0.0)
    np.testing.assert_allclose(np.asarray(net.fc3.bias[...]),
                               biases[2] + unit7 * kernels[2][7], rtol=1e-6, atol=1e-6)


def test_lenet5_export_matches_and_shrinks(key):
    kernels, biases, masks, kept, fc1_inputs = _lenet5_case()
    net = export_pruned(kernels, biases, masks, model_name="lenet5", input_shape=INPUT_SHAPE,
                        num_classes=10)
    _assert_same_logits(LeNet5, kernels, biases, net, key())
    assert {name: len(idx) for name, idx in net.kept_units.items()} == kept
    assert net.kept_units["conv1"] == tuple(range(4, 20))
    assert net.kept_units["conv2"] == tuple(range(13, 50))
    assert isinstance(net.conv1, PrunedConv) and isinstance(net.fc1, PrunedDense)
    assert net.conv1.kernel.shape == (5, 5, 1, kept["conv1"])
    assert net.conv2.kernel.shape == (5, 5, kept["conv1"], kept["conv2"])
    assert net.fc1.kernel.shape == (fc1_inputs, kept["fc1"])
    assert net.fc2.kernel.shape == (kept["fc1"], 10)
    # The gather drops position 0 of original channels 20..29, i.e. exported channels 7..16.
    dropped = sorted(set(range(16 * kept["conv2"])) - set(net.fc1.input_index))
    assert dropped == list(range(7, 17))
    kernel_entries = (25 * 1 * kept["conv1"] + 25 * kept["conv1"] * kept["conv2"]
                      + fc1_inputs * kept["fc1"] + kept["fc1"] * 10)
    bias_entries = kept["conv1"] + kept["conv2"] + kept["fc1"] + 10
    assert net.num_params() == kernel_entries + bias_entries


@pytest.mark.parametrize("multiple", [8, 12])
def test_channel_padding_keeps_the_logits(key, multiple):
    """Zero channels up to a multiple: same logits, wider conv kernels, a remapped gather."""
    kernels, biases, masks, kept, fc1_inputs = _lenet5_case()  # conv1 16, conv2 37 channels
    net = export_pruned(kernels, biases, masks, model_name="lenet5", input_shape=INPUT_SHAPE,
                        num_classes=10, channel_multiple=multiple)
    _assert_same_logits(LeNet5, kernels, biases, net, key())
    c1 = -(-kept["conv1"] // multiple) * multiple  # 16 (m = 8) or 24 (m = 12)
    c2 = -(-kept["conv2"] // multiple) * multiple  # 40 or 48
    assert net.conv1.kernel.shape == (5, 5, 1, c1)
    assert net.conv2.kernel.shape == (5, 5, c1, c2)
    assert net.fc1.kernel.shape == (fc1_inputs, kept["fc1"])  # the dense layer is not widened
    # The padding is zeros: filters, biases, and the weights reading the padded conv1 channels.
    assert not np.any(np.asarray(net.conv1.kernel[...])[..., kept["conv1"]:])
    assert not np.any(np.asarray(net.conv2.kernel[...])[..., kept["conv1"]:, :])
    assert not np.any(np.asarray(net.conv2.kernel[...])[..., kept["conv2"]:])
    assert not np.any(np.asarray(net.conv2.bias[...])[kept["conv2"]:])
    # The gather reads real channels only: p·c2 + c with c < 37, at the unpadded rows' places.
    index = np.asarray(net.fc1.input_index)
    assert np.all(index % c2 < kept["conv2"])
    unpadded = export_pruned(kernels, biases, masks, model_name="lenet5",
                             input_shape=INPUT_SHAPE, num_classes=10)
    old = np.asarray(unpadded.fc1.input_index)
    np.testing.assert_array_equal(index, old // kept["conv2"] * c2 + old % kept["conv2"])
    assert net.kept_units == unpadded.kept_units  # padding adds no real unit
    with pytest.raises(ValueError, match="channel_multiple"):
        export_pruned(kernels, biases, masks, model_name="lenet5", input_shape=INPUT_SHAPE,
                      num_classes=10, channel_multiple=0)


def test_channel_padding_without_a_gather(key):
    """All fc1 rows read (no gather before padding): padding adds one that skips zero channels."""
    rng = np.random.default_rng(3)
    masks = [np.ones(s, bool) for s in [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]]
    kernels = _kernels(masks, rng)
    biases = [rng.normal(size=m.shape[-1]).astype(np.float32) * 0.1 for m in masks]
    assert export_pruned(kernels, biases, masks, model_name="lenet5", input_shape=INPUT_SHAPE,
                         num_classes=10).fc1.input_index is None
    net = export_pruned(kernels, biases, masks, model_name="lenet5", input_shape=INPUT_SHAPE,
                        num_classes=10, channel_multiple=8)
    _assert_same_logits(LeNet5, kernels, biases, net, key())
    assert net.conv2.kernel.shape == (5, 5, 24, 56)
    assert len(net.fc1.input_index) == 800 and max(net.fc1.input_index) < 16 * 56


def test_nothing_pruned_keeps_the_architecture(key):
    rng = np.random.default_rng(2)
    masks = [np.ones(s, bool) for s in [(784, 300), (300, 100), (100, 10)]]
    kernels = _kernels(masks, rng)
    biases = [np.zeros(m.shape[-1], np.float32) for m in masks]
    net = export_pruned(kernels, biases, masks, model_name="lenet300", input_shape=INPUT_SHAPE,
                        num_classes=10)
    _assert_same_logits(LeNet300, kernels, biases, net, key())
    assert net.fc1.input_index is None
    assert net.num_params() == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_jit_gather_is_static(key):
    """The gather indices live in the graph definition, not in the traced state."""
    kernels, biases, masks, _, _ = _lenet300_case()
    net = export_pruned(kernels, biases, masks, model_name="lenet300", input_shape=INPUT_SHAPE,
                        num_classes=10)
    graphdef, state = nnx.split(net)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = jax.random.normal(key(), (4, *INPUT_SHAPE))
    np.testing.assert_allclose(forward(state, x), net(x), rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    from bayescomp.errors import ConfigError

    kernels, biases, masks, _, _ = _lenet300_case()
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        export_pruned(kernels, biases, masks, model_name="vgg", input_shape=INPUT_SHAPE,
                      num_classes=10)
    with pytest.raises(ValueError, match="layers"):
        export_pruned(kernels[:2], biases[:2], masks[:2], model_name="lenet300",
                      input_shape=INPUT_SHAPE, num_classes=10)
    with pytest.raises(ValueError, match="classes"):
        export_pruned(kernels, biases, masks, model_name="lenet300", input_shape=INPUT_SHAPE,
                      num_classes=7)


def test_export_from_file_matches_decoded_model(tmp_path, key):
    """End to end: Sparse VD LeNet-300 → quantize → .bcz → export, against codec.load's model."""
    model = LeNet300(LayerFactory(posterior="gaussian", prior="log_uniform", threshold=3.0),
                     rngs=nnx.Rngs(0))
    rng = np.random.default_rng(3)
    for layer in (model.fc1, model.fc2, model.fc3):
        shape = layer.posterior.log_sigma2[...].shape
        dropped = rng.random(shape) < 0.9
        layer.posterior.log_sigma2[...] = jnp.asarray(np.where(dropped, 10.0, -20.0), jnp.float32)
    quantized = quantize(model, propagated_masks(model))
    path = tmp_path / "model.bcz"
    codec.save(path, quantized, model_name="lenet300", input_shape=INPUT_SHAPE, num_classes=10)
    full, network = codec.load(path)
    net = export_from_file(path)
    x = jax.random.normal(key(), (8, *INPUT_SHAPE))
    expected = np.asarray(nnx.view(full, deterministic=True)(x))
    np.testing.assert_allclose(np.asarray(net(x)), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    full_size = sum(k.size + b.size for k, b in zip(network.kernels, network.biases))
    assert net.num_params() < full_size


@pytest.mark.parametrize("dead", [0, 2])
def test_a_layer_that_keeps_no_weight_exports_as_constant_logits(dead):
    # Every weight of one layer removed: nothing before it is read (rows_used of no column),
    # and the logits are constants folded through the layers after it. Expected: the masked
    # network computed directly in numpy.
    rng = np.random.default_rng(3)
    masks = [rng.random(s) < 0.4 for s in ((784, 30), (30, 12), (12, 10))]
    masks[dead][:] = False
    kernels = _kernels(masks, rng)
    biases = [rng.normal(size=m.shape[-1]).astype(np.float32) for m in masks]
    net = export_pruned(kernels, biases, masks, model_name="lenet300",
                        input_shape=INPUT_SHAPE, num_classes=10, channel_multiple=1)
    x = rng.normal(size=(4, *INPUT_SHAPE)).astype(np.float32)
    h = x.reshape(4, -1)
    for i, (k, b) in enumerate(zip(kernels, biases)):
        h = h @ k + b
        h = np.maximum(h, 0.0) if i < 2 else h
    got = np.asarray(net(jnp.asarray(x)))
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-5)
    assert np.ptp(got, axis=0).max() < 1e-6  # no input reaches the logits
