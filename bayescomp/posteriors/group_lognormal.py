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
* Group dropout rate of z (``prune_statistic: z_dropout``, the published recipe):
  α_g = Var[z_g] / E[z_g]² = exp(v_g) − 1, so ``log α = log(expm1(v))``, computed without
  overflow for large v as ``v + log(−expm1(−v))``. It depends on the noise of z only, not on its
  size. It is also bounded: the log-normal closest (in KL(q || p)) to Gamma(½, 1) or to
  IG(½, 1) has log-variance log 2, so a group whose q(a_g), q(b_g) relaxed to the prior has
  v = ¼(σ²_sa + σ²_sb + 4) ≈ 1 and log α ≈ log(e − 1) = 0.54, whatever the size of its
  weights; such a group has median z̃ = 1, so it is not small either. "Off" and "on" groups sit a
  few units apart at most (study ``results/studies/lenet5_ghs_cause.md``).
* Group dropout rate of the weights (``prune_statistic: weight_dropout``): the noise-to-signal
  ratio of the group's weights under q,

  .. math::

      \alpha^w_g = \frac{\sum_{ij\in g}\mathrm{Var}[w_{ij}]}{\sum_{ij\in g}\mathrm{E}[w_{ij}]^2}
        = e^{v_g}\Big(1 + \frac{\sum\sigma^2_{ij}}{\sum\mu^2_{ij}}\Big) - 1,

  the group version of Sparse VD's per-weight α = σ²/θ² (Molchanov et al., ICML 2017), equal
  to the z-dropout rate when W̃ is exact (σ → 0). The size of z cancels, as in every dropout
  rate; what it adds is the noise of W̃, which the KL's N(0, 1) term relaxes to the prior (μ → 0,
  σ² → 1, so α^w → ∞) in a group the likelihood no longer needs.
