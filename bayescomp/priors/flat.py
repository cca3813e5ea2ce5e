"""The flat (improper uniform) prior: maximum-likelihood training of point estimates.

Used by the dense baseline. Its "KL" against a delta posterior is zero (up to the infinite
constant of a delta's entropy, which carries no gradient), so the objective is the plain NLL.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from bayescomp.posteriors.codebook import SharedCodebook
from bayescomp.posteriors.delta import Delta
from bayescomp.priors.base import Prior, register_kl


@dataclasses.dataclass(frozen=True)
class Flat(Prior):
    """p(w) ∝ 1: no regularisation."""

    is_proper: ClassVar[bool] = False


@register_kl(Delta, Flat)
def _kl_delta_flat(q: Delta, p: Flat):
    del q, p
    return jnp.zeros((), jnp.float32)


@register_kl(SharedCodebook, Flat)
def _kl_codebook_flat(q: SharedCodebook, p: Flat):
    del q, p
    return jnp.zeros((), jnp.float32)
