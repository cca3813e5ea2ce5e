r"""The CIFAR ResNets of the channel-pruning papers, written once for every method.

**Basic-block ResNets** (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
§4.2): a 3x3 stem of 16 channels, then three stages of n blocks on 32x32, 16x16 and 8x8 maps
with 16, 32 and 64 channels, global average pooling and a linear classifier; depth 6n + 2.
A block is

.. math::

    y = \mathrm{relu}\big(\mathrm{bn}_2(\mathrm{conv}_2(\mathrm{relu}(\mathrm{bn}_1(
        \mathrm{conv}_1(x))))) + \mathrm{shortcut}(x)\big),

every conv 3x3 with padding 1 on both sides (PyTorch's ``padding=1``; ``"SAME"`` would pad only
below and right at stride 2 and misalign the conv with the shortcut's subsampling). The first
conv of stages 2 and 3 has stride 2, and there the shortcut is He et al.'s parameter-free
option A (§3.3, used for CIFAR in §4.2): ``x[:, ::2, ::2]`` with zero channels appended. ResNet-20 /
56 / 110 (n = 3 / 9 / 18) have 0.27M / 0.85M / 1.73M parameters and 40.6M / 125.5M / 252.9M
multiply-adds on 32x32x3 with 10 classes (:mod:`bayescomp.counting` has the convention);
:class:`ResNet8` (n = 1) is the tiny depth for tests and smoke runs.

**Pre-activation bottleneck ResNet** (He et al., "Identity Mappings in Deep Residual Networks",
ECCV 2016), as network slimming uses it (Liu et al., ICCV 2017; ``models/preresnet.py`` of
github.com/Eric-mingjie/network-slimming): a 3x3 stem of 16 channels, three stages of n
bottlenecks ``x + conv3(relu(bn3(conv2(relu(bn2(conv1(relu(bn1(x)))))))))`` (1x1 to a quarter
of the stage's width, 3x3 with the stage's stride, 1x1 back to 64 / 128 / 256), a 1x1 projection
shortcut with the block's stride where the width or map changes (the first block of each
stage), then BatchNorm, ReLU, global average pooling and the classifier; depth 9n + 2.
:class:`ResNet164` (n = 18): 1.70M parameters (Liu et al.'s Table 1) and 247.6M multiply-adds;
:class:`PreActResNet11` (n = 1) is its tiny depth.

**Channel groups** (:mod:`bayescomp.models.graph`). A stage's residual stream is one group
``stage<s>``: every block's last conv writes it, the BatchNorms on it (the basic blocks' second
BatchNorm and the stem's; in the pre-activation net, the next blocks' first BatchNorm and the
final one) normalise it, and the next blocks' first convs (and the classifier, after the global
average: one position per channel) read it. Each block's inner convs write groups of their own,
``stage<s>.<b>.conv1`` (and ``.conv2`` in a bottleneck), which only the next conv of the block
reads. Across a stage boundary:

* with option A, the widening block's first conv reads the previous stream ``stage<s-1>`` and
  its second conv writes ``stage<s>``; the shortcut adds ``stage<s-1>``'s channel c into
  ``stage<s>``'s channel c (the appended channels get zeros). That link is parameter-free, so no
  weight layer can carry it: ``stage<s>`` declares it as a
  :class:`~bayescomp.models.graph.PaddedShortcut` from ``stage<s-1>``. The two streams stay
  separate groups, pruned independently: a removed channel of ``stage<s-1>`` is a zero that the
  shortcut carries on, a removed channel of ``stage<s>`` discards what arrives there. A network
  rebuilt physically smaller from ``widths`` appends its zeros after the previous stream's kept
  channels, so it equals the masked one where ``stage<s>`` keeps, among its first
  ``C_{s-1}`` channels, exactly the channels ``stage<s-1>`` keeps (keep a channel in both when
  either keeps it);
* in the pre-activation net the projection shortcut is a weight layer, a consumer of the old
  stream and a producer of the new one, as any conv; the stem's 16 channels are a group
  ``stem`` of their own (read by the first block's conv1 and projection).

``widths``, every prunable channel count, so that a pruned architecture can be rebuilt, in one
of two forms:

* short: the three stream widths (each block's inner conv as wide as its stage, He et al.'s
  networks); for the bottleneck net the stem's width and the three streams' (inner convs a
  quarter of their stream, He et al.'s bottleneck);
* full: every prunable group's width in the order ``channel_groups()`` declares them
  (:func:`bayescomp.models.widths.full_widths`): stage by stage, the stream, then each block's
  inner width (bottleneck: the stem first, then per stage the stream and each block's two inner
  widths).

**Channel modules** (``layers.channel``; Dirichlet pruning's importance switches, Adamczewski &
Park, "Dirichlet Pruning for Convolutional Neural Networks", AISTATS 2021). Each block-internal
group gets one, a positive per-channel scale :math:`a_c` on the group's channels where the next
conv reads them: after the BatchNorm and the ReLU,

.. math::

    h = a \odot \mathrm{relu}(\mathrm{bn}_1(\mathrm{conv}_1(x)))

(basic block; in the bottleneck, :math:`a \odot \mathrm{relu}(\mathrm{bn}_2(\cdot))` before
conv2 and :math:`a' \odot \mathrm{relu}(\mathrm{bn}_3(\cdot))` before conv3). After the
BatchNorm, never before it: a batch-statistics BatchNorm divides a scale of its input away. The
residual streams get none: a stream's channel is one index through a whole stage, written by
several convs and read through option-A shortcuts, so there is no one place where a scale would
stand for the channel (likewise the pre-activation net's stem channels, which the first block's
projection reads raw and its conv1 through its first BatchNorm). Every method without channel
modules gets ``None`` and builds exactly the network above; ``channel_modules()`` gives them by
group name.

Option A needs the basic net's streams not to narrow from stage to stage. BatchNorms are called
with the model's ``rngs`` too, for a method whose normalisation samples (channel saliencies).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.models.graph import ChannelGroup, Consumer, PaddedShortcut
from bayescomp.models.pooling import global_average_pool
from bayescomp.models.widths import check_widths
from bayescomp.nn.factory import LayerFactory

#: PyTorch's ``padding=1`` of a 3x3 conv: one row/column on every side, at any stride.
PAD_1 = ((1, 1), (1, 1))
STAGES = 3


def _block_paths(blocks_per_stage: int) -> tuple[str, ...]:
    """``stage<s>.<b>`` of every block, stage by stage (the modules' dotted paths)."""
    return tuple(f"stage{s + 1}.{b}" for s in range(STAGES) for b in range(blocks_per_stage))


def _channel_modules(model: nnx.Module, convs: tuple[str, ...]) -> dict[str, nnx.Module]:
    """``{"stage<s>.<b>.<conv>": block.<conv>_switch}`` over the blocks in order, the ``None``
    ones left out."""
    modules = {}
    for path, block in zip(_block_paths(model.blocks_per_stage),
                           (b for stage in (model.stage1, model.stage2, model.stage3)
                            for b in stage)):
        for conv in convs:
            module = getattr(block, f"{conv}_switch")
            if module is not None:
                modules[f"{path}.{conv}"] = module
    return modules


class BasicBlock(nnx.Module):
    """conv3x3 → BN → ReLU (→ channel module) → conv3x3 → BN, plus the (option-A) shortcut, → ReLU.

    Args:
        layers: The method's layer factory.
        prefix: The block's dotted path (``"stage2.0"``), which prefixes its layers' names.
        in_channels: Channels of the stream the block reads.
        hidden: Channels of its first conv.
        out_channels: Channels of the stream it writes (``>= in_channels``).
        stride: Stride of its first conv and of the shortcut's subsampling.
        rngs: Random streams for initialisation.
    """

    def __init__(self, layers: LayerFactory, prefix: str, in_channels: int, hidden: int,
                 out_channels: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = layers.conv(f"{prefix}.conv1", in_channels, hidden, (3, 3), rngs=rngs,
                                 strides=(stride, stride), padding=PAD_1,
                                 input_is_normalized=True)
        self.bn1 = layers.norm(f"{prefix}.bn1", hidden)
        self.conv2 = layers.conv(f"{prefix}.conv2", hidden, out_channels, (3, 3), rngs=rngs,
                                 padding=PAD_1, input_is_normalized=True)
        self.bn2 = layers.norm(f"{prefix}.bn2", out_channels, stream=True)
        # The method's module over conv1's channels (module docstring); None for every method
        # without one, whose block is then exactly the one above.
        self.conv1_switch = layers.channel(f"{prefix}.conv1", hidden, after_norm=True)
        self.stride = stride

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.bn1(self.conv1(x, rngs=rngs), rngs=rngs, relu=True)
        if self.conv1_switch is not None:
            h = self.conv1_switch(h, rngs=rngs)
        h = self.bn2(self.conv2(h, rngs=rngs), rngs=rngs)
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride, :]
        # Option A: the old stream fills the first channels of the new one, zeros the rest.
        # Counted from the actual arrays, not fixed at construction: an exported network has
        # pruned each stream to its own kept channels.
        if h.shape[-1] > x.shape[-1]:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, h.shape[-1] - x.shape[-1])))
        return jax.nn.relu(h + x)


