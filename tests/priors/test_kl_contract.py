r"""Contract: every registered KL(posterior ‖ prior) agrees with an independent reference.

The test walks the KL registry (:func:`bayescomp.priors.register_kl`), so a new
``(posterior, prior)`` pair is covered the moment it is registered — or fails here, by name,
until :data:`REFERENCES` gives it a reference. For each pair it builds one small layer's
posterior with seeded random parameters and compares ``kl_divergence(q, p)`` with a value
computed without the library's KL code:

* **Closed forms from distrax** where distrax has both distributions (Gaussian ‖ Gaussian:
  ``distrax.Normal(...).kl_divergence(...)``).
* **Monte Carlo** ``E_q[log q − log p]`` with distrax densities otherwise: log-normal scale
  factors are ``distrax.Transformed(distrax.Normal(μ, σ), distrax.Lambda(jnp.exp))``, Gamma is
  ``distrax.Gamma`` and the inverse Gamma is a Gamma pushed through ``x ↦ 1/x``. Tolerance:
  5 Monte Carlo standard errors (a two-sided 5σ miss has probability 6e-7 per comparison; the
  seeds are fixed, so the outcome is deterministic) plus the float32 rounding of the library
  value.
* **Improper priors** (log-uniform, Jeffreys, flat) have a KL only up to an additive constant,
  so two posteriors of the same shape are compared through the *difference* of their KLs, as
  ``tests/priors/test_log_uniform.py`` does: the constant cancels. The log-uniform reference is
  Monte Carlo of ``log q(w) + log|w|`` (the unnormalised ``log p = −log|w|``); the library uses
  Molchanov et al.'s Eq. 14 approximation (ICML 2017, arXiv:1701.05369, §4.2), whose absolute
  error the paper bounds by 0.009 nats per weight, so a difference of two N-weight sums may be
  off by up to 2·N·0.009 on top of the Monte Carlo error.
* **Point posteriors** (``Delta``, ``SharedCodebook``): the registered KL is zero by convention
  (a delta's entropy is an infinite constant with no gradient; ``bayescomp/priors/flat.py``,
  ``bayescomp/priors/gaussian_mixture.py``), so two different posteriors must give the same
  value, 0, and no gradient. The mixture prior's ``−log p(w)`` is added once per network by
  soft weight-sharing and checked against scipy in ``tests/priors/test_gaussian_mixture.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

# bayescomp.nn before bayescomp.posteriors: importing the posteriors first hits a circular import
# (posteriors -> delta -> nn -> layer -> priors -> flat -> posteriors.delta).
import bayescomp.nn
import bayescomp.priors  # noqa: F401  (registers every KL)
from bayescomp.posteriors import FactorizedGaussian
from bayescomp.posteriors.codebook import SharedCodebook
from bayescomp.posteriors.delta import Delta
from bayescomp.posteriors.group_lognormal import GroupLogNormal
from bayescomp.posteriors.group_normal import GroupNormal
from bayescomp.priors import (
    Flat,
    Gaussian,
    GaussianMixture,
    GroupNormalJeffreys,
    LogUniform,
    kl_divergence,
)
from bayescomp.priors.base import _KL_REGISTRY
from bayescomp.priors.horseshoe import GroupHorseshoe

K_SE = 5.0  # Monte Carlo tolerance in standard errors (see the module docstring)
N_MC = 40_000  # samples per scalar factor: SE of a layer's sum ≈ 0.03 nats here
EQ14_MAX_ERROR = 0.009  # Molchanov et al. 2017, §4.2: max |Eq. 14 − exact KL| per weight (nats)


@dataclasses.dataclass
class Comparison:
    """The library's value, the reference, and the allowed |difference| with its origin."""

    library: float
    reference: float
    tolerance: float
    reason: str


def _distrax():
    return pytest.importorskip("distrax", reason="the independent reference is distrax")


def _f(x) -> float:
    return float(np.asarray(x, np.float64))


