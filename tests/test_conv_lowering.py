"""The patch-matmul lowering of :class:`bayescomp.nn.conv.VariationalConv` (tiny output maps on
CPU) equals ``lax.conv_general_dilated``, forward and gradients, to float32 rounding; and only
those convs use it (LeNet-5's and the ResNets' never do)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from bayescomp.nn import conv

# Relative to the largest value: a sum over at most 9·64 products in another order.
RTOL = 1e-5


@pytest.mark.parametrize("shape, kernel_hw, out, strides, padding", [
    ((4, 2, 2, 64), (3, 3), 32, (1, 1), "SAME"),              # VGG-16's last block on CIFAR
    ((3, 5, 5, 8), (3, 3), 16, (2, 2), ((1, 1), (1, 1))),     # strided, explicit padding
    ((2, 7, 6, 3), (5, 5), 4, (1, 1), "VALID"),               # LeNet-like, odd sizes
    ((2, 5, 5, 6), (3, 3), 5, (2, 2), "SAME"),                # SAME with an odd pixel
])
def test_patch_matmul_equals_the_convolution(shape, kernel_hw, out, strides, padding):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], shape)
    kernel = jax.random.normal(keys[1], (*kernel_hw, shape[-1], out))

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def both(x, kernel):
        y_ref = reference(x, kernel)
        weights = jax.random.normal(keys[2], y_ref.shape)
        grads = [jax.grad(lambda x, k, f=f: jnp.sum(weights * f(x, k)), argnums=(0, 1))(
            x, kernel) for f in (reference, lambda x, k: conv.conv_as_matmul(
                x, k, strides, padding))]
        return y_ref, conv.conv_as_matmul(x, kernel, strides, padding), grads

    y_ref, y, (grads_ref, grads) = jax.jit(both)(x, kernel)
    assert y.shape == y_ref.shape
    for got, want in ((y, y_ref), *zip(grads, grads_ref)):
        assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < RTOL


def test_only_tiny_output_maps_use_the_patch_matmul():
    if jax.default_backend() != "cpu":
        pytest.skip("the patch matmul is a CPU lowering")
    pad_1 = ((1, 1), (1, 1))
    assert conv._patch_matmul_is_faster((128, 2, 2, 512), (3, 3, 512, 512), (1, 1), "SAME")
    # LeNet-5-Caffe: 5x5 VALID convs on 28x28 and 12x12 maps.
    assert not conv._patch_matmul_is_faster((100, 28, 28, 1), (5, 5, 1, 20), (1, 1), "VALID")
    assert not conv._patch_matmul_is_faster((100, 12, 12, 20), (5, 5, 20, 50), (1, 1), "VALID")
    # The CIFAR ResNets' smallest maps (8x8, also at the stride-2 entry) and VGG's 4x4 block.
    assert not conv._patch_matmul_is_faster((128, 8, 8, 64), (3, 3, 64, 64), (1, 1), pad_1)
    assert not conv._patch_matmul_is_faster((128, 16, 16, 32), (3, 3, 32, 64), (2, 2), pad_1)
    assert not conv._patch_matmul_is_faster((128, 4, 4, 512), (3, 3, 512, 512), (1, 1), "SAME")
    # A 1x1 kernel is a plain matmul either way.
    assert not conv._patch_matmul_is_faster((8, 2, 2, 16), (1, 1, 16, 16), (1, 1), "VALID")


# The custom-VJP conv computes the same convolutions on operands that went through an exact
# identity matmul, so forward and both gradients equal lax.conv's up to the order XLA sums in.
@pytest.mark.parametrize("shape, kernel_hw, out, strides, padding", [
    ((4, 8, 8, 16), (3, 3), 16, (1, 1), ((1, 1), (1, 1))),    # a ResNet basic block conv
    ((3, 8, 8, 16), (3, 3), 32, (2, 2), ((1, 1), (1, 1))),    # a stage's strided entry
    ((2, 6, 6, 8), (1, 1), 12, (1, 1), "VALID"),              # a bottleneck 1x1
    ((2, 7, 7, 5), (3, 3), 4, (1, 1), "SAME"),                # VGG's SAME padding, odd map
])
def test_materialized_gradient_conv_equals_the_convolution(shape, kernel_hw, out, strides,
                                                           padding):
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], shape)
    kernel = jax.random.normal(keys[1], (*kernel_hw, shape[-1], out))

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def custom(x, kernel):
        # What a ReLU'd BatchNorm output looks like to the conv: an elementwise producer.
        return conv.conv_with_materialized_gradient_operands(x, kernel, strides, padding)

    def both(x, kernel):
        y_ref = reference(jax.nn.relu(x), kernel)
        weights = jax.random.normal(keys[2], y_ref.shape)
        grads = [jax.grad(lambda x, k, f=f: jnp.sum(weights * f(jax.nn.relu(x), k)),
                          argnums=(0, 1))(x, kernel) for f in (reference, custom)]
        return y_ref, custom(jax.nn.relu(x), kernel), grads

    y_ref, y, (grads_ref, grads) = jax.jit(both)(x, kernel)
    for got, want in ((y, y_ref), *zip(grads, grads_ref)):
        assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < RTOL


def test_materialized_is_the_identity_bit_for_bit():
    a = jax.random.normal(jax.random.key(2), (3, 4, 5, 7)) * 1e3
    a = a.at[0, 0, 0, 0].set(1e-38)  # subnormal-adjacent values survive too
    assert bool(jnp.all(jax.jit(conv.materialized)(a) == a))


def test_normalized_inputs_are_declared_by_the_batch_norm_models():
    """The CPU gradient form is the models' choice: convs that read a BatchNorm output
    (ResNet and VGG blocks) opt in; data-reading stems and LeNet-5's convs do not."""
    from flax import nnx

    from bayescomp import models
    from bayescomp.nn import LayerFactory
    from bayescomp.nn.conv import VariationalConv

    def flags(name, shape=(32, 32, 3), **kwargs):
        model = nnx.eval_shape(lambda: models.get(name)(  # abstract: no weights computed
            LayerFactory(), input_shape=shape, num_classes=10, rngs=nnx.Rngs(params=0),
            **kwargs))
        return {"/".join(str(p) for p in path): module.input_is_normalized
                for path, module in nnx.iter_graph(model) if isinstance(module, VariationalConv)}

    lenet = flags("lenet5", shape=(28, 28, 1))
    assert lenet and not any(lenet.values())
    resnet = flags("resnet8")
    assert resnet["stem"] is False
    assert all(value for name, value in resnet.items() if name != "stem")
