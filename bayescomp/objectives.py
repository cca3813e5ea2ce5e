r"""The ELBO and its schedules.

The loss minimised per step is the negative ELBO per training example,

.. math::

    \mathcal L = \frac1B\sum_{n\in\text{batch}} -\log p(y_n\mid x_n, W_n)
                 + \beta_t\,\frac{\mathrm{KL}(q(W)\,\|\,p(W))}{N_\text{train}},

the form of the Bayesian Compression tutorial (``CE_mean + KL/N``); Molchanov et al.'s
``N/B·Σ log p − KL`` (github.com/bayesgroup/variational-dropout-sparsifies-dnn,
``nets/objectives.py``) is the same objective times N. The KL is an exact sum over
every layer (:func:`total_kl`), divided by the number of training examples, not by the batch
size. β_t is a warm-up: 0 before ``start_epoch``, linear to 1 at ``end_epoch``, then 1 — the
authors' ``rw_linear`` with (5, 20) of 200 epochs (github.com/bayesgroup/
variational-dropout-sparsifies-dnn, ``nets/optpolicy.py``; Molchanov et al., ICML 2017,
arXiv:1701.05369, §5.1, describe the warm-up without its epochs). Both ends may be given as
fractions of the run in (0, 1), as the learning-rate milestones may (:func:`warmup_epoch`):
the default 0.025 and 0.1 are epochs 5 and 20 of the 200-epoch recipes, and scale with
``trainer.epochs`` so that a short run warms up too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bayescomp.models.graph import weight_layers as variational_layers  # noqa: F401 (re-export)


def kl_modules(model: nnx.Module) -> list[tuple[str, nnx.Module]]:
    """Every module of ``model`` that carries a KL term (defines ``kl()``), by dotted path.

    Weight layers (their posterior against their prior), soft weight-sharing's mixture, and any
    later stochastic module (channel saliencies, Dirichlet switches): the objective needs no
    change for a new one. Ordered by path (``nnx.iter_modules``), so the sum is reproducible.
    """
    return [(".".join(str(p) for p in path), module)
            for path, module in nnx.iter_modules(model)
            if callable(getattr(type(module), "kl", None))]


def total_kl(model: nnx.Module) -> jax.Array:
    """Σ of ``kl()`` over every module that has one (nats); a pure function of the variables."""
    kls = [module.kl() for _, module in kl_modules(model)]
    return jnp.sum(jnp.stack(kls)) if kls else jnp.zeros((), jnp.float32)


def mean_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean categorical negative log-likelihood (nats per example)."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def warmup_epoch(value: float, epochs: int) -> float:
    """A warm-up end in epochs: ``value`` itself, or ``value·epochs`` for a fraction in (0, 1).

    The convention of the optimizer's milestones (:mod:`bayescomp.optim`): 0 and values >= 1
    are epochs, values strictly between are fractions of the run.
    """
    value = float(value)
    return value * int(epochs) if 0.0 < value < 1.0 else value


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