def _float32_tolerance(*values: float) -> float:
    # The library sums O(10–100) float32 terms whose magnitudes add up to Σ|values|: rounding
    # is a few ulp (6e-8) per term, so 1e-5 relative to the magnitudes, plus 1e-4 nats absolute
    # for the cancellation inside a term (e.g. k·log θ − kμ ≈ ±11.5 each in the s_a term).
    return 1e-5 * sum(abs(v) for v in values) + 1e-4


# --- Monte Carlo with distrax ------------------------------------------------------------------


def _mc_kl(q, p, key, n=N_MC) -> tuple[float, float]:
    """Σ over q's batch of E_q[log q − log p], and its variance, by ``n`` samples of q (float64).

    Returns:
        (estimate, variance of the estimate).
    """
    x, log_q = q.sample_and_log_prob(seed=key, sample_shape=(n,))
    d = np.asarray(log_q, np.float64) - np.asarray(p.log_prob(x), np.float64)
    d = d.reshape(n, -1)
    assert np.isfinite(d).all(), "non-finite log-density in the Monte Carlo reference"
    return float(d.mean(0).sum()), float(d.var(0, ddof=1).sum() / n)


def _log_uniform_mc(mean, std, key) -> tuple[float, float]:
    """Σ_i E_q[log q(w_i) + log|w_i|] for q = N(mean, std²): the KL to ∝ 1/|w| up to N·C."""
    distrax = _distrax()

    class _LogUniform:  # unnormalised log p(w) = −log|w|; improper, so no distrax class
        @staticmethod
        def log_prob(w):
            return -jnp.log(jnp.abs(w))

    return _mc_kl(distrax.Normal(jnp.asarray(mean), jnp.asarray(std)), _LogUniform, key)


def _weights_given_z_kl(w_mean, w_log_var, z, group_axis) -> float:
    """Σ KL(N(z μ, z² σ²) ‖ N(0, z²)) by distrax, averaged over draws of z (rows of ``z``).

    Its value does not depend on z, which is why the library can drop z from it; the reference
    keeps z and checks that.
    """
    distrax = _distrax()
    sd = jnp.exp(0.5 * w_log_var)
    shape = [1] * w_mean.ndim
    shape[group_axis] = -1
    values = []
    for z_row in z:
        scale = jnp.abs(z_row).reshape(shape)
        q = distrax.Normal(z_row.reshape(shape) * w_mean, scale * sd)
        values.append(_f(jnp.sum(q.kl_divergence(distrax.Normal(0.0, scale)))))
    assert max(values) - min(values) <= 1e-5 * max(abs(v) for v in values) + 1e-4, values
    return float(np.mean(values))


# --- one builder + reference per registered pair -----------------------------------------------


def _factorized_gaussian(seed, log_alpha_range=(-6.0, 6.0), shape=(6, 4)) -> FactorizedGaussian:
    """θ ~ ±U(0.05, 1.5) (|θ| ≥ 0.05 so the 1e-8 in log α is negligible), log α uniform in
    ``log_alpha_range`` ⊆ [−6, 6]: Eq. 14's fitted range, inside the library's [−8, 8] clip."""
    rng = np.random.default_rng(seed)
    q = FactorizedGaussian(shape, rngs=nnx.Rngs(params=seed))
    theta = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.05, 1.5, shape)
    log_alpha = rng.uniform(*log_alpha_range, shape)
    q.theta[...] = jnp.asarray(theta, jnp.float32)
    q.log_sigma2[...] = jnp.asarray(log_alpha + np.log(theta**2), jnp.float32)
    return q


def _ref_factorized_gaussian_gaussian(seed) -> Comparison:
    distrax = _distrax()
    q = _factorized_gaussian(seed)
    prior = Gaussian(std=0.7)
    sd = jnp.exp(0.5 * q.log_sigma2[...])
    terms = distrax.Normal(q.theta[...], sd).kl_divergence(distrax.Normal(0.0, prior.std))
    reference = _f(jnp.sum(terms))
    return Comparison(_f(kl_divergence(q, prior)), reference,
                      _float32_tolerance(*np.asarray(terms).ravel()),
                      "distrax closed form; float32 rounding")


