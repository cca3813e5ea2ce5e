"""LeNet-300-100 and LeNet-5-Caffe, written once for every method.

Both take a :class:`bayescomp.nn.LayerFactory` and ask it for each layer by name, so the dense
baseline and every variational method share this code.

* LeNet-300-100 (LeCun et al. 1998): 784-300-100-10, ReLU; 266,200 weights.
* LeNet-5-Caffe, as used by Molchanov et al. (2017) and Louizos et al. (2017): conv 20@5x5
  (valid) → ReLU → max-pool 2 → conv 50@5x5 → ReLU → max-pool 2 → fc 800→500 → ReLU → fc 500→10;
  430,500 weights. (The original Caffe prototxt has no ReLU after the convs; the Bayesian
  compression codes all put one there, e.g. ``L0LeNet5`` in ``models.py`` of
  github.com/AMLab-Amsterdam/L0_regularization.)

Both declare their wiring in ``channel_groups()`` (:mod:`bayescomp.models.graph`): a chain, the
image unprunable, the classes unprunable, and for LeNet-5 the flatten of conv2's 4x4 map into fc1
(16 positions per channel).

Both take ``widths``, the hidden layer widths (LeNet-300-100: ``(300, 100)``; LeNet-5: conv1 and
conv2 channels and fc1 units, ``(20, 50, 500)``), so that a smaller architecture, e.g. one a
compression method pruned to, can be trained from scratch as a baseline (Liu et al. 2019,
"Rethinking the Value of Network Pruning"); ``model.widths=[8,16,40]`` on the command line.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from bayescomp.models.graph import ChannelGroup, Consumer
from bayescomp.models.pooling import max_pool_2x2
from bayescomp.models.widths import check_widths
from bayescomp.nn.factory import LayerFactory


def hidden_widths(kernels) -> tuple[int, ...]:
    """The ``widths`` argument that reproduces these per-layer kernels (their output sizes)."""
    return tuple(int(k.shape[-1]) for k in kernels[:-1])


class LeNet300(nnx.Module):
    """LeNet-300-100.

    Args:
        layers: The method's layer factory.
        rngs: Random streams for initialisation.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs.
        widths: Units of fc1 and fc2.
    """

    layer_names = ("fc1", "fc2", "fc3")

    def __init__(self, layers: LayerFactory, *, rngs: nnx.Rngs,
                 input_shape=(28, 28, 1), num_classes: int = 10, widths=(300, 100)):
        fc1_units, fc2_units = check_widths("lenet300", widths, (2,), "[100,30]")
        self.input_shape = tuple(int(d) for d in input_shape)
        in_features = math.prod(int(d) for d in input_shape)  # Python ints: shapes, not data
        self.fc1 = layers.dense("fc1", in_features, fc1_units, rngs=rngs)
        self.fc2 = layers.dense("fc2", fc1_units, fc2_units, rngs=rngs)
        self.fc3 = layers.dense("fc3", fc2_units, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, c)``."""
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(x, rngs=rngs))
        x = jax.nn.relu(self.fc2(x, rngs=rngs))
        return self.fc3(x, rngs=rngs)

    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """The image's channels (fc1 reads its flatten: h·w positions) and each layer's units."""
        height, width, _ = self.input_shape
        return (
            ChannelGroup("image", consumers=(Consumer("fc1", positions=height * width),),
                         prunable=False),
            ChannelGroup("fc1", producers=("fc1",), consumers=("fc2",)),
            ChannelGroup("fc2", producers=("fc2",), consumers=("fc3",)),
            ChannelGroup("logits", producers=("fc3",), prunable=False),
        )


class LeNet5(nnx.Module):
    """LeNet-5-Caffe (20-50-800-500).

    Args:
        layers: The method's layer factory.
        rngs: Random streams for initialisation.
        input_shape: ``(h, w, c)`` of one example (28x28x1 gives the 800-wide fc1).
        num_classes: Number of outputs.
        widths: Channels of conv1 and conv2, units of fc1.
    """

    layer_names = ("conv1", "conv2", "fc1", "fc2")

    def __init__(self, layers: LayerFactory, *, rngs: nnx.Rngs,
                 input_shape=(28, 28, 1), num_classes: int = 10, widths=(20, 50, 500)):
        conv1_channels, conv2_channels, fc1_units = check_widths(
            "lenet5", widths, (3,), "[8,16,40]")
        height, width, channels = input_shape
        self.conv1 = layers.conv("conv1", channels, conv1_channels, (5, 5), rngs=rngs)
        self.conv2 = layers.conv("conv2", conv1_channels, conv2_channels, (5, 5), rngs=rngs)
        # Two valid 5x5 convs and two 2x2 pools: 28 -> 24 -> 12 -> 8 -> 4.
        self.feature_hw = (((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2)
        self.fc1 = layers.dense("fc1", conv2_channels * self.feature_hw[0] * self.feature_hw[1],
                                fc1_units, rngs=rngs)
        self.fc2 = layers.dense("fc2", fc1_units, num_classes, rngs=rngs)
        # The method's per-channel modules of the prunable groups (Dirichlet importance
        # switches); None for every other method, whose network is then exactly the one above.
        self.conv1_switch = layers.channel("conv1", conv1_channels)
        self.conv2_switch = layers.channel("conv2", conv2_channels)
        self.fc1_switch = layers.channel("fc1", fc1_units)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, c)``.

        A channel module scales each channel by a positive factor (``C·s_j``), which commutes
        with ReLU and with max-pooling (``max_i(a·x_i) = a·max_i x_i`` for ``a > 0``), so it is
        applied after the pool, on the 4x smaller map, with the same result as directly after
        the ReLU.
        """
        x = max_pool_2x2(jax.nn.relu(self.conv1(x, rngs=rngs)))
        if self.conv1_switch is not None:
            x = self.conv1_switch(x, rngs=rngs)
        x = max_pool_2x2(jax.nn.relu(self.conv2(x, rngs=rngs)))
        if self.conv2_switch is not None:
            x = self.conv2_switch(x, rngs=rngs)
        x = x.reshape(x.shape[0], -1)  # NHWC flatten: channel is the fastest-varying index
        x = jax.nn.relu(self.fc1(x, rngs=rngs))
        if self.fc1_switch is not None:
            x = self.fc1_switch(x, rngs=rngs)
        return self.fc2(x, rngs=rngs)

    def channel_modules(self) -> dict[str, nnx.Module]:
        """The channel modules (switches) by channel group; empty for methods without them."""
        modules = {"conv1": self.conv1_switch, "conv2": self.conv2_switch,
                   "fc1": self.fc1_switch}
        return {group: module for group, module in modules.items() if module is not None}

    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """conv1's and conv2's channels, fc1's units; fc1 reads conv2's pooled map flattened."""
        return (
            ChannelGroup("image", consumers=("conv1",), prunable=False),
            ChannelGroup("conv1", producers=("conv1",), consumers=("conv2",)),
            ChannelGroup("conv2", producers=("conv2",), consumers=(
                Consumer("fc1", positions=self.feature_hw[0] * self.feature_hw[1]),)),
            ChannelGroup("fc1", producers=("fc1",), consumers=("fc2",)),
            ChannelGroup("logits", producers=("fc2",), prunable=False),
        )
