"""CIFAR VGGs (bayescomp/models/vgg.py): layer shapes, channel groups, widths, logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.models import VGG16, VGG19, VGGLike
from bayescomp.models.graph import channel_graph, weight_layers
from bayescomp.nn import LayerFactory


def _abstract(model_cls, **kwargs):
    return nnx.eval_shape(lambda: model_cls(LayerFactory(), rngs=nnx.Rngs(0), **kwargs))


def _kernel_shapes(model):
    return {name: tuple(layer.posterior.weight.get_value().shape)
            for name, layer in weight_layers(model)}


def test_published_layer_shapes(abstract_model):
    vgg16 = _kernel_shapes(abstract_model("vgg16"))
    assert vgg16["conv1"] == (3, 3, 3, 64) and vgg16["conv13"] == (3, 3, 512, 512)
    assert (vgg16["fc1"], vgg16["fc2"]) == ((512, 512), (512, 10))
    assert _kernel_shapes(abstract_model("vgg_like")) == vgg16
    vgg19 = _kernel_shapes(abstract_model("vgg19"))
    assert len(vgg19) == 17 and vgg19["conv9"] == (3, 3, 256, 512)
    assert vgg19["fc"] == (512, 10)


def test_channel_groups(abstract_model):
    graph = channel_graph(abstract_model("vgg16"))
    assert graph.group("conv7").norms == ("bn7",) and graph.input_of("conv8")[0].name == "conv7"
    assert graph.input_of("fc1")[1].positions == 1
    assert graph.group("fc1").norms == ("bn_fc1",)
    assert sum(graph.sizes[f"conv{i}"] for i in range(1, 14)) == 4_224  # VCNN's "channels"
    graph = channel_graph(abstract_model("vgg19"))
    assert graph.input_of("fc")[0].name == "conv16" and graph.input_of("fc")[1].positions == 1
    # A larger input: VGG16 flattens its 2x2 final map (4 positions per channel).
    graph = channel_graph(_abstract(VGG16, input_shape=(64, 64, 3)))
    assert graph.input_of("fc1")[1].positions == 4 and graph.sizes["conv13"] == 512


@pytest.mark.parametrize("model_cls, widths, shape", [
    (VGG16, [4] * 14, (32, 32, 3)), (VGGLike, [3] * 13 + [5], (32, 32, 3)),
    (VGG19, [4] * 16, (32, 32, 3)), (VGG19, [4] * 16, (16, 16, 3))])
def test_narrow_variants_give_logits(model_cls, widths, shape):
    model = _abstract(model_cls, widths=widths, input_shape=shape)
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                         jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    assert out.shape == (2, 10)
    assert channel_graph(model).sizes["conv1"] == widths[0]


def test_a_narrow_vgg_trains_its_batch_statistics():
    """Point weights, batch statistics: finite logits, running means moved off zero."""
    model = _abstract(VGG19, widths=[2] * 16, input_shape=(16, 16, 3))
    graphdef, state = nnx.split(model)
    # Random positive values (variances included) from NumPy: no per-shape compilation of an
    # initialiser; running means start at 0.
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda leaf: rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32),
                         state)
    state["bn1"]["mean"].set_value(np.zeros(2, np.float32))

    @jax.jit
    def step(state, x):
        network = nnx.merge(graphdef, state)
        logits = network(x)
        return logits, nnx.state(network)

    logits, state = step(state, jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32))
    assert logits.shape == (4, 10) and bool(jnp.isfinite(logits).all())
    network = nnx.merge(graphdef, state)
    assert float(network.bn1.mean.get_value()[0]) != 0.0


@pytest.mark.parametrize("model_cls, kwargs, message", [
    (VGG16, {"widths": [64] * 13}, "vgg16 needs model.widths as a list of 14 positive"),
    (VGG19, {"widths": [64] * 17}, "vgg19 needs model.widths as a list of 16"),
    (VGG16, {"input_shape": (16, 16, 3)}, "needs at least 32x32 pixels"),
])
def test_bad_configurations_are_one_line_config_errors(model_cls, kwargs, message):
    with pytest.raises(ConfigError, match=message) as error:
        model_cls(LayerFactory(), rngs=nnx.Rngs(0), **kwargs)
    assert "\n" not in str(error.value)
