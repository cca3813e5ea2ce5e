"""Parameter and multiply-add counts (bayescomp/counting.py) against the published totals.

The totals are checked at the precision the papers print them, in the convention
``bayescomp.counting`` documents: parameters = kernels + biases of layers no BatchNorm follows +
BatchNorm γ, β; multiply-adds of conv and dense layers (VGG-19's 398.4M also counts BatchNorm's
one multiply-add per element, which is how half of Liu et al.'s 7.97×10⁸ FLOPs comes out).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from bayescomp.counting import count
from bayescomp.errors import ConfigError
from bayescomp.models import LeNet5, ResNet8
from bayescomp.models.graph import ChannelGroup, Consumer, channel_graph
from bayescomp.models.pooling import max_pool_2x2
from bayescomp.models.widths import full_widths
from bayescomp.nn import LayerFactory


def _shapes_only(model_cls, **kwargs):
    """``model_cls`` built with every array abstract: counting reads shapes only, and building
    no weights spares the per-shape compilations of their random initialisers."""
    return nnx.eval_shape(lambda: model_cls(LayerFactory(), rngs=nnx.Rngs(0), **kwargs))


@pytest.mark.parametrize("name, params_m, macs_m, with_norms", [
    ("vgg16", 14.99, 313.5, False),      # Li et al. 2017 Table 2; Zhao et al. 2019 Table 1
    ("vgg19", 20.04, 398.4, True),       # Liu et al. 2017 Table 1 and README
    ("resnet20", 0.27, 40.6, False),     # He et al. 2016 Table 6
    ("resnet56", 0.85, 125.5, False),    # He et al. 2016 Table 6; Li et al. 2017 Table 2
    ("resnet110", 1.73, 252.9, False),   # He et al. 2016 Table 6; Li et al. 2017 Table 2
    ("resnet164", 1.70, None, False),    # Liu et al. 2017 Table 1 (FLOPs in another count)
])
def test_published_totals(abstract_model, name, params_m, macs_m, with_norms):
    counted = count(abstract_model(name), (32, 32, 3))
    assert round(counted.params / 1e6, 2) == params_m
    if macs_m is not None:
        macs = counted.macs + (counted.norm_macs if with_norms else 0)
        assert round(macs / 1e6, 1) == macs_m


def test_exact_totals_of_the_conventions(abstract_model):
    """The exact numbers behind the table in bayescomp/counting.py's docstring."""
    vgg16 = count(abstract_model("vgg16"), (32, 32, 3))
    # 13 conv kernels 14,710,464 (VCNN's "14.71M"), fc1 512·512, fc2 512·10.
    assert vgg16.weights == 14_710_464 + 262_144 + 5_120
    # fc2's bias (10) and γ, β of 4,224 conv channels and fc1's 512 units.
    assert (vgg16.biases, vgg16.norm_params) == (10, 2 * (4_224 + 512))
    assert vgg16.params == 14_987_210 and vgg16.macs == 313_463_808
    vgg19 = count(abstract_model("vgg19"), (32, 32, 3))
    assert vgg19.params == 20_035_018
    assert (vgg19.macs, vgg19.norm_macs) == (398_136_320, 303_104)
    assert count(abstract_model("vgg_like"), (32, 32, 3)).as_dict() == vgg16.as_dict()


def test_lenet5_caffe_counts():
    counted = count(_shapes_only(LeNet5), (28, 28, 1))
    assert counted.weights == 430_500
    assert [c.macs for c in counted.layers.values()] == [
        24 * 24 * 25 * 20, 8 * 8 * 25 * 20 * 50, 800 * 500, 500 * 10]
    assert counted.macs == 2_293_000 and counted.biases == 20 + 50 + 500 + 10
    assert counted.norm_params == counted.norm_macs == 0


def test_pruned_lenet5_by_hand():
    """conv1 5 of 20, conv2 10 of 50, fc1 16 of 500 kept (Bayesian Compression's GHS row reads
    5-10-76-16 with fc1's 76 unstructured inputs; whole channels here)."""
    keep = {"conv1": np.arange(20) < 5, "conv2": np.arange(50) < 10, "fc1": np.arange(500) < 16}
    counted = count(_shapes_only(LeNet5), (28, 28, 1), keep)
    weights = {"conv1": 25 * 1 * 5, "conv2": 25 * 5 * 10, "fc1": 16 * 10 * 16, "fc2": 16 * 10}
    assert {n: c.weights for n, c in counted.layers.items()} == weights
    assert {n: c.macs for n, c in counted.layers.items()} == {
        "conv1": 24 * 24 * 125, "conv2": 8 * 8 * 1250, "fc1": 2_560, "fc2": 160}
    assert counted.params == 4_095 + 5 + 10 + 16 + 10