class ResNet(nnx.Module):
    """He et al.'s CIFAR ResNet with basic blocks and option-A shortcuts (module docstring).

    Subclasses set ``blocks_per_stage`` (n; depth 6n + 2); ``layer_names`` follows from it.

    Args:
        layers: The method's layer factory.
        rngs: Random streams for initialisation.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs.
        widths: The three stream widths, or the full form (module docstring).
    """

    model_name: str
    blocks_per_stage: int
    default_widths = (16, 32, 64)

    def __init_subclass__(cls, **kwargs):
        # ``layer_names`` is a class attribute (read before a model is built); derive it from
        # the depth so that it cannot disagree with the layers built below.
        super().__init_subclass__(**kwargs)
        cls.layer_names = ("stem",) + tuple(
            f"{block}.{conv}" for block in _block_paths(cls.blocks_per_stage)
            for conv in ("conv1", "conv2")) + ("fc",)

    def __init__(self, layers: LayerFactory, *, rngs: nnx.Rngs, input_shape=(32, 32, 3),
                 num_classes: int = 10, widths=None):
        n = self.blocks_per_stage
        widths = check_widths(self.model_name, self.default_widths if widths is None else widths,
                              (STAGES, STAGES * (1 + n)),
                              "[16,32,64], or per stage its stream's width and each block's")
        if len(widths) == STAGES:  # short form: inner convs as wide as their stream
            widths = tuple(w for w in widths for _ in range(1 + n))
        streams = widths[:: 1 + n]
        inner = tuple(w for s in range(STAGES) for w in widths[s * (1 + n) + 1: (s + 1) * (1 + n)])
        if list(streams) != sorted(streams):
            raise ConfigError(f"{self.model_name} adds each stage's input into its output "
                              "through zero-padded shortcuts, so its stream widths must not "
                              f"narrow from stage to stage; got {list(streams)}")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.stem = layers.conv("stem", self.input_shape[2], streams[0], (3, 3), rngs=rngs,
                                padding=PAD_1)
        self.stem_bn = layers.norm("stem_bn", streams[0], stream=True)
        paths = _block_paths(n)
        for s in range(STAGES):
            blocks = []
            for b in range(n):
                in_channels = streams[s - 1] if b == 0 and s > 0 else streams[s]
                stride = 2 if b == 0 and s > 0 else 1
                blocks.append(BasicBlock(layers, paths[s * n + b], in_channels, inner[s * n + b],
                                         streams[s], stride, rngs=rngs))
            setattr(self, f"stage{s + 1}", nnx.List(blocks))
        self.fc = layers.dense("fc", streams[-1], num_classes, rngs=rngs)

    def channel_modules(self) -> dict[str, nnx.Module]:
        """The channel modules by channel group (``stage<s>.<b>.conv1``, block by block);
        empty for methods without them."""
        return _channel_modules(self, ("conv1",))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, c)``."""
        x = self.stem_bn(self.stem(x, rngs=rngs), rngs=rngs, relu=True)
        for stage in (self.stage1, self.stage2, self.stage3):
            for block in stage:
                x = block(x, rngs=rngs)
        return self.fc(global_average_pool(x), rngs=rngs)

    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """The three streams (option-A links between them), each block's inner channels."""
        n = self.blocks_per_stage
        paths = _block_paths(n)
        groups = [ChannelGroup("image", consumers=("stem",), prunable=False)]
        for s in range(STAGES):
            mine = paths[s * n: (s + 1) * n]
            readers = [f"{p}.conv1" for p in mine[1:]]
            readers += ([f"{paths[(s + 1) * n]}.conv1"] if s + 1 < STAGES
                        else [Consumer("fc", positions=1)])
            groups.append(ChannelGroup(
                f"stage{s + 1}",
                producers=(("stem",) if s == 0 else ()) + tuple(f"{p}.conv2" for p in mine),
                norms=(("stem_bn",) if s == 0 else ()) + tuple(f"{p}.bn2" for p in mine),
                # Stage 1's first block reads the stem's stream; a later stage's first block
                # reads the previous stream (listed there, as one of its readers).
                consumers=((f"{mine[0]}.conv1",) if s == 0 else ()) + tuple(readers),
                shortcuts=(PaddedShortcut(f"stage{s}"),) if s > 0 else ()))
            groups += [ChannelGroup(f"{p}.conv1", producers=(f"{p}.conv1",),
                                    norms=(f"{p}.bn1",), consumers=(f"{p}.conv2",))
                       for p in mine]
        groups.append(ChannelGroup("logits", producers=("fc",), prunable=False))
        return tuple(groups)


