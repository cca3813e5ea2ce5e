r"""Group normal-Jeffreys prior (Bayesian Compression, BC-GNJ).

Louizos, Ullrich & Welling (2017), §3.1: p(z) ∝ 1/|z| (Jeffreys), p(W | z) = Π N(w_ij | 0, z_g²);
marginally p(w) ∝ 1/|w| per weight, i.e. group variational dropout. With the posterior of
:class:`~bayescomp.posteriors.group_normal.GroupNormal`,

.. math::

    \mathrm{KL}(q(W, z)\,\|\,p(W, z)) = \sum_g \mathrm{KL}\big(q(z_g)\,\|\,p(z_g)\big)
      + \sum_{ij} \tfrac12\big(-\log\sigma^2_{ij} + \sigma^2_{ij} + \mu^2_{ij} - 1\big),

where the first term is Molchanov et al.'s Eq. 14 approximation at the group's α (the prior on z is
log-uniform) and the second is exact: KL(N(zμ, z²σ²) || N(0, z²)) does not depend on z.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from bayescomp.posteriors.group_normal import GroupNormal
from bayescomp.priors.base import Prior, register_kl
from bayescomp.priors.gaussian import kl_normal_zero_mean
from bayescomp.priors.log_uniform import kl_log_uniform


@dataclasses.dataclass(frozen=True)
class GroupNormalJeffreys(Prior):
    """p(z) ∝ 1/|z|, p(w | z) = N(0, z²).

    Args:
        log_alpha_clip: Range the group log α is clipped to inside Eq. 14. The authors' BC code
            does not clip; the wide default only guards against overflow.
    """

    is_proper: ClassVar[bool] = False
    log_alpha_clip: tuple[float, float] = (-20.0, 20.0)


@register_kl(GroupNormal, GroupNormalJeffreys)
def _kl_group_normal_gnj(q: GroupNormal, p: GroupNormalJeffreys) -> jax.Array:
    kl_scales = kl_log_uniform(q.log_alpha(), tuple(p.log_alpha_clip))
    kl_weights = kl_normal_zero_mean(q.w_mean[...], q.w_log_var[...], 1.0)
    return kl_scales + kl_weights
