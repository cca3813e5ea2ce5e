"""Test error of a network over fixed-size batches: one implementation for every caller.

The training loop, the procedures' final metrics, threshold selection, ``diagnose``,
``tradeoff`` and ``compress`` all measure errors here. Evaluation uses the model's
deterministic view (posterior means, BatchNorm running averages), optionally pruned.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def make_evaluate(graphdef, batch_size: int) -> Callable:
    """Return ``evaluate_error(state, x, y) -> %`` for models of ``graphdef``, jitted.

    ``x`` is padded to a multiple of ``batch_size``; padded rows carry label −1 and never count.
    ``state`` is the model's state (``nnx.split(view)[1]``, or several states as a tuple).
    """

    @jax.jit
    def count_correct(state, x_batches, y_batches):
        model = nnx.merge(graphdef, *state) if isinstance(state, tuple) else nnx.merge(
            graphdef, state)

        def body(total, batch):
            xb, yb = batch
            return total + jnp.sum(jnp.argmax(model(xb), -1) == yb), None

        total, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (x_batches, y_batches))
        return total

    def evaluate_error(state, x, y) -> float:
        n = x.shape[0]
        x_batches, pad = _batches(x, batch_size)
        yp = jnp.concatenate([y, -jnp.ones((pad,), y.dtype)]) if pad else y
        correct = count_correct(state, x_batches, yp.reshape(x_batches.shape[:2]))
        return 100.0 * (1.0 - float(correct) / n)

    return evaluate_error


def _batches(x, batch_size: int):
    """``x`` zero-padded to whole batches, as ``(batches, batch_size, ...)``, and the pad."""
    n_batches = math.ceil(x.shape[0] / batch_size)
    pad = n_batches * batch_size - x.shape[0]
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    return xp.reshape(n_batches, batch_size, *x.shape[1:]), pad


def make_predict(graphdef, batch_size: int) -> Callable:
    """Return ``predict(state, x) -> classes`` (a numpy int array) for models of ``graphdef``,
    jitted; ``x`` is padded to a multiple of ``batch_size`` as in :func:`make_evaluate`."""

    @jax.jit
    def classes(state, x_batches):
        model = nnx.merge(graphdef, *state) if isinstance(state, tuple) else nnx.merge(
            graphdef, state)
        return jax.lax.map(lambda xb: jnp.argmax(model(xb), -1), x_batches)

    def predict(state, x):
        return np.asarray(classes(state, _batches(x, batch_size)[0])).reshape(-1)[:x.shape[0]]

    return predict


def eval_view(model: nnx.Module, *, pruned: bool = False) -> nnx.Module:
    """The deterministic view: posterior means (masked when ``pruned``), BatchNorm running
    averages."""
    return nnx.view(model, deterministic=True, pruned=pruned, use_running_average=True,
                    raise_if_not_found=False)


class Evaluator:
    """Test errors of models, with one compiled evaluation per graph definition.

    Args:
        batch_size: Examples per evaluation batch (``trainer.eval_batch_size``).
    """

    def __init__(self, batch_size: int):
        self.batch_size = int(batch_size)
        self._compiled: dict = {}
        self._predictors: dict = {}

    def error(self, model: nnx.Module, x, y, *, pruned: bool = False) -> float:
        """Error (%) of ``model``'s deterministic view (pruned if asked) on ``(x, y)``."""
        graphdef, state = nnx.split(eval_view(model, pruned=pruned))
        if graphdef not in self._compiled:
            self._compiled[graphdef] = make_evaluate(graphdef, self.batch_size)
        return self._compiled[graphdef](state, x, y)

    def predictions(self, model: nnx.Module, x, *, pruned: bool = False) -> np.ndarray:
        """Predicted classes of ``model``'s deterministic view (pruned if asked) on ``x``."""
        graphdef, state = nnx.split(eval_view(model, pruned=pruned))
        if graphdef not in self._predictors:
            self._predictors[graphdef] = make_predict(graphdef, self.batch_size)
        return self._predictors[graphdef](state, x)
