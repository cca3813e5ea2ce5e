"""Two tiny residual networks with BatchNorm, declared with channel groups (tests only).

Both are written against a :class:`bayescomp.nn.LayerFactory` like the LeNets, so they work with
point weights (``LayerFactory()``) and variational ones. Inputs ``8x8x3``; every convolution is
3x3 ``SAME`` except the 1x1 projection; the residual sum is flattened (64 positions) into the
classifier.

* :class:`IdentityResNet`: ``h = relu(bn0(stem(x)))``,
  ``y = relu(h + bn2(conv2(relu(bn1(conv1(h))))))``, ``fc(flatten(y))``. The identity shortcut
  puts stem, conv2, bn0, bn2, conv1's input and fc's 64·C inputs in one group, ``trunk``.
* :class:`ProjectionResNet`: ``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + bn_s(shortcut(x)))``
  with a 1x1 projection; the group ``out`` holds conv2, shortcut, bn2, bn_s and fc's inputs,
  and its only consumer is the dense classifier, so constant channels there can be folded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp.models.graph import ChannelGroup, Consumer, batch_norms, weight_layers
from bayescomp.nn.factory import LayerFactory


class IdentityResNet(nnx.Module):
    """Stem, one residual block with an identity shortcut, flatten, dense classifier.

    Args:
        layers: The method's layer factory.
        rngs: Random streams for initialisation.
        input_shape: ``(h, w, c)``.
        num_classes: Number of outputs.
        widths: Channels of the trunk (stem, block output) and of the block's hidden conv.
    """

    layer_names = ("stem", "conv1", "conv2", "fc")

    def __init__(self, layers: LayerFactory, *, rngs: nnx.Rngs, input_shape=(8, 8, 3),
                 num_classes: int = 5, widths=(6, 4)):
        height, width, channels = input_shape
        trunk, hidden = widths
        self.positions = height * width
        self.stem = layers.conv("stem", channels, trunk, (3, 3), rngs=rngs, padding="SAME")
        self.bn0 = layers.norm("bn0", trunk)
        self.conv1 = layers.conv("conv1", trunk, hidden, (3, 3), rngs=rngs, padding="SAME")
        self.bn1 = layers.norm("bn1", hidden)
        self.conv2 = layers.conv("conv2", hidden, trunk, (3, 3), rngs=rngs, padding="SAME")
        self.bn2 = layers.norm("bn2", trunk)
        self.fc = layers.dense("fc", trunk * self.positions, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = jax.nn.relu(self.bn0(self.stem(x, rngs=rngs)))
        branch = jax.nn.relu(self.bn1(self.conv1(h, rngs=rngs)))
        y = jax.nn.relu(h + self.bn2(self.conv2(branch, rngs=rngs)))
        return self.fc(y.reshape(y.shape[0], -1), rngs=rngs)

    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        return (
            ChannelGroup("image", consumers=("stem",), prunable=False),
            ChannelGroup("trunk", producers=("stem", "conv2"), norms=("bn0", "bn2"),
                         consumers=("conv1", Consumer("fc", positions=self.positions))),
            ChannelGroup("hidden", producers=("conv1",), norms=("bn1",), consumers=("conv2",)),
            ChannelGroup("logits", producers=("fc",), prunable=False),
        )


class ProjectionResNet(nnx.Module):
    """One residual block with a 1x1 projection shortcut, flatten, dense classifier.

    Args:
        layers: The method's layer factory.
        rngs: Random streams for initialisation.
        input_shape: ``(h, w, c)``.
        num_classes: Number of outputs.
        widths: Channels of the block's hidden conv and of its output.
    """

    layer_names = ("conv1", "conv2", "shortcut", "fc")

    def __init__(self, layers: LayerFactory, *, rngs: nnx.Rngs, input_shape=(8, 8, 3),
                 num_classes: int = 5, widths=(4, 6)):
        height, width, channels = input_shape
        hidden, out = widths
        self.positions = height * width
        self.conv1 = layers.conv("conv1", channels, hidden, (3, 3), rngs=rngs, padding="SAME")
        self.bn1 = layers.norm("bn1", hidden)
        self.conv2 = layers.conv("conv2", hidden, out, (3, 3), rngs=rngs, padding="SAME")
        self.bn2 = layers.norm("bn2", out)
        self.shortcut = layers.conv("shortcut", channels, out, (1, 1), rngs=rngs)
        self.bn_s = layers.norm("bn_s", out)
        self.fc = layers.dense("fc", out * self.positions, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        branch = jax.nn.relu(self.bn1(self.conv1(x, rngs=rngs)))
        y = jax.nn.relu(self.bn2(self.conv2(branch, rngs=rngs))
                        + self.bn_s(self.shortcut(x, rngs=rngs)))
        return self.fc(y.reshape(y.shape[0], -1), rngs=rngs)

    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        return (
            ChannelGroup("image", consumers=("conv1", "shortcut"), prunable=False),
            ChannelGroup("hidden", producers=("conv1",), norms=("bn1",), consumers=("conv2",)),
            ChannelGroup("out", producers=("conv2", "shortcut"), norms=("bn2", "bn_s"),
                         consumers=(Consumer("fc", positions=self.positions),)),
            ChannelGroup("logits", producers=("fc",), prunable=False),
        )


def nontrivial(model, seed=0, epsilon=None):
    """``model`` with random biases and BatchNorm γ (either sign), β, running mean and variance,
    so that a test sees every stored number matter; ``epsilon`` (if given) replaces BatchNorm's."""
    rng = np.random.default_rng(seed)
    for _, layer in weight_layers(model):
        layer.bias[...] = jnp.asarray(rng.normal(0, 0.2, layer.bias[...].shape), jnp.float32)
    for norm in batch_norms(model).values():
        n = norm.num_features
        norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n),
                                      jnp.float32)
        norm.bias[...] = jnp.asarray(rng.normal(0, 0.5, n), jnp.float32)
        norm.mean[...] = jnp.asarray(rng.normal(0, 0.5, n), jnp.float32)
        norm.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
        if epsilon is not None:
            norm.epsilon = epsilon
    return model
