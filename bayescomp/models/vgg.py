r"""The CIFAR VGGs of the channel-pruning papers, written once for every method.

Every network is a stack of 3x3 convolutions (stride 1, ``SAME``), each followed by BatchNorm
(Ioffe & Szegedy, ICML 2015) and ReLU, in blocks separated by 2x2 max-pools, then a small
classifier (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, configurations D and E, narrowed to CIFAR's 32x32 inputs):

* :class:`VGG16`, the CIFAR VGG-16 of Li et al. ("Pruning Filters for Efficient ConvNets", ICLR
  2017, §4.1) that Zhao et al. prune ("Variational Convolutional Neural Network Pruning", CVPR
  2019, Table 1): 13 convs 64-64 / 128-128 / 256×3 / 512×3 / 512×3, a max-pool after each of
  the five blocks (32 → 1), then fc1 512→512 with BatchNorm and ReLU, and fc2 512→classes. Li
  et al. build it from Zagoruyko's network with BatchNorm "after each convolutional layer and
  the first linear layer" and no Dropout. 14.99M parameters and 313.5M multiply-adds on 32x32x3
  with 10 classes (:mod:`bayescomp.counting` says which convention gives each number).
  Adamczewski & Park's VGG-16 (Dirichlet pruning, AISTATS 2021; ``models/vgg.py`` of
  github.com/kamadforge/dirichlet_pruning) has the same layers but neither BatchNorm nor ReLU
  between its two linear layers.
* :class:`VGGLike`, the network of Louizos et al. ("Bayesian Compression for Deep Learning",
  NeurIPS 2017, Tables 1-2: "VGG", (2×64)-(2×128)-(3×256)-(8×512)) and of Molchanov et al.'s
  Sparse VD, after Zagoruyko ("92.45% on CIFAR-10 in Torch", 2015): the same 13 convs and the
  same two fully connected layers, 512→512 with BatchNorm and ReLU and 512→classes. Louizos et
  al.'s 15-entry pruned architectures are these 15 weight layers' input widths after the first
  (13 conv output widths, fc1's inputs = conv13's channels, fc2's inputs = fc1's units);
  ``widths`` takes the 14 prunable ones. Zagoruyko's Dropout layers are left out: here the
  method's posterior is the noise (as in Louizos et al.'s and Molchanov et al.'s variational
  training). Its layers are VGG16's; it is registered under its own name so that each paper's
  table names the network it reports.
* :class:`VGG19`, network slimming's (Liu et al., "Learning Efficient Convolutional Networks
  through Network Slimming", ICCV 2017, Table 1; ``models/vgg.py`` of
  github.com/Eric-mingjie/network-slimming): 16 convs 64×2 / 128×2 / 256×4 / 512×4 / 512×4, a
  max-pool after the first four blocks (32 → 2), a 2x2 average pool, then one linear layer
  512→classes. Written here as a global average pool, which is that 2x2 average on 32x32 inputs.
  20.04M parameters and 398.4M multiply-adds (see :mod:`bayescomp.counting` for the convention).

``widths`` are every prunable channel count: the conv widths in order, then (VGG16, VGGLike)
fc1's units, so a pruned architecture can be rebuilt physically smaller. Each conv's channels
are one group (conv → BatchNorm → ReLU → next conv); the last conv's channels are read by the
classifier through the flatten of its ``H/32 × W/32`` map (one position for 32x32 inputs) or,
for VGG19, through the global average (one position at any size). BatchNorms are called with
the model's ``rngs`` too, for a method whose normalisation samples (channel saliencies).

**Channel modules** (``layers.channel``; Dirichlet pruning's importance switches, Adamczewski &
Park, "Dirichlet Pruning for Convolutional Neural Networks", AISTATS 2021): every group gets a
positive per-channel scale :math:`a` after its BatchNorm and ReLU,
:math:`a \odot \mathrm{relu}(\mathrm{bn}(\mathrm{conv}(x)))` (and
:math:`a \odot \mathrm{relu}(\mathrm{bn_{fc1}}(\mathrm{fc1}(x)))`), never before the BatchNorm,
whose batch statistics would divide it away. A positive scale commutes with max- and
average-pooling, so where a pool follows the conv it is applied after the pool, on the 4x
smaller map, with the same result. Every method without channel modules gets ``None`` and
builds exactly the network above; ``channel_modules()`` gives them by group name.
"""

from __future__ import annotations

import jax
from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.models.graph import ChannelGroup, Consumer
from bayescomp.models.pooling import global_average_pool, max_pool_2x2
from bayescomp.models.widths import check_widths
from bayescomp.nn.factory import LayerFactory