def _ref_factorized_gaussian_log_uniform(seed) -> Comparison:
    # A low-α (informative) and a high-α (noisy) layer: their KLs differ by tens of nats, so a
    # wrong slope or scale of the library's KL shows far above the tolerance.
    q1 = _factorized_gaussian(seed, (-6.0, 0.0))
    q2 = _factorized_gaussian(seed + 100, (0.0, 6.0))
    prior = LogUniform()
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    ref1, var1 = _log_uniform_mc(q1.theta[...], jnp.exp(0.5 * q1.log_sigma2[...]), k1)
    ref2, var2 = _log_uniform_mc(q2.theta[...], jnp.exp(0.5 * q2.log_sigma2[...]), k2)
    lib1, lib2 = _f(kl_divergence(q1, prior)), _f(kl_divergence(q2, prior))
    n = q1.theta[...].size
    return Comparison(lib1 - lib2, ref1 - ref2,
                      K_SE * math.sqrt(var1 + var2) + 2 * n * EQ14_MAX_ERROR
                      + _float32_tolerance(lib1, lib2),
                      "difference of two layers (improper prior); MC 5 SE + Eq. 14 bound")


def _group_normal(seed, log_alpha_range, shape=(6, 4), group_axis=-2) -> GroupNormal:
    rng = np.random.default_rng(seed)
    q = GroupNormal(shape, group_axis=group_axis, rngs=nnx.Rngs(params=seed))
    g = q.num_groups
    q.w_mean[...] = jnp.asarray(rng.normal(0.0, 0.5, shape), jnp.float32)
    q.w_log_var[...] = jnp.asarray(rng.uniform(-4.0, 0.0, shape), jnp.float32)
    # μ_z away from 0 (so α = σ²/μ² is what log α says, 1e-8 aside), log α_z uniform in
    # ``log_alpha_range`` ⊆ [−6, 6] (Eq. 14's fitted range).
    mu_z = rng.choice([-1.0, 1.0], g) * rng.uniform(0.3, 1.5, g)
    q.z_mean_param[...] = jnp.asarray(mu_z, jnp.float32)
    q.z_log_var[...] = jnp.asarray(rng.uniform(*log_alpha_range, g) + np.log(mu_z**2),
                                   jnp.float32)
    return q


def _ref_group_normal_gnj(seed) -> Comparison:
    prior = GroupNormalJeffreys()
    refs, variances, libs = [], [], []
    # Informative and noisy groups, as for the log-uniform pair; same shape, so the improper
    # constant (one per group) cancels in the difference.
    for s, log_alpha_range in ((seed, (-6.0, 0.0)), (seed + 100, (0.0, 6.0))):
        q = _group_normal(s, log_alpha_range)
        key_z, key_mc = jax.random.split(jax.random.PRNGKey(s))
        mu_z, sd_z = q.z_mean_param[...], jnp.exp(0.5 * q.z_log_var[...])
        z = mu_z + sd_z * jax.random.normal(key_z, (8, q.num_groups))
        kl_z, var_z = _log_uniform_mc(mu_z, sd_z, key_mc)
        kl_w = _weights_given_z_kl(q.w_mean[...], q.w_log_var[...], z, q.group_axis)
        refs.append(kl_z + kl_w)
        variances.append(var_z)
        libs.append(_f(kl_divergence(q, prior)))
    g = q.num_groups
    return Comparison(libs[0] - libs[1], refs[0] - refs[1],
                      K_SE * math.sqrt(sum(variances)) + 2 * g * EQ14_MAX_ERROR
                      + _float32_tolerance(*libs, *refs),
                      "difference of two layers (Jeffreys on z); W|z by distrax at sampled z")


