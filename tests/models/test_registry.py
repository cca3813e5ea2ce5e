"""Registered models: config widths are the defaults, groups validate, full widths rebuild."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from bayescomp import models
from bayescomp.models.graph import channel_graph, weight_layers
from bayescomp.models.widths import full_widths, widths_from_kernels
from bayescomp.nn import LayerFactory

CONF_MODEL = pathlib.Path(__file__).resolve().parents[2] / "conf" / "model"


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_config_widths_are_the_model_defaults(name):
    cfg = OmegaConf.load(CONF_MODEL / f"{name}.yaml")
    assert cfg.name == name
    assert list(cfg.widths) == models.default_widths(name)


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_channel_groups_validate_at_full_size(abstract_model, name):
    shape = (28, 28, 1) if name.startswith("lenet") else (32, 32, 3)
    model = abstract_model(name, shape)
    graph = channel_graph(model)  # raises on any declaration that does not fit the layers
    assert graph.layers == models.get(name).layer_names
    assert [path for path, _ in weight_layers(model)] == list(graph.layers)
    assert not graph.group("logits").prunable and graph.sizes["logits"] == 10


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "vgg16", "vgg19", "resnet8", "resnet20"])
def test_full_widths_rebuild_the_same_groups(abstract_model, name):
    """``widths=full_widths(graph)`` is the model again (the form the export rebuilds from)."""
    shape = (28, 28, 1) if name.startswith("lenet") else (32, 32, 3)
    graph = channel_graph(abstract_model(name, shape))
    model_cls = models.get(name)
    rebuilt = nnx.eval_shape(lambda: model_cls(LayerFactory(), rngs=nnx.Rngs(0),
                                               input_shape=shape, widths=full_widths(graph)))
    assert channel_graph(rebuilt) == graph


@pytest.mark.parametrize("name, widths, shape", [
    ("lenet5", (8, 16, 40), (28, 28, 1)), ("vgg19", tuple(range(1, 17)), (32, 32, 3)),
    ("resnet8", (4, 2, 6, 3, 8, 5), (8, 8, 3))])
def test_widths_from_kernels(name, widths, shape):
    model_cls = models.get(name)
    model = nnx.eval_shape(lambda: model_cls(LayerFactory(), rngs=nnx.Rngs(0), input_shape=shape,
                                             widths=widths))
    shapes = [layer.posterior.weight.get_value().shape for _, layer in weight_layers(model)]
    assert widths_from_kernels(model_cls, shapes, input_shape=shape, num_classes=10) == widths
    if name == "lenet5":
        assert models.hidden_widths([np.empty(s) for s in shapes]) == widths