class VGG(nnx.Module):
    """A CIFAR VGG: the subclasses set the plan (class attributes below).

    Attributes (class):
        model_name: Registry name, for messages.
        blocks: Convolutions per block; a 2x2 max-pool follows each block except, where
            ``global_pool`` is set, the last, which is averaged over its whole map instead.
        default_widths: Conv widths, then the hidden fc layer's units where there is one.
        hidden_fc: True for fc1 (units = the last width, BatchNorm, ReLU) before the
            classifier; False for the classifier alone.
        global_pool: True to average the last block's map (VGG19); False to flatten it after a
            last max-pool (VGG16).

    Args:
        layers: The method's layer factory.
        rngs: Random streams for initialisation.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs.
        widths: See the module docstring; ``None`` for the published network.
    """

    model_name: str
    blocks: tuple[int, ...]
    default_widths: tuple[int, ...]
    hidden_fc: bool
    global_pool: bool

    def __init_subclass__(cls, **kwargs):
        # ``layer_names`` is a class attribute (read before a model is built); derive it from
        # the subclass's plan so that it cannot disagree with the layers built below.
        super().__init_subclass__(**kwargs)
        convs = sum(cls.blocks)
        cls.layer_names = (tuple(f"conv{i}" for i in range(1, convs + 1))
                           + (("fc1", "fc2") if cls.hidden_fc else ("fc",)))

    def __init__(self, layers: LayerFactory, *, rngs: nnx.Rngs, input_shape=(32, 32, 3),
                 num_classes: int = 10, widths=None):
        convs = sum(self.blocks)
        expected = convs + int(self.hidden_fc)
        widths = check_widths(self.model_name, self.default_widths if widths is None else widths,
                              (expected,), "[" + ",".join(["16"] * expected) + "]")
        height, width, channels = (int(d) for d in input_shape)
        pools = len(self.blocks) - int(self.global_pool)
        if min(height, width) < 2 ** pools:
            raise ConfigError(f"{self.model_name} halves its input {pools} times and needs at "
                              f"least {2 ** pools}x{2 ** pools} pixels; got {height}x{width} "
                              "(use a CIFAR-size dataset)")
        self.input_shape = (height, width, channels)
        # Flatten positions per channel of the last conv: 1 after a global average.
        self.positions = 1 if self.global_pool else (height >> pools) * (width >> pools)
        self.pool_after = frozenset(sum(self.blocks[: b + 1]) for b in range(pools))
        for i in range(convs):
            in_ch = channels if i == 0 else widths[i - 1]
            name = f"conv{i + 1}"
            # Every conv but the first reads a BatchNorm-ReLU output (its CPU gradient form).
            setattr(self, name, layers.conv(name, in_ch, widths[i], (3, 3), rngs=rngs,
                                            padding="SAME", input_is_normalized=i > 0))
            setattr(self, f"bn{i + 1}", layers.norm(f"bn{i + 1}", widths[i]))
            # The method's module over the conv's channels (module docstring); None for every
            # method without one, whose network is then exactly the plain VGG.
            setattr(self, f"{name}_switch", layers.channel(name, widths[i], after_norm=True))
        features = widths[convs - 1] * self.positions
        if self.hidden_fc:
            self.fc1 = layers.dense("fc1", features, widths[convs], rngs=rngs)
            self.bn_fc1 = layers.norm("bn_fc1", widths[convs])
            self.fc1_switch = layers.channel("fc1", widths[convs], after_norm=True)
            self.fc2 = layers.dense("fc2", widths[convs], num_classes, rngs=rngs)
        else:
            self.fc = layers.dense("fc", features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, c)``."""
        for i in range(1, sum(self.blocks) + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x, rngs=rngs), rngs=rngs,
                                        relu=True)
            if i in self.pool_after:
                x = max_pool_2x2(x)
            switch = getattr(self, f"conv{i}_switch")
            if switch is not None:
                x = switch(x, rngs=rngs)
        if self.global_pool:
            return self.fc(global_average_pool(x), rngs=rngs)
        x = x.reshape(x.shape[0], -1)  # NHWC flatten: channel is the fastest-varying index
        x = self.bn_fc1(self.fc1(x, rngs=rngs), rngs=rngs, relu=True)
        if self.fc1_switch is not None:
            x = self.fc1_switch(x, rngs=rngs)
        return self.fc2(x, rngs=rngs)

    def channel_modules(self) -> dict[str, nnx.Module]:
        """The channel modules by channel group (``conv<i>``, then ``fc1``); empty for methods
        without them."""
        modules = {f"conv{i}": getattr(self, f"conv{i}_switch")
                   for i in range(1, sum(self.blocks) + 1)}
        if self.hidden_fc:
            modules["fc1"] = self.fc1_switch
        return {group: module for group, module in modules.items() if module is not None}

    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """Each conv's channels (with its BatchNorm), read by the next conv; the last conv's by
        the classifier head; fc1's units (with their BatchNorm) by fc2."""
        convs = sum(self.blocks)
        head = "fc1" if self.hidden_fc else "fc"
        groups = [ChannelGroup("image", consumers=("conv1",), prunable=False)]
        for i in range(1, convs):
            groups.append(ChannelGroup(f"conv{i}", producers=(f"conv{i}",), norms=(f"bn{i}",),
                                       consumers=(f"conv{i + 1}",)))
        groups.append(ChannelGroup(f"conv{convs}", producers=(f"conv{convs}",),
                                   norms=(f"bn{convs}",),
                                   consumers=(Consumer(head, positions=self.positions),)))
        if self.hidden_fc:
            groups.append(ChannelGroup("fc1", producers=("fc1",), norms=("bn_fc1",),
                                       consumers=("fc2",)))
        groups.append(ChannelGroup("logits", producers=(self.layer_names[-1],), prunable=False))
        return tuple(groups)


class VGG16(VGG):
    """Li et al.'s CIFAR VGG-16 (module docstring): 13 convs, fc1 512 with BatchNorm, fc2."""

    model_name = "vgg16"
    blocks = (2, 2, 3, 3, 3)
    default_widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512)
    hidden_fc = True
    global_pool = False


class VGGLike(VGG16):
    """Louizos et al.'s VGG after Zagoruyko (module docstring): VGG16's layers."""

    model_name = "vgg_like"


class VGG19(VGG):
    """Network slimming's VGG-19 (module docstring): 16 convs, global average, one fc."""

    model_name = "vgg19"
    blocks = (2, 2, 4, 4, 4)
    default_widths = (64, 64, 128, 128, 256, 256, 256, 256) + (512,) * 8
    hidden_fc = False
    global_pool = True
