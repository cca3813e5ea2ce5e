r"""Group horseshoe prior (Bayesian Compression, BC-GHS) and KLs of log-normals to (inverse) Gammas.

Louizos, Ullrich & Welling (2017), "Bayesian Compression for Deep Learning", §3.2. Per layer

.. math::

    s \sim \mathcal C^+(0, \tau_0),\qquad \tilde z_g \sim \mathcal C^+(0, 1),\qquad
    w_{ij} \sim \mathcal N(0, \tilde z_g^2 s^2),

with the half-Cauchys written as Gamma × inverse-Gamma products (non-centred):

.. math::

    s^2 = s_a s_b,\ s_a \sim \mathrm{Gamma}(\tfrac12, \text{scale } \tau_0^2),\
    s_b \sim \mathrm{IG}(\tfrac12, 1);\qquad
    \tilde z_g^2 = a_g b_g,\ a_g \sim \mathrm{Gamma}(\tfrac12, 1),\
    b_g \sim \mathrm{IG}(\tfrac12, 1).

**Decision: the Gamma scale of s_a is τ0², not τ0.** Write s_a = τ0² g with g ~ Gamma(½, 1), and
s_b = 1/h with h ~ Gamma(½, 1). Gamma(½, 1) is the law of χ²₁/2 = N²/2, so

.. math::

    s^2 = \tau_0^2\,\frac{g}{h} = \tau_0^2\,\frac{N^2}{N'^2},\qquad
    s = \tau_0\,\frac{|N|}{|N'|} = \tau_0\,|\mathrm{Cauchy}(0, 1)| \sim \mathcal C^+(0, \tau_0),

exactly the paper's stated prior on s. With scale τ0 (what the third-party re-implementations' KL
``−log τ0 + exp(μ + σ²/2)/τ0 − …`` corresponds to; Louizos et al. 2017 released no GHS code) the
same argument gives s ~ C⁺(0, √τ0), i.e. a global scale of ≈ 3e-3 instead of 1e-5 at τ0 = 1e-5: a
different, much weaker prior. ``tests/priors/test_horseshoe.py`` checks both statements by sampling.

**KL.** With the posterior of :class:`~bayescomp.posteriors.group_lognormal.GroupLogNormal`
(log-normal q for s_a, s_b, a_g, b_g; q(w | z) = N(z μ, z² σ²)) and the prior factorised the same
way,

.. math::

    \mathrm{KL} = \mathrm{KL}(q(s_a)\,\|\,\mathrm G(\tfrac12, \tau_0^2))
      + \mathrm{KL}(q(s_b)\,\|\,\mathrm{IG}(\tfrac12, 1))
      + \sum_g \big[\mathrm{KL}(q(a_g)\,\|\,\mathrm G(\tfrac12, 1))
      + \mathrm{KL}(q(b_g)\,\|\,\mathrm{IG}(\tfrac12, 1))\big]
      + \sum_{ij} \tfrac12\big(-\log\sigma^2_{ij} + \sigma^2_{ij} + \mu^2_{ij} - 1\big),

the last term exact because KL(N(zμ, z²σ²) || N(0, z²)) does not depend on z (as for GNJ). All
constants are kept, so this is the exact KL of the (proper) prior.

For q = LogNormal(μ, σ²), i.e. y = log x ~ N(μ, σ²): E_q[log x] = μ, E_q[x] = exp(μ + σ²/2),
E_q[1/x] = exp(σ²/2 − μ), and the entropy is H[q] = μ + ½ log(2πeσ²) (Gaussian entropy of y
plus E[y] for the Jacobian of x = e^y).

* Gamma(k, scale θ): log p(x) = (k−1) log x − x/θ − lgamma(k) − k log θ, so

  .. math::

      \mathrm{KL}(q\,\|\,\mathrm{Gamma}(k,\theta)) = -k\mu - \tfrac12\log(2\pi e\sigma^2)
        + e^{\mu + \sigma^2/2}/\theta + \mathrm{lgamma}(k) + k\log\theta;

  for k = ½ (lgamma(½) = ½ log π): ½ log θ + e^{μ+σ²/2}/θ − ½(μ + log σ² + 1 + log 2).
* InvGamma(k, scale β): log p(x) = k log β − lgamma(k) − (k+1) log x − β/x, so

  .. math::

      \mathrm{KL}(q\,\|\,\mathrm{IG}(k,\beta)) = k\mu - \tfrac12\log(2\pi e\sigma^2) - k\log\beta
        + \mathrm{lgamma}(k) + \beta\,e^{\sigma^2/2 - \mu};

  for k = ½, β = 1: e^{σ²/2−μ} − ½(−μ + log σ² + 1 + log 2).

Compared with the s_a term of the third-party PyTorch re-implementations, ``−log τ0 +
e^{μ+σ²/2}/τ0 − ½(μ + log σ² + 1 + log 2)``: its constant −log τ0 is not the exact ½ log θ for any
θ (irrelevant to gradients, but it makes their reported KL wrong by a constant), and its θ = τ0
instead of τ0² changes the gradients (the prior it optimises towards is C⁺(0, √τ0)).

**Numerics (float32).** With θ = τ0² = 1e-10 and μ_sa ≈ log 1e-10 ≈ −23, E[x]/θ is computed as
``exp(μ + σ²/2 − log θ)`` with log θ taken in float64 when θ is a Python number, so neither a
tiny θ (τ0² underflows float32 below τ0 ≈ 1e-19) nor exp(μ) is ever formed on its own. The
k·μ and ½ log θ terms are each ≈ 11.5 nats and cancel to O(1); float32 keeps ≈ 1e-6 absolute
error on them.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from bayescomp.errors import ConfigError
from bayescomp.posteriors.group_lognormal import GroupLogNormal
from bayescomp.priors.base import Prior, register_kl
from bayescomp.priors.gaussian import kl_normal_zero_mean

_LOG_2PI_E = math.log(2.0 * math.pi) + 1.0


def _log(value):
    """log of a positive hyperparameter: float64 for Python numbers (so 1e-40 does not underflow
    float32 first), ``jnp.log`` for arrays."""
    if isinstance(value, (int, float)):
        return math.log(value)
    return jnp.log(value)


def _lgamma(shape):
    """lgamma(k): ``math.lgamma`` for Python numbers, ``jax.scipy.special.gammaln`` for arrays."""
    if isinstance(shape, (int, float)):
        return math.lgamma(shape)
    return gammaln(shape)


def kl_lognormal_gamma(mu: jax.Array, log_var: jax.Array, shape, scale) -> jax.Array:
    """Elementwise KL(LogNormal(μ, σ²) || Gamma(shape k, scale θ)) in nats.

    ``−kμ − ½ log(2πeσ²) + exp(μ + σ²/2 − log θ) + lgamma(k) + k log θ``.

    Args:
        mu: Mean μ of log x under q.
        log_var: log σ² of log x under q (same shape as ``mu`` or broadcastable).
        shape: Gamma shape k > 0 (number or array).
        scale: Gamma scale θ > 0 (number or array); the density is ∝ x^{k−1} e^{−x/θ}.

    Returns:
        The KL, broadcast shape of the arguments.
    """
    log_scale = _log(scale)
    return (-shape * mu - 0.5 * (_LOG_2PI_E + log_var)
            + jnp.exp(mu + 0.5 * jnp.exp(log_var) - log_scale)
            + _lgamma(shape) + shape * log_scale)


def kl_lognormal_inverse_gamma(mu: jax.Array, log_var: jax.Array, shape, scale) -> jax.Array:
    """Elementwise KL(LogNormal(μ, σ²) || InvGamma(shape k, scale β)) in nats.

    ``kμ − ½ log(2πeσ²) − k log β + lgamma(k) + exp(σ²/2 − μ + log β)``.

    Args:
        mu: Mean μ of log x under q.
        log_var: log σ² of log x under q.
        shape: Inverse-Gamma shape k > 0.
        scale: Inverse-Gamma scale β > 0; the density is ∝ x^{−k−1} e^{−β/x}.

    Returns:
        The KL, broadcast shape of the arguments.
    """
    log_scale = _log(scale)
    return (shape * mu - 0.5 * (_LOG_2PI_E + log_var) - shape * log_scale + _lgamma(shape)
            + jnp.exp(0.5 * jnp.exp(log_var) - mu + log_scale))


@dataclasses.dataclass(frozen=True)
class GroupHorseshoe(Prior):
    """s ~ C⁺(0, τ0) per layer, z̃_g ~ C⁺(0, 1) per group, w ~ N(0, z̃_g² s²).

    Args:
        tau0: Global scale τ0 (1e-5 in both third-party re-implementations). Also used by
            :class:`~bayescomp.posteriors.group_lognormal.GroupLogNormal` to initialise; the
            method config writes it once.
    """

    tau0: float = 1e-5

    def __post_init__(self):
        if not self.tau0 > 0.0:
            raise ConfigError(f"group_horseshoe: tau0 must be positive, got {self.tau0}")


@register_kl(GroupLogNormal, GroupHorseshoe)
def _kl_group_lognormal_horseshoe(q: GroupLogNormal, p: GroupHorseshoe) -> jax.Array:
    tau0_sq = float(p.tau0) ** 2  # a Python float: its log is taken in float64
    theta = q.scale_param  # each scale parameter's θ (stored as θ / scale_lr_multiplier)
    kl_global = (kl_lognormal_gamma(theta("sa_mu"), theta("sa_log_var"), 0.5, tau0_sq)
                 + kl_lognormal_inverse_gamma(theta("sb_mu"), theta("sb_log_var"), 0.5, 1.0))
    kl_local = jnp.sum(kl_lognormal_gamma(theta("a_mu"), theta("a_log_var"), 0.5, 1.0)
                       + kl_lognormal_inverse_gamma(theta("b_mu"), theta("b_log_var"), 0.5, 1.0))
    kl_weights = kl_normal_zero_mean(q.w_mean[...], q.w_log_var[...], 1.0)
    return kl_global + kl_local + kl_weights