* Shrinkage log-odds (``prune_statistic: shrinkage``): −2 E[log z_g] = log(κ / (1 − κ)) at the
  median z, for the horseshoe's shrinkage factor κ_g = 1 / (1 + z_g²) of a weight whose prior
  given z is N(0, z²) against unit noise (Carvalho, Polson & Scott, "The horseshoe estimator for
  sparse signals", Biometrika 2010, rule "keep when κ < ½", i.e. statistic < 0). It measures
  the size of z, which the two dropout rates do not; it separates groups when the global scale
  s is small and kept groups hold z̃ ≈ 1/s in the half-Cauchy's tail (``scale_init: local``).

**Initialisation.** τ0 is tiny (1e-5), so the prior's typical s is ~1e-5. Initialising every
log-normal at the median of its prior factor would make z ≈ τ0 and the network output ≈ bias;
instead the log-means are chosen so that m_g = 0 (z ≈ 1, like GNJ's z ~ N(1, 0.01²)):

* μ_sa = log τ0² (the scale of s_a's prior; s_a has a light, Gamma, upper tail),
* μ_sb = −log τ0² (s_b has the heavy inverse-Gamma upper tail, so this is where the size of s
  goes: s² = s_a s_b ≈ 1),
* μ_a = μ_b = 0 (+ N(0, 0.01²) jitter per group).

This (``scale_init: global``, the published recipe) puts the compensation for the tiny τ0 into
the *global* s_b. The alternative (``scale_init: local``), μ_sb = 0 and
μ_b = −log τ0² in every group, gives the same z but costs ≈ ½·|log τ0²| − 1 ≈ 10.5 extra nats of
KL(q(b_g) || IG(½, 1)) *per group* (≈ 8,200 nats on LeNet-300's fc1) instead of once per layer,
and it starts far from where the published recipe's posterior goes: a weight scale s·z̃ ≫ τ0 is
cheapest under the prior when s, not every z̃_g, is large (the half-Cauchy tail costs
≈ 2 log(ratio) nats per scale that has to exceed its prior scale by that ratio). That price is
the horseshoe's sparsity mechanism, though: with s ≈ 1 a group whose z̃_g relaxes to its prior
keeps z of order 1 (noisy, not small), τ0 acts on nothing but two scalars per layer, and the
global scale was not seen to move (study ``results/studies/lenet5_ghs_cause.md``). With
``local``, s starts (and stays) near τ0, a kept group holds z̃_g ≈ 1/s in the tail, and a group
the data does not need returns to its prior, i.e. to z ≈ τ0: in the study the groups split about
11 units apart in log z.

**Step size of the scale parameters** (``scale_lr_multiplier``, c). The eight scale parameters
(μ and log σ² of s_a, s_b, a_g, b_g) are stored as φ = θ / c and used as θ = c φ. Adam's step
does not depend on the size of the gradient, so every parameter moves by at most about one
learning rate per step; in θ that is c learning rates: the reparameterization multiplies the
learning rate of the scale parameters, and only theirs, by c (same ELBO, same model; c = 1 is
the published recipe, bit for bit). Why it matters: the log-scale coordinates have a long way to
go (log σ² from −9 to log 2 ≈ 0.69 to relax to the prior, log z̃ by several units to switch a
group off), while at lr 1e-3 they move at most 1e-3 per step; in the study a LeNet-5 trained for
8 epochs moved none of them by more than the 2.4 units the schedule allows. Read θ with
:meth:`GroupLogNormal.scale_param` and set it with :meth:`GroupLogNormal.set_scale_param`.

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


#: What :meth:`GroupLogNormal.log_alpha` may return (``posterior_init.prune_statistic``).
PRUNE_STATISTICS = ("z_dropout", "weight_dropout", "shrinkage")

#: Where the initialisation puts the size of s·z̃ ≈ 1 (``posterior_init.scale_init``).
SCALE_INITS = ("global", "local")


class GroupLogNormal(GroupScaledGaussian):
    """Group-scaled Gaussian posterior with the horseshoe's log-normal q(z). See the module doc.

    Args:
        kernel_shape: ``(in, out)`` or ``(kh, kw, in, out)``.
        group_axis: ``-2`` (input units) or ``-1`` (output channels).
        rngs: Random streams for initialisation.
        tau0: Global scale τ0 of the prior, used for the initialisation only (the KL takes it
            from the prior; ``conf/method/bc_ghs.yaml`` writes it once for both).
        scale_log_var_init: Initial log σ² of the four log-normal scale factors.
        prune_statistic: What :meth:`log_alpha` (the pruned statistic) returns:
            ``"z_dropout"`` (log(exp(v) − 1), the published recipe), ``"weight_dropout"``
            (the group dropout rate of the weights) or ``"shrinkage"`` (−2 E[log z]). See
            the module doc.
        scale_lr_multiplier: c > 0: the scale parameters are stored as θ / c (module doc).
        scale_init: ``"global"`` (μ_sb = −log τ0², s ≈ 1) or ``"local"`` (μ_bg = −log τ0² in
            every group, s ≈ τ0: the horseshoe's global shrinkage in force from the start).
        **kwargs: Passed to :class:`GroupScaledGaussian` (``weight_log_var_init``,
            ``max_weight_var``).
    """

    def __init__(self, kernel_shape, *, group_axis: int, rngs: nnx.Rngs, tau0: float = 1e-5,
                 scale_log_var_init: float = -9.0, prune_statistic: str = "z_dropout",
                 scale_lr_multiplier: float = 1.0, scale_init: str = "global", **kwargs):
        super().__init__(kernel_shape, group_axis=group_axis, rngs=rngs, **kwargs)
        if not tau0 > 0.0:
            raise ValueError(f"tau0 must be positive, got {tau0}")
        if prune_statistic not in PRUNE_STATISTICS:
            raise ValueError(f"prune_statistic must be one of {PRUNE_STATISTICS}, got "
                             f"{prune_statistic!r}")
        if not (isinstance(scale_lr_multiplier, (int, float)) and scale_lr_multiplier > 0
                and math.isfinite(scale_lr_multiplier)):
            raise ValueError(f"scale_lr_multiplier must be a positive number, got "
                             f"{scale_lr_multiplier!r}")
        if scale_init not in SCALE_INITS:
            raise ValueError(f"scale_init must be one of {SCALE_INITS}, got {scale_init!r}")
        self.tau0 = float(tau0)
        self.prune_statistic = prune_statistic
        self.scale_lr_multiplier = float(scale_lr_multiplier)
        c = self.scale_lr_multiplier
        log_tau0_sq = 2.0 * math.log(tau0)  # in float64, then stored as float32
        g = self.num_groups

        def jitter():
            return 0.01 * jax.random.normal(rngs.params(), (g,))

        def stored(value):  # θ → φ = θ / c; c = 1 stores θ itself, bit for bit
            return value if c == 1.0 else value / c

        # Global scale s² = s_a s_b: log-normal parameters, scalars.
        self.sa_mu = GlobalScaleParam(stored(jnp.asarray(log_tau0_sq, jnp.float32)))
        self.sa_log_var = GlobalScaleParam(stored(jnp.asarray(scale_log_var_init, jnp.float32)))
        local = scale_init == "local"
        self.sb_mu = GlobalScaleParam(stored(jnp.asarray(0.0 if local else -log_tau0_sq,
                                                         jnp.float32)))
        self.sb_log_var = GlobalScaleParam(stored(jnp.asarray(scale_log_var_init, jnp.float32)))
        # Local scales z̃_g² = a_g b_g: log-normal parameters, one per group.
        self.a_mu = GroupMean(stored(jitter()))
        self.a_log_var = GroupLogVar(stored(scale_log_var_init + jitter()))
        b_mu = jitter()
        if local:  # the size of z in every group instead of in s_b
            b_mu = b_mu - log_tau0_sq
        self.b_mu = GroupMean(stored(b_mu))
        self.b_log_var = GroupLogVar(stored(scale_log_var_init + jitter()))

    # --- the scale parameters θ (stored as θ / c) --------------------------------------------

    def scale_param(self, name: str) -> jax.Array:
        """θ of scale parameter ``name`` (``"sa_mu"``, ``"a_log_var"``, ...): stored value · c."""
        value = getattr(self, name)[...]
        return value if self.scale_lr_multiplier == 1.0 else value * self.scale_lr_multiplier

    def set_scale_param(self, name: str, value) -> None:
        """Set scale parameter ``name`` to θ = ``value`` (stored as θ / c)."""
        c = self.scale_lr_multiplier
        value = jnp.asarray(value, jnp.float32)
        getattr(self, name)[...] = value if c == 1.0 else value / c

    # --- log z ~ N(m, v) ---------------------------------------------------------------------

    def log_z_mean(self) -> jax.Array:
        """m_g = ½(μ_sa + μ_sb + μ_ag + μ_bg), shape ``(num_groups,)``."""
        p = self.scale_param
        return 0.5 * (p("sa_mu") + p("sb_mu") + p("a_mu") + p("b_mu"))

    def log_z_variance(self) -> jax.Array:
        """v_g = ¼(σ²_sa + σ²_sb + σ²_ag + σ²_bg), shape ``(num_groups,)``."""
        p = self.scale_param
        return 0.25 * (jnp.exp(p("sa_log_var")) + jnp.exp(p("sb_log_var"))
                       + jnp.exp(p("a_log_var")) + jnp.exp(p("b_log_var")))

    # --- q(z) --------------------------------------------------------------------------------

    def sample_z(self, key, batch):
        eps = standard_normal(key, (batch, self.num_groups))
        return jnp.exp(self.log_z_mean() + jnp.sqrt(self.log_z_variance()) * eps)

    def z_mean(self):
        return jnp.exp(self.log_z_mean() + 0.5 * self.log_z_variance())

    def z_second_moment(self):
        return jnp.exp(2.0 * self.log_z_mean() + 2.0 * self.log_z_variance())

    def z_log_alpha(self) -> jax.Array:
        """log(exp(v) − 1): the log dropout rate of z, shape ``(num_groups,)``."""
        return log_expm1(self.log_z_variance())

    def weight_log_alpha(self) -> jax.Array:
        """log(Σ Var[w] / Σ E[w]²) over each group's weights, shape ``(num_groups,)``.

        ``= log(expm1(v + log Σ(μ² + σ²) − log Σ μ²))`` (module doc): the size of z cancels, so
        nothing of the order of τ0 is formed; a group whose W̃ means are all 0 gets +inf.
        """
        axis = len(self.kernel_shape) + self.group_axis
        others = tuple(i for i in range(len(self.kernel_shape)) if i != axis)
        mu_sq = self.w_mean[...] ** 2
        signal = jnp.sum(mu_sq, axis=others)
        total = jnp.sum(mu_sq + self.weight_variance(), axis=others)
        return log_expm1(self.log_z_variance() + jnp.log(total) - jnp.log(signal))

    def shrinkage_log_odds(self) -> jax.Array:
        """−2 E[log z] = log(κ / (1 − κ)) at the median z, κ = 1 / (1 + z²); ``(num_groups,)``."""
        return -2.0 * self.log_z_mean()

    def log_alpha(self):
        if self.prune_statistic == "weight_dropout":
            return self.weight_log_alpha()
        if self.prune_statistic == "shrinkage":
            return self.shrinkage_log_odds()
        return self.z_log_alpha()