def _group_lognormal(seed, tau0, shape=(5, 3), group_axis=-2) -> GroupLogNormal:
    """Log-normal factors with noise large enough for the KL's σ-dependence to matter, and
    s_a, s_b near their initialisation (μ_sa ≈ log τ0², μ_sb ≈ −log τ0²)."""
    rng = np.random.default_rng(seed)
    q = GroupLogNormal(shape, group_axis=group_axis, rngs=nnx.Rngs(params=seed), tau0=tau0)
    g = q.num_groups
    log_tau0_sq = 2.0 * math.log(tau0)
    q.sa_mu[...] = jnp.float32(log_tau0_sq + rng.normal(0.0, 0.5))
    q.sa_log_var[...] = jnp.float32(rng.uniform(-3.0, 0.0))
    q.sb_mu[...] = jnp.float32(-log_tau0_sq + rng.normal(0.0, 0.5))
    q.sb_log_var[...] = jnp.float32(rng.uniform(-3.0, 0.0))
    for name in ("a_mu", "b_mu"):
        getattr(q, name)[...] = jnp.asarray(rng.normal(0.0, 0.5, g), jnp.float32)
    for name in ("a_log_var", "b_log_var"):
        getattr(q, name)[...] = jnp.asarray(rng.uniform(-3.0, 0.0, g), jnp.float32)
    q.w_mean[...] = jnp.asarray(rng.normal(0.0, 0.5, shape), jnp.float32)
    q.w_log_var[...] = jnp.asarray(rng.uniform(-4.0, 0.0, shape), jnp.float32)
    return q


def _ref_group_lognormal_horseshoe(seed) -> Comparison:
    distrax = _distrax()
    tau0 = 1e-5
    q = _group_lognormal(seed, tau0)
    prior = GroupHorseshoe(tau0=tau0)

    def lognormal(mu, log_var):
        return distrax.Transformed(distrax.Normal(mu, jnp.exp(0.5 * log_var)),
                                   distrax.Lambda(jnp.exp))

    def gamma(shape, scale):  # density ∝ x^{k−1} e^{−x/θ}
        return distrax.Gamma(jnp.float32(shape), jnp.float32(1.0 / scale))

    def inverse_gamma(shape, scale):  # 1/X for X ~ Gamma(k, rate β): density ∝ x^{−k−1} e^{−β/x}
        return distrax.Transformed(distrax.Gamma(jnp.float32(shape), jnp.float32(scale)),
                                   distrax.Lambda(lambda x: 1.0 / x))

    # The prior as bayescomp/priors/horseshoe.py documents it: s² = s_a s_b with
    # s_a ~ Gamma(½, scale τ0²), s_b ~ InvGamma(½, 1), z̃_g² = a_g b_g with a_g ~ Gamma(½, 1),
    # b_g ~ InvGamma(½, 1) (tests/priors/test_horseshoe.py checks that this is C⁺(0, τ0) by
    # sampling), and w | z ~ N(0, z²) with z = s z̃.
    factors = [
        (lognormal(q.sa_mu[...], q.sa_log_var[...]), gamma(0.5, tau0**2)),
        (lognormal(q.sb_mu[...], q.sb_log_var[...]), inverse_gamma(0.5, 1.0)),
        (lognormal(q.a_mu[...], q.a_log_var[...]), gamma(0.5, 1.0)),
        (lognormal(q.b_mu[...], q.b_log_var[...]), inverse_gamma(0.5, 1.0)),
    ]
    keys = jax.random.split(jax.random.PRNGKey(seed), len(factors) + 1)
    estimates = [_mc_kl(qf, pf, k) for (qf, pf), k in zip(factors, keys)]
    m, v = q.log_z_mean(), q.log_z_variance()
    z = jnp.exp(m + jnp.sqrt(v) * jax.random.normal(keys[-1], (8, q.num_groups)))
    kl_w = _weights_given_z_kl(q.w_mean[...], q.w_log_var[...], z, q.group_axis)
    reference = sum(e for e, _ in estimates) + kl_w
    library = _f(kl_divergence(q, prior))
    return Comparison(library, reference,
                      K_SE * math.sqrt(sum(var for _, var in estimates))
                      + _float32_tolerance(library, kl_w, *(e for e, _ in estimates)),
                      "distrax Monte Carlo for the four log-normal factors (5 SE), distrax "
                      "closed form for W|z")