class ResNet8(ResNet):
    """n = 1: the tiny depth for tests and smoke runs."""

    model_name = "resnet8"
    blocks_per_stage = 1


class ResNet20(ResNet):
    """n = 3 (He et al. 2016, Table 6)."""

    model_name = "resnet20"
    blocks_per_stage = 3


class ResNet56(ResNet):
    """n = 9 (He et al. 2016, Table 6)."""

    model_name = "resnet56"
    blocks_per_stage = 9


class ResNet110(ResNet):
    """n = 18 (He et al. 2016, Table 6)."""

    model_name = "resnet110"
    blocks_per_stage = 18


class Bottleneck(nnx.Module):
    """Pre-activation bottleneck: BN → ReLU → 1x1 → BN → ReLU → 3x3 → BN → ReLU → 1x1, plus
    the input or, where width or map changes, a strided 1x1 projection of it; the channel
    modules (if any) after the second and third ReLU.

    Args:
        layers: The method's layer factory.
        prefix: The block's dotted path (``"stage2.0"``).
        in_channels: Channels of the stream the block reads.
        inner: Channels of its first and second conv.
        out_channels: Channels of the stream it writes.
        stride: Stride of its 3x3 conv and of the projection.
        rngs: Random streams for initialisation.
        reads_stream: The input is a residual stream (every block's but the network's first,
            which reads the stem's own group); its first BatchNorm normalises that stream.
    """

    def __init__(self, layers: LayerFactory, prefix: str, in_channels: int,
                 inner: tuple[int, int], out_channels: int, stride: int, *, rngs: nnx.Rngs,
                 reads_stream: bool = True):
        self.bn1 = layers.norm(f"{prefix}.bn1", in_channels, stream=reads_stream)
        self.conv1 = layers.conv(f"{prefix}.conv1", in_channels, inner[0], (1, 1), rngs=rngs,
                                 input_is_normalized=True)
        self.bn2 = layers.norm(f"{prefix}.bn2", inner[0])
        self.conv2 = layers.conv(f"{prefix}.conv2", inner[0], inner[1], (3, 3), rngs=rngs,
                                 strides=(stride, stride), padding=PAD_1,
                                 input_is_normalized=True)
        self.bn3 = layers.norm(f"{prefix}.bn3", inner[1])
        self.conv3 = layers.conv(f"{prefix}.conv3", inner[1], out_channels, (1, 1), rngs=rngs,
                                 input_is_normalized=True)
        self.shortcut = (layers.conv(f"{prefix}.shortcut", in_channels, out_channels, (1, 1),
                                     rngs=rngs, strides=(stride, stride),
                                     input_is_normalized=True)
                         if stride != 1 or in_channels != out_channels else None)
        # The method's modules over conv1's and conv2's channels, after the BatchNorm and ReLU
        # that normalise them (module docstring); None for every method without them.
        self.conv1_switch = layers.channel(f"{prefix}.conv1", inner[0], after_norm=True)
        self.conv2_switch = layers.channel(f"{prefix}.conv2", inner[1], after_norm=True)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.conv1(self.bn1(x, rngs=rngs, relu=True), rngs=rngs)
        h = self.bn2(h, rngs=rngs, relu=True)
        if self.conv1_switch is not None:
            h = self.conv1_switch(h, rngs=rngs)
        h = self.bn3(self.conv2(h, rngs=rngs), rngs=rngs, relu=True)
        if self.conv2_switch is not None:
            h = self.conv2_switch(h, rngs=rngs)
        h = self.conv3(h, rngs=rngs)
        return h + (x if self.shortcut is None else self.shortcut(x, rngs=rngs))


