"""Priors over weights and the registry of KL divergences between posteriors and priors.

A prior is a frozen dataclass that holds hyperparameters only. The maths lives in a module-level
function registered for each ``(posterior class, prior class)`` pair it supports, at the bottom of
the prior's own file (the arrangement of distrax's ``RegisterKL``). A layer never holds prior
maths; it calls :func:`kl_divergence`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax

from bayescomp.errors import ConfigError

_KL_REGISTRY: dict[tuple[type, type], Callable] = {}


@dataclasses.dataclass(frozen=True)
class Prior:
    """Base class of priors. Subclasses are frozen dataclasses of hyperparameters.

    Attributes:
        is_proper: Whether the prior normalises. KLs against an improper prior (log-uniform) are
            defined up to an additive constant only; tests compare differences for them.
    """

    is_proper: ClassVar[bool] = True


def register_kl(posterior_cls: type, prior_cls: type):
    """Register ``fn(q, p) -> scalar`` as KL(q || p) summed over a layer.

    Args:
        posterior_cls: The posterior class the function accepts.
        prior_cls: The prior class the function accepts.

    Returns:
        A decorator that registers and returns the function unchanged.
    """

    def decorator(fn):
        _KL_REGISTRY[(posterior_cls, prior_cls)] = fn
        return fn

    return decorator


def kl_divergence(posterior, prior: Prior) -> jax.Array:
    """KL(q || p) summed over all variational parameters of one layer (nats).

    Args:
        posterior: A :class:`bayescomp.posteriors.base.Posterior`.
        prior: A :class:`Prior`.

    Returns:
        A scalar.

    Raises:
        ConfigError: When no KL is registered for this pair (the method combines a posterior
            and a prior that do not go together).
    """
    fn = _KL_REGISTRY.get((type(posterior), type(prior)))
    if fn is None:
        pairs = ", ".join(f"{q.__name__}/{p.__name__}" for q, p in _KL_REGISTRY)
        raise ConfigError(
            f"no KL divergence between posterior {type(posterior).__name__} and prior "
            f"{type(prior).__name__}; supported pairs: {pairs}. Pick a prior that matches the "
            "method's posterior in conf/method/."
        )
    return fn(posterior, prior)