def _zero_by_convention(make_q, prior) -> Callable[[int], Comparison]:
    def reference(seed) -> Comparison:
        q1, q2 = make_q(seed), make_q(seed + 100)
        lib1, lib2 = _f(kl_divergence(q1, prior)), _f(kl_divergence(q2, prior))
        graphdef, params, rest = nnx.split(q1, nnx.Param, ...)
        grads = jax.grad(lambda p: kl_divergence(nnx.merge(graphdef, p, rest), prior))(params)
        assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads)), grads
        # Both values are exactly 0: the convention has no rounding.
        return Comparison(abs(lib1) + abs(lib2), 0.0, 0.0,
                          "KL ≡ 0 for point posteriors (documented convention); no gradient")
    return reference


def _delta(seed) -> Delta:
    return Delta((6, 4), rngs=nnx.Rngs(params=seed))


def _codebook(seed) -> SharedCodebook:
    rng = np.random.default_rng(seed)
    return SharedCodebook(rng.normal(0.0, 1.0, 4).astype(np.float32),
                          rng.integers(0, 4, (6, 4)), rng.random((6, 4)) < 0.7)


#: Every registered pair's reference. A pair missing here fails
#: ``test_every_registered_kl_has_a_reference`` with its name.
REFERENCES: dict[tuple[type, type], Callable[[int], Comparison]] = {
    (FactorizedGaussian, Gaussian): _ref_factorized_gaussian_gaussian,
    (FactorizedGaussian, LogUniform): _ref_factorized_gaussian_log_uniform,
    (GroupNormal, GroupNormalJeffreys): _ref_group_normal_gnj,
    (GroupLogNormal, GroupHorseshoe): _ref_group_lognormal_horseshoe,
    (Delta, Flat): _zero_by_convention(_delta, Flat()),
    (SharedCodebook, Flat): _zero_by_convention(_codebook, Flat()),
    (Delta, GaussianMixture): _zero_by_convention(_delta, GaussianMixture()),
}


def _name(pair) -> str:
    return f"{pair[0].__name__}-{pair[1].__name__}"


REGISTERED = sorted(_KL_REGISTRY, key=_name)


@pytest.mark.parametrize("pair", REGISTERED, ids=_name)
def test_every_registered_kl_has_a_reference(pair):
    assert pair in REFERENCES, (
        f"KL({pair[0].__name__} ‖ {pair[1].__name__}) is registered (register_kl) but has no "
        "independent reference: add one to REFERENCES in tests/priors/test_kl_contract.py "
        "(a distrax closed form, a distrax Monte Carlo estimate, or for an improper prior the "
        "documented approximation compared through differences)")


def test_no_reference_for_an_unregistered_pair():
    stale = [_name(pair) for pair in REFERENCES if pair not in _KL_REGISTRY]
    assert not stale, f"references for pairs no longer registered: {stale}"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pair", REGISTERED, ids=_name)
def test_kl_matches_its_independent_reference(pair, seed):
    if pair not in REFERENCES:
        pytest.fail(f"no reference for {_name(pair)} "
                    "(see test_every_registered_kl_has_a_reference)")
    c = REFERENCES[pair](seed)
    assert np.isfinite(c.library) and np.isfinite(c.reference)
    assert abs(c.library - c.reference) <= c.tolerance, (
        f"{_name(pair)}: library {c.library:.6f} vs reference {c.reference:.6f} "
        f"(|diff| {abs(c.library - c.reference):.2e} > {c.tolerance:.2e}: {c.reason})")