class PreActResNet(nnx.Module):
    """Pre-activation bottleneck CIFAR ResNet, network slimming's (module docstring).

    Subclasses set ``blocks_per_stage`` (n; depth 9n + 2); ``layer_names`` follows from it.

    Args:
        layers: The method's layer factory.
        rngs: Random streams for initialisation.
        input_shape: ``(h, w, c)`` of one example.
        num_classes: Number of outputs.
        widths: The stem's and three streams' widths, or the full form (module docstring).
    """

    model_name: str
    blocks_per_stage: int
    default_widths = (16, 64, 128, 256)

    def __init_subclass__(cls, **kwargs):
        # As ResNet's: ``layer_names`` derived from the depth.
        super().__init_subclass__(**kwargs)
        names = ["stem"]
        for i, block in enumerate(_block_paths(cls.blocks_per_stage)):
            names += [f"{block}.conv1", f"{block}.conv2", f"{block}.conv3"]
            if i % cls.blocks_per_stage == 0:  # a stage's first block projects its input
                names.append(f"{block}.shortcut")
        cls.layer_names = tuple(names) + ("fc",)

    def __init__(self, layers: LayerFactory, *, rngs: nnx.Rngs, input_shape=(32, 32, 3),
                 num_classes: int = 10, widths=None):
        n = self.blocks_per_stage
        widths = check_widths(
            self.model_name, self.default_widths if widths is None else widths,
            (1 + STAGES, 1 + STAGES * (1 + 2 * n)),
            "[16,64,128,256], or the stem's, then per stage its stream's and each block's two")
        if len(widths) == 1 + STAGES:  # short form: inner convs a quarter of their stream
            widths = widths[:1] + tuple(v for w in widths[1:]
                                        for v in (w,) + (max(1, w // 4),) * (2 * n))
        stem, per_stage = widths[0], 1 + 2 * n
        streams = widths[1::per_stage]
        inner = tuple(w for s in range(STAGES)
                      for w in widths[1 + s * per_stage + 1: 1 + (s + 1) * per_stage])
        self.input_shape = tuple(int(d) for d in input_shape)
        self.stem = layers.conv("stem", self.input_shape[2], stem, (3, 3), rngs=rngs,
                                padding=PAD_1)
        paths = _block_paths(n)
        for s in range(STAGES):
            blocks = []
            for b in range(n):
                i = s * n + b
                in_channels = streams[s] if b else (stem if s == 0 else streams[s - 1])
                stride = 2 if b == 0 and s > 0 else 1
                blocks.append(Bottleneck(layers, paths[i], in_channels, inner[2 * i: 2 * i + 2],
                                         streams[s], stride, rngs=rngs, reads_stream=i > 0))
            setattr(self, f"stage{s + 1}", nnx.List(blocks))
        self.bn = layers.norm("bn", streams[-1], stream=True)
        self.fc = layers.dense("fc", streams[-1], num_classes, rngs=rngs)

    def channel_modules(self) -> dict[str, nnx.Module]:
        """The channel modules by channel group (``stage<s>.<b>.conv1`` and ``.conv2``, block by
        block); empty for methods without them."""
        return _channel_modules(self, ("conv1", "conv2"))

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, c)``."""
        x = self.stem(x, rngs=rngs)
        for stage in (self.stage1, self.stage2, self.stage3):
            for block in stage:
                x = block(x, rngs=rngs)
        return self.fc(global_average_pool(self.bn(x, rngs=rngs, relu=True)), rngs=rngs)

    def channel_groups(self) -> tuple[ChannelGroup, ...]:
        """The stem's channels, the three streams, each block's two inner groups."""
        n = self.blocks_per_stage
        paths = _block_paths(n)
        first = paths[0]
        groups = [ChannelGroup("image", consumers=("stem",), prunable=False),
                  ChannelGroup("stem", producers=("stem",), norms=(f"{first}.bn1",),
                               consumers=(f"{first}.conv1", f"{first}.shortcut"))]
        for s in range(STAGES):
            mine = paths[s * n: (s + 1) * n]
            if s + 1 < STAGES:
                following = paths[(s + 1) * n]
                norms = [f"{following}.bn1"]
                readers = [f"{following}.conv1", f"{following}.shortcut"]
            else:
                norms, readers = ["bn"], [Consumer("fc", positions=1)]
            groups.append(ChannelGroup(
                f"stage{s + 1}",
                producers=tuple(f"{p}.conv3" for p in mine) + (f"{mine[0]}.shortcut",),
                norms=tuple(f"{p}.bn1" for p in mine[1:]) + tuple(norms),
                consumers=tuple(f"{p}.conv1" for p in mine[1:]) + tuple(readers)))
            for p in mine:
                groups.append(ChannelGroup(f"{p}.conv1", producers=(f"{p}.conv1",),
                                           norms=(f"{p}.bn2",), consumers=(f"{p}.conv2",)))
                groups.append(ChannelGroup(f"{p}.conv2", producers=(f"{p}.conv2",),
                                           norms=(f"{p}.bn3",), consumers=(f"{p}.conv3",)))
        groups.append(ChannelGroup("logits", producers=("fc",), prunable=False))
        return tuple(groups)


class PreActResNet11(PreActResNet):
    """n = 1: the tiny depth of :class:`ResNet164` for tests."""

    model_name = "preact_resnet11"
    blocks_per_stage = 1


class ResNet164(PreActResNet):
    """n = 18: network slimming's ResNet-164 (Liu et al. 2017, Table 1)."""

    model_name = "resnet164"
    blocks_per_stage = 18
