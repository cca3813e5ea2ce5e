"""``model.widths``: narrower LeNets built, trained, compressed and decoded like the standard ones.

Weight counts are hand-computed: LeNet-5 with widths (8, 16, 40) on 28x28x1 inputs has conv1
5·5·1·8 = 200, conv2 5·5·8·16 = 3,200, fc1 (16·4·4)·40 = 10,240 and fc2 40·10 = 400 weights,
14,040 in all (430,500 / 14,040 = 30.7 times fewer than LeNet-5-Caffe).
"""

import json

import numpy as np
import pytest
from flax import nnx

from bayescomp import compress, procedures
from bayescomp.compression import codec
from bayescomp.errors import ConfigError
from bayescomp.models import LeNet5, LeNet300, hidden_widths
from bayescomp.nn.factory import LayerFactory
from bayescomp.objectives import variational_layers


def _kernel_shapes(model):
    return [tuple(layer.posterior.weight[...].shape) for _, layer in variational_layers(model)]


def test_default_widths_are_the_published_architectures():
    assert _kernel_shapes(LeNet5(LayerFactory(), rngs=nnx.Rngs(0))) == [
        (5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]
    assert _kernel_shapes(LeNet300(LayerFactory(), rngs=nnx.Rngs(0))) == [
        (784, 300), (300, 100), (100, 10)]


def test_narrow_lenet5_shapes_and_weight_count():
    shapes = _kernel_shapes(LeNet5(LayerFactory(), rngs=nnx.Rngs(0), widths=(8, 16, 40)))
    assert shapes == [(5, 5, 1, 8), (5, 5, 8, 16), (256, 40), (40, 10)]
    assert sum(int(np.prod(s)) for s in shapes) == 14_040
    assert hidden_widths([np.zeros(s) for s in shapes]) == (8, 16, 40)


@pytest.mark.parametrize("model_cls, widths", [
    (LeNet5, (8, 16)), (LeNet5, (8, 0, 40)), (LeNet300, (300, 100, 10)), (LeNet300, (2.5, 3)),
    (LeNet300, (True, 3)), (LeNet5, 5), (LeNet5, "abc")])
def test_bad_widths_are_a_config_error(model_cls, widths):
    with pytest.raises(ConfigError, match="model.widths"):
        model_cls(LayerFactory(), rngs=nnx.Rngs(0), widths=widths)


@pytest.mark.parametrize("widths", ["[8,16]", "5", "abc"])
def test_bad_widths_from_the_command_line(smoke_cfg, tmp_path, widths):
    cfg = smoke_cfg("lenet5_dense", f"model.widths={widths}")
    with pytest.raises(ConfigError, match="model.widths"):
        procedures.get("variational")(cfg, tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_narrow_run_trains_compresses_and_decodes(smoke_cfg, tmp_path):
    """A 2-step svd run of LeNet-5 (8, 16, 40): its file decodes into the same narrow network."""
    cfg = smoke_cfg("lenet5_svd", "model.widths=[8,16,40]")
    metrics = procedures.get("variational")(cfg, tmp_path)
    assert metrics["weights_total"] == 14_040
    assert metrics["total_per_layer"] == [200, 3_200, 10_240, 400]
    compress.main([str(tmp_path)])
    model, network = codec.load(tmp_path / "model.bcz")
    assert _kernel_shapes(model) == [(5, 5, 1, 8), (5, 5, 8, 16), (256, 40), (40, 10)]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["compressed_test_error"] == written["quantized_test_error"]
