r"""Gaussian group scales: q(z_g) = N(μ_g, σ_g²) (Bayesian Compression with normal-Jeffreys).

Louizos, Ullrich & Welling (2017), §3.1 ("group normal-Jeffreys", BC-GNJ): the scale posterior is
Gaussian with a per-group dropout rate α_g = σ_g² / μ_g², so

.. math::

    \log\alpha_g = \log\sigma_g^2 - \log(\mu_g^2 + 10^{-8}),

and groups with large α carry no signal and are pruned. Reference initialisation (the authors'
tutorial): μ ~ N(1, 0.01²), log σ² ~ N(−9, 0.01²).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.posteriors.variables import GroupLogVar, GroupMean
from bayescomp.posteriors.group_scaled import GroupScaledGaussian
from bayescomp.posteriors.noise import standard_normal


class GroupNormal(GroupScaledGaussian):
    """Group-scaled Gaussian posterior with Gaussian q(z). See :class:`GroupScaledGaussian`.

    Args:
        z_log_var_init: Mean of the initial log σ_z² (reference: −9).
        **kwargs: Passed to :class:`GroupScaledGaussian`.
    """

    def __init__(self, kernel_shape, *, group_axis: int, rngs: nnx.Rngs,
                 z_log_var_init: float = -9.0, **kwargs):
        super().__init__(kernel_shape, group_axis=group_axis, rngs=rngs, **kwargs)
        self.z_mean_param = GroupMean(1.0 + 0.01 * jax.random.normal(rngs.params(),
                                                                     (self.num_groups,)))
        self.z_log_var = GroupLogVar(z_log_var_init + 0.01 * jax.random.normal(
            rngs.params(), (self.num_groups,)))

    def sample_z(self, key, batch):
        std = jnp.exp(0.5 * self.z_log_var[...])
        return self.z_mean_param[...] + std * standard_normal(key, (batch, self.num_groups))

    def z_mean(self):
        return self.z_mean_param[...]

    def z_second_moment(self):
        mu = self.z_mean_param[...]
        return mu * mu + jnp.exp(self.z_log_var[...])

    def log_alpha(self):
        mu = self.z_mean_param[...]
        return self.z_log_var[...] - jnp.log(mu * mu + 1e-8)
