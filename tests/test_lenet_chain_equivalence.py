"""The LeNets' masks and exported networks are those of the chain mechanisms the groups replaced.

Before the channel groups (:mod:`bayescomp.models.graph`), pruning paired consecutive entries of
``layer_names``, export read a hard-coded stage list per model, and the conv → dense flatten was
guessed as ``input j = channel j mod C``. Those implementations are kept below, verbatim in
their arithmetic, as references only: on random masks the group-based propagation must give the
same masks, and the group-based export the same kept units, the same float32 kernels, biases and
gathers bit for bit, and therefore the same logits bit for bit.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.compression.export import export_pruned
from bayescomp.models import LeNet5, LeNet300
from bayescomp.nn import LayerFactory
from bayescomp.pruning import own_masks, propagated_masks

# The legacy forward below convolves with lax.conv; bit for bit needs the export's convs too.
pytestmark = pytest.mark.usefixtures("xla_convolutions")

INPUT_SHAPE = (28, 28, 1)
LAYERS = {"lenet300": ("fc1", "fc2", "fc3"), "lenet5": ("conv1", "conv2", "fc1", "fc2")}
SHAPES = {"lenet300": [(784, 300), (300, 100), (100, 10)],
          "lenet5": [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]}


# ---------------------------------------------------------------------------------------------
# The replaced chain mechanisms (reference only)
# ---------------------------------------------------------------------------------------------


def _legacy_propagated_masks(names, masks, zero_output):
    """Old ``pruning.propagated_masks``: consecutive layers paired, flatten as ``j mod C``."""
    masks = dict(masks)
    for _ in range(len(names)):
        changed = False
        for prev, nxt in itertools.pairwise(names):
            prev_mask, next_mask = masks[prev], masks[nxt]
            n_prev_units = prev_mask.shape[-1]
            to_unit = np.arange(next_mask.shape[-2]) % n_prev_units
            input_used = next_mask.reshape(-1, *next_mask.shape[-2:]).any(axis=(0, 2))
            unit_used = np.zeros(n_prev_units, bool)
            np.logical_or.at(unit_used, to_unit, input_used)
            new_prev = prev_mask & unit_used
            new_next = next_mask
            if zero_output[prev]:
                unit_alive = prev_mask.reshape(-1, n_prev_units).any(axis=0)
                shape = [1] * next_mask.ndim
                shape[-2] = next_mask.shape[-2]
                new_next = next_mask & unit_alive[to_unit].reshape(shape)
            if (new_prev != prev_mask).any() or (new_next != next_mask).any():
                changed = True
            masks[prev], masks[nxt] = new_prev, new_next
        if not changed:
            break
    return masks


def _rows_used(mask, columns):
    mask = mask[..., columns]
    return mask.any(axis=tuple(a for a in range(mask.ndim) if a != mask.ndim - 2))


def _legacy_kept(kernels, biases, masks):
    """Old export analysis: read / varying units, constants (relu(b)) folded into next bias."""
    n = len(kernels)

    def input_unit(l):
        return np.arange(kernels[l].shape[-2]) % kernels[l - 1].shape[-1]

    read = [None] * n
    read[-1] = np.ones(kernels[-1].shape[-1], bool)
    for l in range(n - 1, 0, -1):
        unit_read = np.zeros(kernels[l - 1].shape[-1], bool)
        np.logical_or.at(unit_read, input_unit(l), _rows_used(masks[l], read[l]))
        read[l - 1] = unit_read
    kept_rows, kept_out = [None] * n, [None] * n
    for l in range(n):
        if l == 0:
            kept_rows[0] = (_rows_used(masks[0], read[0]) if kernels[0].ndim == 2
                            else np.ones(kernels[0].shape[-2], bool))
        mask = masks[l][..., kept_rows[l], :]
        varying = mask.reshape(-1, mask.shape[-1]).any(axis=0)
        if l == n - 1:
            kept_out[l] = np.ones_like(read[l])
            break
        kept_out[l] = read[l] & varying
        constant = read[l] & ~varying
        to_unit = input_unit(l + 1)
        if constant.any():
            value = np.maximum(biases[l], 0.0)  # ReLU; pooling or flattening a constant keeps it
            rows = constant[to_unit]
            contribution = (kernels[l + 1][..., rows, :]
                            * value[to_unit[rows]][:, None]).reshape(-1, kernels[l + 1].shape[-1])
            biases[l + 1] += contribution.sum(axis=0)
        rows = kept_out[l][to_unit]
        if kernels[l + 1].ndim == 2 and kernels[l].ndim == 4:
            rows &= _rows_used(masks[l + 1], read[l + 1])
        kept_rows[l + 1] = rows
    return kept_rows, kept_out, input_unit


def _legacy_export(kernels, biases, masks, channel_multiple):
    """Old ``export_pruned`` as arrays: ``{layer: (kernel, bias, gather)}`` and kept units."""
    kernels = [np.where(m, np.asarray(k, np.float64), 0.0) for k, m in zip(kernels, masks)]
    biases = [np.asarray(b, np.float64).copy() for b in biases]
    kept_rows, kept_out, input_unit = _legacy_kept(kernels, biases, masks)
    n, layers, kept_units, padded = len(kernels), [], [], {}
    for l in range(n):
        out_index = np.flatnonzero(kept_out[l])
        kept_units.append(tuple(out_index))
        kernel = kernels[l][..., out_index]
        if kernels[l].ndim == 4:
            in_index = np.flatnonzero(kept_out[l - 1]) if l > 0 else np.flatnonzero(kept_rows[0])
            kernel, bias = kernel[..., in_index, :], biases[l][out_index]
            if l - 1 in padded:
                kernel = np.pad(kernel, [(0, 0), (0, 0), (0, padded[l - 1][1] - kernel.shape[-2]),
                                         (0, 0)])
            if l < n - 1:
                extra = -kernel.shape[-1] % channel_multiple
                padded[l] = (kernel.shape[-1], kernel.shape[-1] + extra)
                kernel = np.pad(kernel, [(0, 0), (0, 0), (0, 0), (0, extra)])
                bias = np.pad(bias, (0, extra))
            layers.append((kernel, bias, None))
            continue
        if l > 0 and kernels[l - 1].ndim == 2:
            layers.append((kernel[np.flatnonzero(kept_out[l - 1])], biases[l][out_index], None))
            continue
        flat_rows = (np.arange(kernel.shape[0]) if l == 0
                     else np.flatnonzero(kept_out[l - 1][input_unit(l)]))
        read_rows = kept_rows[l][flat_rows]
        gather = None if read_rows.all() else np.flatnonzero(read_rows)
        if l - 1 in padded and padded[l - 1][1] != padded[l - 1][0]:
            kept, wide = padded[l - 1]
            index = np.arange(read_rows.size) if gather is None else gather
            gather = index // kept * wide + index % kept
        layers.append((kernel[flat_rows[read_rows]], biases[l][out_index], gather))
    return layers, kept_units


def _legacy_forward(model_name, layers, x):
    """The old stage interpreter (LAYOUTS) over the legacy arrays, float32."""
    def dense(x, layer):
        kernel, bias, gather = layer
        if gather is not None:
            x = jnp.take(x, np.asarray(gather, np.int32), axis=1)
        return x @ jnp.asarray(kernel, jnp.float32) + jnp.asarray(bias, jnp.float32)

    def conv(x, layer):
        y = jax.lax.conv_general_dilated(x, jnp.asarray(layer[0], jnp.float32), (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + jnp.asarray(layer[1], jnp.float32)

    def pool(x):
        n, h, w, c = x.shape
        return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    if model_name == "lenet300":
        x = jax.nn.relu(dense(x.reshape(x.shape[0], -1), layers[0]))
        return dense(jax.nn.relu(dense(x, layers[1])), layers[2])
    x = pool(jax.nn.relu(conv(x, layers[0])))
    x = pool(jax.nn.relu(conv(x, layers[1])))
    x = jax.nn.relu(dense(x.reshape(x.shape[0], -1), layers[2]))
    return dense(x, layers[3])


# ---------------------------------------------------------------------------------------------
# Random LeNet masks
# ---------------------------------------------------------------------------------------------


def _random_case(model_name, seed):
    """Masks with removed, unread, constant and cascading units; random kernels and biases."""
    rng = np.random.default_rng(seed)
    masks = []
    for shape in SHAPES[model_name]:
        mask = rng.random(shape) < rng.uniform(0.2, 0.9)
        mask &= (rng.random(shape[-2]) > 0.2)[:, None]           # removed inputs
        mask[..., rng.random(shape[-1]) < 0.2] = False           # removed outputs
        empty = rng.random(shape[-1]) < 0.1                      # constant units ...
        mask[..., empty] = False
        if shape[-2] > 1:                                        # ... some fed by one weight
            mask[(*([0] * (len(shape) - 2)), rng.integers(shape[-2]))] |= empty & (
                rng.random(shape[-1]) < 0.5)
        masks.append(mask)
    kernels = [np.where(m, rng.normal(size=m.shape) / np.sqrt(0.3 * np.prod(m.shape[:-1])), 0.0)
               .astype(np.float32) for m in masks]
    biases = [rng.normal(0.0, 0.3, m.shape[-1]).astype(np.float32) for m in masks]
    return kernels, biases, masks


@pytest.mark.parametrize("model_name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("channel_multiple", [1, 8])
def test_export_is_the_chain_export_bit_for_bit(model_name, seed, channel_multiple):
    kernels, biases, masks = _random_case(model_name, seed)
    expected, kept_units = _legacy_export(kernels, biases, masks, channel_multiple)
    net = export_pruned(kernels, biases, masks, model_name=model_name, input_shape=INPUT_SHAPE,
                        num_classes=10, channel_multiple=channel_multiple)
    assert [net.kept_units[name] for name in LAYERS[model_name]] == kept_units
    for name, (kernel, bias, gather) in zip(LAYERS[model_name], expected):
        layer = getattr(net, name)
        np.testing.assert_array_equal(np.asarray(layer.kernel[...]), kernel.astype(np.float32))
        np.testing.assert_array_equal(np.asarray(layer.bias[...]), bias.astype(np.float32))
        got = getattr(layer, "input_index", None)
        assert got == (None if gather is None else tuple(int(i) for i in gather))
    x = jax.random.normal(jax.random.key(seed), (8, *INPUT_SHAPE))
    np.testing.assert_array_equal(np.asarray(net(x)),
                                  np.asarray(_legacy_forward(model_name, expected, x)))


def _random_group_model(model_cls, seed):
    """A BC-GNJ LeNet with random groups dropped in every layer (threshold −3)."""
    rng = np.random.default_rng(seed)
    model = model_cls(LayerFactory(posterior="group_normal", prior="group_nj", threshold=-3.0),
                      rngs=nnx.Rngs(seed))
    for name in model_cls.layer_names:
        posterior = getattr(model, name).posterior
        n = posterior.z_log_var[...].shape[0]
        posterior.z_mean_param[...] = jnp.ones((n,))
        posterior.z_log_var[...] = jnp.asarray(np.where(rng.random(n) < 0.3, 10.0, -10.0),
                                               jnp.float32)
    return model


def _random_sparse_vd_model(model_cls, seed):
    rng = np.random.default_rng(seed)
    model = model_cls(LayerFactory(posterior="gaussian", prior="log_uniform", threshold=3.0),
                      rngs=nnx.Rngs(seed))
    for name in model_cls.layer_names:
        posterior = getattr(model, name).posterior
        shape = posterior.log_sigma2[...].shape
        dropped = rng.random(shape) < rng.uniform(0.5, 0.99)
        dropped |= (rng.random(shape[-1]) < 0.3)  # whole outputs without weights
        posterior.log_sigma2[...] = jnp.asarray(np.where(dropped, 10.0, -20.0), jnp.float32)
    return model


@pytest.mark.parametrize("model_cls", [LeNet300, LeNet5])
@pytest.mark.parametrize("make", [_random_group_model, _random_sparse_vd_model])
@pytest.mark.parametrize("seed", range(3))
def test_propagated_masks_are_the_chain_masks(model_cls, make, seed):
    model = make(model_cls, seed)
    names = model_cls.layer_names
    zero_output = {name: getattr(model, name).posterior.masks_bias for name in names}
    expected = _legacy_propagated_masks(names, own_masks(model), zero_output)
    got = propagated_masks(model)
    assert list(got) == list(names)
    for name in names:
        np.testing.assert_array_equal(got[name], expected[name])
    assert sum(m.sum() for m in got.values()) < sum(m.sum() for m in own_masks(model).values())
