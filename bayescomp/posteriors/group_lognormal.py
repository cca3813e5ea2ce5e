r"""Log-normal group scales: the posterior of Bayesian Compression with the group horseshoe.

Louizos, Ullrich & Welling (2017), "Bayesian Compression for Deep Learning", §3.2 (BC-GHS). The
prior (:class:`~bayescomp.priors.horseshoe.GroupHorseshoe`) writes the scale of group g as
z_g = s·z̃_g with a layer-wide s ~ C⁺(0, τ0) and z̃_g ~ C⁺(0, 1), and splits each half-Cauchy
into a Gamma and an inverse-Gamma factor,

.. math::

    s^2 = s_a s_b,\quad s_a \sim \mathrm{Gamma}(\tfrac12, \tau_0^2),\
    s_b \sim \mathrm{IG}(\tfrac12, 1);\qquad
    \tilde z_g^2 = a_g b_g,\quad a_g \sim \mathrm{Gamma}(\tfrac12, 1),\
    b_g \sim \mathrm{IG}(\tfrac12, 1).

(The paper calls a_g, b_g α̃_g, β̃_g; they are named ``a`` / ``b`` here so that nothing but the
dropout rate is called alpha. Why the Gamma scale is τ0² and not τ0: see the prior's module.)

**Posterior.** Every factor gets a log-normal q: log s_a ~ N(μ_sa, σ²_sa), log s_b ~ N(μ_sb, σ²_sb)
(one each per layer, :class:`~bayescomp.posteriors.variables.GlobalScaleParam`), log a_g ~ N(μ_ag, σ²_ag),
log b_g ~ N(μ_bg, σ²_bg) (per group, :class:`~bayescomp.posteriors.variables.GroupMean` /
:class:`~bayescomp.posteriors.variables.GroupLogVar`). Then

.. math::

    \log z_g = \tfrac12(\log s_a + \log s_b + \log a_g + \log b_g) \sim \mathcal N(m_g, v_g),\quad
    m_g = \tfrac12(\mu_{sa} + \mu_{sb} + \mu_{ag} + \mu_{bg}),\quad
    v_g = \tfrac14(\sigma^2_{sa} + \sigma^2_{sb} + \sigma^2_{ag} + \sigma^2_{bg}),

and W given z is the Gaussian of :class:`GroupScaledGaussian` (local reparameterization).

* Sampling: ``z = exp(m + sqrt(v) ε)``, one draw per example and group, as the third-party
  implementations do (Louizos et al., NIPS 2017, arXiv:1705.08665, have no official GHS code). Every
  z_g is drawn from its exact marginal, but the shared factors s_a, s_b are thereby drawn afresh for
  every group: the correlation between the groups of a layer that a shared s would induce is ignored
  (a mean-field approximation over groups, in exchange for per-example, low-variance sampling).
* Moments of a log-normal: E[z] = exp(m + v/2), E[z²] = exp(2m + 2v).
* Group dropout rate: α_g = Var[z_g] / E[z_g]² = exp(v_g) − 1, so ``log α = log(expm1(v))``,
  computed without overflow for large v as ``v + log(−expm1(−v))``. It depends on the noise of
  z only, not on its size; groups whose q(a_g), q(b_g) relaxed to the prior have large v.
  Pruning keeps ``log α < threshold`` (a third-party implementation does this; the paper,
  Louizos et al. 2017, may threshold another statistic of z̃).

**Initialisation.** τ0 is tiny (1e-5), so the prior's typical s is ~1e-5. Initialising every
log-normal at the median of its prior factor would make z ≈ τ0 and the network output ≈ bias;
instead the log-means are chosen so that m_g = 0 (z ≈ 1, like GNJ's z ~ N(1, 0.01²)):

* μ_sa = log τ0² (the scale of s_a's prior; s_a has a light, Gamma, upper tail),
* μ_sb = −log τ0² (s_b has the heavy inverse-Gamma upper tail, so this is where the size of s
  goes: s² = s_a s_b ≈ 1),
* μ_a = μ_b = 0 (+ N(0, 0.01²) jitter per group).

This puts the compensation for the tiny τ0 into the *global* s_b. The alternative, μ_sb = 0 and
μ_b = −log τ0² in every group, gives the same z but costs ≈ ½·|log τ0²| − 1 ≈ 10.5 extra nats of
KL(q(b_g) || IG(½, 1)) *per group* (≈ 8,200 nats on LeNet-300's fc1) instead of once per layer,
and it starts far from where the posterior goes: a weight scale s·z̃ ≫ τ0 is cheapest under the
prior when s, not every z̃_g, is large (the half-Cauchy tail costs ≈ 2 log(ratio) nats per scale
that has to exceed its prior scale by that ratio).

All log σ² of the four scale factors start at ``scale_log_var_init`` (default −9, the reference
value of GNJ's z log-variance and of W's; third-party GHS codes use −9 or −6), the per-group ones
with N(0, 0.01²) jitter. Then v_g ≈ e^−9 ≈ 1.2e-4, so z is nearly deterministic at the start
and log α_g ≈ −9: every group is kept, and the data term shapes W before the KL adds noise to z.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.posteriors.variables import GlobalScaleParam, GroupLogVar, GroupMean
from bayescomp.posteriors.group_scaled import GroupScaledGaussian
from bayescomp.posteriors.noise import standard_normal


def log_expm1(x: jax.Array) -> jax.Array:
    """``log(exp(x) − 1)`` for x > 0, without overflow for large x nor cancellation for small x.

    For x ≤ 1 ``log(expm1(x))`` is accurate (expm1 keeps the relative precision of tiny x); for
    x > 1 ``x + log(−expm1(−x))`` avoids exp(x) overflowing. The unused branch sees a safe
    argument so that neither branch produces NaN gradients through ``jnp.where``.
    """
    small = x <= 1.0
    x_small = jnp.where(small, x, 1.0)
    x_large = jnp.where(small, 2.0, x)
    return jnp.where(small, jnp.log(jnp.expm1(x_small)), x_large + jnp.log(-jnp.expm1(-x_large)))


class GroupLogNormal(GroupScaledGaussian):
    """Group-scaled Gaussian posterior with the horseshoe's log-normal q(z). See the module doc.

    Args:
        kernel_shape: ``(in, out)`` or ``(kh, kw, in, out)``.
        group_axis: ``-2`` (input units) or ``-1`` (output channels).
        rngs: Random streams for initialisation.
        tau0: Global scale τ0 of the prior, used for the initialisation only (the KL takes it
            from the prior; ``conf/method/bc_ghs.yaml`` writes it once for both).
        scale_log_var_init: Initial log σ² of the four log-normal scale factors.
        **kwargs: Passed to :class:`GroupScaledGaussian` (``weight_log_var_init``,
            ``max_weight_var``).
    """

    def __init__(self, kernel_shape, *, group_axis: int, rngs: nnx.Rngs, tau0: float = 1e-5,
                 scale_log_var_init: float = -9.0, **kwargs):
        super().__init__(kernel_shape, group_axis=group_axis, rngs=rngs, **kwargs)
        if not tau0 > 0.0:
            raise ValueError(f"tau0 must be positive, got {tau0}")
        self.tau0 = float(tau0)
        log_tau0_sq = 2.0 * math.log(tau0)  # in float64, then stored as float32
        g = self.num_groups

        def jitter():
            return 0.01 * jax.random.normal(rngs.params(), (g,))

        # Global scale s² = s_a s_b: log-normal parameters, scalars.
        self.sa_mu = GlobalScaleParam(jnp.asarray(log_tau0_sq, jnp.float32))
        self.sa_log_var = GlobalScaleParam(jnp.asarray(scale_log_var_init, jnp.float32))
        self.sb_mu = GlobalScaleParam(jnp.asarray(-log_tau0_sq, jnp.float32))
        self.sb_log_var = GlobalScaleParam(jnp.asarray(scale_log_var_init, jnp.float32))
        # Local scales z̃_g² = a_g b_g: log-normal parameters, one per group.
        self.a_mu = GroupMean(jitter())
        self.a_log_var = GroupLogVar(scale_log_var_init + jitter())
        self.b_mu = GroupMean(jitter())
        self.b_log_var = GroupLogVar(scale_log_var_init + jitter())

    # --- log z ~ N(m, v) ---------------------------------------------------------------------

    def log_z_mean(self) -> jax.Array:
        """m_g = ½(μ_sa + μ_sb + μ_ag + μ_bg), shape ``(num_groups,)``."""
        return 0.5 * (self.sa_mu[...] + self.sb_mu[...] + self.a_mu[...] + self.b_mu[...])

    def log_z_variance(self) -> jax.Array:
        """v_g = ¼(σ²_sa + σ²_sb + σ²_ag + σ²_bg), shape ``(num_groups,)``."""
        return 0.25 * (jnp.exp(self.sa_log_var[...]) + jnp.exp(self.sb_log_var[...])
                       + jnp.exp(self.a_log_var[...]) + jnp.exp(self.b_log_var[...]))

    # --- q(z) --------------------------------------------------------------------------------

    def sample_z(self, key, batch):
        eps = standard_normal(key, (batch, self.num_groups))
        return jnp.exp(self.log_z_mean() + jnp.sqrt(self.log_z_variance()) * eps)

    def z_mean(self):
        return jnp.exp(self.log_z_mean() + 0.5 * self.log_z_variance())

    def z_second_moment(self):
        return jnp.exp(2.0 * self.log_z_mean() + 2.0 * self.log_z_variance())

    def log_alpha(self):
        return log_expm1(self.log_z_variance())
