r"""The ELBO and its schedules.

The loss minimised per step is the negative ELBO per training example,

.. math::

    \mathcal L = \frac1B\sum_{n\in\text{batch}} -\log p(y_n\mid x_n, W_n)
                 + \beta_t\,\frac{\mathrm{KL}(q(W)\,\|\,p(W))}{N_\text{train}},

the form of the Bayesian Compression tutorial (``CE_mean + KL/N``); Molchanov et al.'s
``N/B·Σ log p − KL`` is the same objective times N (methods.md §1). The KL is an exact sum over
every layer (:func:`total_kl`), divided by the number of training examples, not by the batch
size. β_t is a warm-up: 0 before ``start_epoch``, linear to 1 at ``end_epoch``, then 1 — the
authors' ``rw_linear`` with (5, 20) (methods.md §2.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.nn.layer import VariationalLayer


def variational_layers(model: nnx.Module) -> list[tuple[str, VariationalLayer]]:
    """The model's variational layers with their dotted paths, in forward order.

    Pruning propagates masks between consecutive entries (a removed unit removes its row in the
    next layer), and compression, export and retraining pair layers the same way, so the order
    must be the order of the forward pass. ``nnx.iter_modules`` cannot give it: it visits
    attributes sorted by name (``conv10`` before ``conv2``). The model therefore declares it,
    as a class attribute ``layer_names`` of dotted paths (see :mod:`bayescomp.models`); a module
    with a single variational layer needs none.

    Raises:
        ConfigError: the model has several variational layers and no ``layer_names``, or its
            ``layer_names`` do not name exactly its variational layers.
    """
    found = {
        ".".join(str(p) for p in path): module
        for path, module in nnx.iter_modules(model)
        if isinstance(module, VariationalLayer)
    }
    order = getattr(model, "layer_names", None)
    if order is None:
        if len(found) > 1:
            raise ConfigError(
                f"{type(model).__name__} has {len(found)} variational layers "
                f"({', '.join(sorted(found))}) but no `layer_names`: declare their dotted "
                "paths, in the order the forward pass applies them, as the class attribute "
                "`layer_names`")
        return list(found.items())
    if sorted(order) != sorted(found):
        raise ConfigError(
            f"{type(model).__name__}.layer_names = {tuple(order)!r} must name exactly its "
            f"variational layers, which are {tuple(sorted(found))!r}")
    return [(name, found[name]) for name in order]


def total_kl(model: nnx.Module) -> jax.Array:
    """Σ over layers of KL(q(W_l) || p(W_l)) (nats); a pure function of the parameters."""
    kls = [layer.kl() for _, layer in variational_layers(model)]
    return jnp.sum(jnp.stack(kls)) if kls else jnp.zeros((), jnp.float32)


def mean_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean categorical negative log-likelihood (nats per example)."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def kl_weight(epoch: int, start_epoch: float, end_epoch: float) -> float:
    """β for ``epoch`` (0-based): 0 before ``start_epoch``, linear up to 1 at ``end_epoch``.

    Args:
        epoch: The epoch about to be trained.
        start_epoch: First epoch with β > 0 would be ``start_epoch`` (β = 0 there).
        end_epoch: Epoch from which β = 1. ``start_epoch == end_epoch`` is a step.

    Returns:
        β in [0, 1].
    """
    if epoch < start_epoch:
        return 0.0
    if epoch >= end_epoch:
        return 1.0
    return float(epoch - start_epoch) / float(end_epoch - start_epoch)


def learning_rate_schedule(lr: float, schedule: str, total_steps: int,
                           decay_start: float = 0.0) -> optax.Schedule:
    """Learning-rate schedule over optimisation steps.

    Args:
        lr: Peak learning rate.
        schedule: ``"constant"``, or ``"linear_decay"``: ``lr`` until ``decay_start`` (a fraction
            of training), then linearly to 0 at the end. Sparse VD's LeNet-300-100 recipe is
            ``decay_start=0.5`` (1e-3 for 100 of 200 epochs, then to 0), its LeNet-5 recipe
            ``decay_start=0`` (methods.md §2.5).
        total_steps: Steps in the whole run.
        decay_start: See ``schedule``.

    Returns:
        An optax schedule.
    """
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "linear_decay":
        if not 0.0 <= decay_start < 1.0:
            raise ConfigError(f"optimizer.decay_start must be in [0, 1), got {decay_start}")
        flat_steps = int(round(decay_start * total_steps))
        return optax.join_schedules(
            [optax.constant_schedule(lr),
             optax.linear_schedule(lr, 0.0, max(1, total_steps - flat_steps))],
            [flat_steps],
        )
    raise ConfigError(f"unknown learning-rate schedule {schedule!r}; known: constant, linear_decay")