class DirichletLeNet5(nnx.Module):
    """Adamczewski & Park's LeNet-5 variant 10-20-100-25 (``models/lenet5.py`` of
    github.com/kamadforge/dirichlet_pruning): conv 5x5 → pool → ReLU twice, then three dense
    layers. Their BatchNorms (after each pooled ReLU) are left out: the 7,793 of issue 22 counts
    weights and biases only."""

    layer_names = ("c1", "c3", "c5", "f6", "out7")

    def __init__(self, layers, *, rngs, widths=(10, 20, 100, 25)):
        a, b, c, d = widths
        self.c1 = layers.conv("c1", 1, a, (5, 5), rngs=rngs)
        self.c3 = layers.conv("c3", a, b, (5, 5), rngs=rngs)
        self.c5 = layers.dense("c5", b * 16, c, rngs=rngs)
        self.f6 = layers.dense("f6", c, d, rngs=rngs)
        self.out7 = layers.dense("out7", d, 10, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        x = jax.nn.relu(max_pool_2x2(self.c1(x, rngs=rngs)))
        x = jax.nn.relu(max_pool_2x2(self.c3(x, rngs=rngs)))
        x = self.c5(x.reshape(x.shape[0], -1), rngs=rngs)
        return self.out7(self.f6(x, rngs=rngs), rngs=rngs)  # no ReLU between, as theirs

    def channel_groups(self):
        return (ChannelGroup("image", consumers=("c1",), prunable=False),
                ChannelGroup("c1", producers=("c1",), consumers=("c3",)),
                ChannelGroup("c3", producers=("c3",), consumers=(Consumer("c5", positions=16),)),
                ChannelGroup("c5", producers=("c5",), consumers=("f6",)),
                ChannelGroup("f6", producers=("f6",), consumers=("out7",)),
                ChannelGroup("logits", producers=("out7",), prunable=False))


def test_dirichlet_lenet5_5_8_45_15_has_7793_weights_and_biases():
    """Issue 22: c5 reads 8 channels × 16 positions = 128 inputs, not 8."""
    model = _shapes_only(DirichletLeNet5)
    keep = {name: np.arange(size) < kept
            for name, size, kept in (("c1", 10, 5), ("c3", 20, 8), ("c5", 100, 45), ("f6", 25, 15))}
    counted = count(model, (28, 28, 1), keep)
    assert counted.weights == 5 * 25 + 5 * 8 * 25 + 8 * 16 * 45 + 45 * 15 + 15 * 10 == 7_710
    assert counted.biases == 5 + 8 + 45 + 15 + 10
    assert counted.params == 7_793
    small = count(_shapes_only(DirichletLeNet5, widths=(5, 8, 45, 15)), (28, 28, 1))
    assert small.as_dict() == counted.as_dict()  # masks and the rebuilt network agree


def test_pruned_resnet8_by_hand():
    """ResNet-8, streams 4-6-8, on 8x8 inputs: maps 8x8, 4x4, 2x2. Kept: stage1 3 of 4, the
    first block's inner conv 2 of 4, stage2 5 of 6; everything else whole."""
    model = _shapes_only(ResNet8, widths=(4, 6, 8))
    keep = {"stage1": np.array([1, 1, 0, 1], bool), "stage1.0.conv1": np.array([0, 1, 1, 0], bool),
            "stage2": np.array([1, 1, 1, 0, 1, 1], bool)}
    counted = count(model, (8, 8, 3), keep)
    weights = {"stem": 9 * 3 * 3, "stage1.0.conv1": 9 * 3 * 2, "stage1.0.conv2": 9 * 2 * 3,
               "stage2.0.conv1": 9 * 3 * 6, "stage2.0.conv2": 9 * 6 * 5,
               "stage3.0.conv1": 9 * 5 * 8, "stage3.0.conv2": 9 * 8 * 8, "fc": 8 * 10}
    positions = {"stem": 64, "stage1.0.conv1": 64, "stage1.0.conv2": 64, "stage2.0.conv1": 16,
                 "stage2.0.conv2": 16, "stage3.0.conv1": 4, "stage3.0.conv2": 4, "fc": 1}
    assert {n: c.weights for n, c in counted.layers.items()} == weights
    assert {n: c.macs for n, c in counted.layers.items()} == {
        n: weights[n] * positions[n] for n in weights}
    assert counted.macs == 22_832
    assert counted.biases == 10  # every conv feeds a BatchNorm
    norms = {"stem_bn": 3, "stage1.0.bn1": 2, "stage1.0.bn2": 3, "stage2.0.bn1": 6,
             "stage2.0.bn2": 5, "stage3.0.bn1": 8, "stage3.0.bn2": 8}
    assert {n: c.params for n, c in counted.norms.items()} == {n: 2 * k for n, k in norms.items()}
    assert counted.norm_macs == 64 * (3 + 2 + 3) + 16 * (6 + 5) + 4 * (8 + 8)
    assert counted.params == sum(weights.values()) + 10 + 70
    # The physically smaller network the kept counts rebuild costs the same.
    kept = {name: int(mask.sum()) for name, mask in keep.items()}
    rebuilt = _shapes_only(ResNet8, widths=full_widths(channel_graph(model), kept))
    assert count(rebuilt, (8, 8, 3)).as_dict() == counted.as_dict()


@pytest.mark.parametrize("keep, message", [
    ({"conv9": np.ones(3, bool)}, "no channel group 'conv9'"),
    ({"conv1": np.ones(19, bool)}, "boolean vector of the group's 20 channels"),
    ({"conv1": np.ones(20)}, "boolean vector"),
    ({"logits": np.arange(10) < 5}, "'logits' is not prunable"),
])
def test_bad_keep_masks_are_one_line_config_errors(keep, message):
    with pytest.raises(ConfigError, match=message) as error:
        count(_shapes_only(LeNet5), (28, 28, 1), keep)
    assert "\n" not in str(error.value)
