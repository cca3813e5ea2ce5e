"""Full-size CIFAR models built abstractly (shapes only, no weights), once per session."""

from __future__ import annotations

import functools

import pytest
from flax import nnx

from bayescomp import models
from bayescomp.nn import LayerFactory


@functools.cache
def _abstract(name: str, input_shape: tuple[int, ...]):
    model_cls = models.get(name)
    return nnx.eval_shape(lambda: model_cls(LayerFactory(), rngs=nnx.Rngs(0),
                                            input_shape=input_shape))


@pytest.fixture(scope="session")
def abstract_model():
    """``abstract_model(name, input_shape=(32, 32, 3))``: the registered model at its published
    widths, every array a ``jax.ShapeDtypeStruct`` (``nnx.eval_shape``); shared, read-only."""
    return lambda name, input_shape=(32, 32, 3): _abstract(name, tuple(input_shape))
