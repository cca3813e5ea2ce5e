r"""The group horseshoe (BC-GHS): KLs, the half-Cauchy decomposition, the log-normal posterior.

Every check is against something computed independently of the library:

* the log-normal → (inverse) Gamma KLs against Monte Carlo with ``scipy.stats`` densities and
  against ``scipy.integrate.quad``;
* the Gamma × inverse-Gamma decomposition of the half-Cauchy against ``scipy.stats.halfcauchy``
  (pins the decision "the Gamma scale is τ0²");
* the posterior's moments against naive sampling of z and W with numpy from the parameters;
* the layer KL against the k = ½ closed forms written out by hand in numpy (float64);
* ``conf/method/bc_ghs.yaml`` composed with Hydra into a LeNet-300.

Monte Carlo tolerances are 5 standard errors (a two-sided 5σ miss has probability 6e-7 per
comparison, so the few hundred comparisons below fail by chance with probability < 1e-3; the
seeds are fixed, so the outcome is deterministic anyway) plus a float32 term for library values.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from flax import nnx
from omegaconf import OmegaConf

# bayescomp.nn before bayescomp.posteriors: importing bayescomp.posteriors first hits a circular
# import (posteriors -> delta -> nn -> layer -> priors -> flat -> posteriors.delta).
import bayescomp.nn as bnn
from bayescomp.models.lenet import LeNet300
from bayescomp.posteriors.group_lognormal import GroupLogNormal, log_expm1
from bayescomp.priors import kl_divergence
from bayescomp.priors.horseshoe import (GroupHorseshoe, kl_lognormal_gamma,
                                        kl_lognormal_inverse_gamma)

TAU0 = 1e-5
LOG_TAU0_SQ = 2.0 * math.log(TAU0)  # ≈ −23.03
N_MC = 200_000
K_SE = 5.0


def _f32(value) -> float:
    return float(np.asarray(value, np.float64))


# --- 1. KL(LogNormal || Gamma / InvGamma) ----------------------------------------------------

# (μ, σ², shape k, scale θ). Includes shape ½ at scale τ0² = 1e-10 with μ near log 1e-10 (the
# s_a term at τ0 = 1e-5) and a scale of 1e-50, which underflows float32 (the library must take
# log θ in float64).
GAMMA_CASES = [
    (0.0, 0.5, 0.5, 1.0),
    (-0.7, 2.0, 0.5, 1.0),
    (LOG_TAU0_SQ + 0.3, 0.2, 0.5, TAU0**2),
    (LOG_TAU0_SQ, math.exp(-9.0), 0.5, TAU0**2),
    (-1.0, 1.5, 2.0, 0.7),
    (math.log(1e-50) - 0.5, 0.3, 0.5, 1e-50),
]
# (μ, σ², shape k, scale β). Includes μ near −log τ0² (where s_b starts).
INVGAMMA_CASES = [
    (0.0, 0.5, 0.5, 1.0),
    (-LOG_TAU0_SQ, 0.1, 0.5, 1.0),
    (-LOG_TAU0_SQ, math.exp(-9.0), 0.5, 1.0),
    (0.5, 2.0, 3.0, 2.5),
    (-2.0, 0.3, 0.5, 1e-3),
]


def _prior_logpdf(kind: str, x: np.ndarray, shape: float, scale: float) -> np.ndarray:
    if kind == "gamma":
        return scipy.stats.gamma.logpdf(x, a=shape, scale=scale)
    return scipy.stats.invgamma.logpdf(x, a=shape, scale=scale)


def _library_kl(kind: str, mu: float, var: float, shape: float, scale: float) -> float:
    fn = kl_lognormal_gamma if kind == "gamma" else kl_lognormal_inverse_gamma
    return _f32(fn(jnp.float32(mu), jnp.float32(math.log(var)), shape, scale))


# float32 rounding of the library: its terms are at most ≈ 60 nats (k·μ at μ ≈ −115 for the
# 1e-50 case) and cancel; float32 has a relative 6e-8 per operation, so ≲ 1e-5 nats after a
# handful of operations. 5e-5 leaves room.
F32_ATOL = 5e-5


@pytest.mark.parametrize("kind,case", [("gamma", c) for c in GAMMA_CASES]
                         + [("invgamma", c) for c in INVGAMMA_CASES])
def test_kl_matches_monte_carlo(kind, case):
    mu, var, shape, scale = case
    # A different stream per case, so the cases' MC errors are independent (hash of a tuple of
    # floats does not depend on PYTHONHASHSEED).
    rng = np.random.default_rng(hash((kind == "gamma", *case)) % 2**32)
    y = mu + math.sqrt(var) * rng.standard_normal(N_MC)  # log x, float64
    x = np.exp(y)
    log_q = scipy.stats.lognorm.logpdf(x, s=math.sqrt(var), scale=math.exp(mu))
    diff = log_q - _prior_logpdf(kind, x, shape, scale)
    assert np.all(np.isfinite(diff))
    estimate, se = diff.mean(), diff.std(ddof=1) / math.sqrt(N_MC)
    value = _library_kl(kind, mu, var, shape, scale)
    assert abs(value - estimate) <= K_SE * se + F32_ATOL, (value, estimate, se)


@pytest.mark.parametrize("kind,case", [("gamma", GAMMA_CASES[0]), ("gamma", GAMMA_CASES[2]),
                                       ("gamma", GAMMA_CASES[4]),
                                       ("invgamma", INVGAMMA_CASES[1]),
                                       ("invgamma", INVGAMMA_CASES[3])])
def test_kl_matches_quadrature(kind, case):
    """KL = ∫ N(y; μ, σ²) [log q_Y(y) − log p_X(e^y) − y] dy (the −y is log of dx/dy = e^y)."""
    mu, var, shape, scale = case
    sd = math.sqrt(var)
    normal = scipy.stats.norm(mu, sd)

    def integrand(y):
        x = math.exp(y)
        log_q_x = normal.logpdf(y) - y
        return normal.pdf(y) * (log_q_x - float(_prior_logpdf(kind, np.array(x), shape, scale)))

    # ±12σ: the Gaussian weight outside is < 1e-32, far below the tolerance.
    value_quad, abserr = scipy.integrate.quad(integrand, mu - 12 * sd, mu + 12 * sd,
                                              points=[mu], limit=200, epsabs=1e-12,
                                              epsrel=1e-12)
    assert abserr < 1e-8
    # Quadrature is exact to ~1e-10 here, so the tolerance is the library's float32 rounding.
    assert abs(_library_kl(kind, mu, var, shape, scale) - value_quad) <= F32_ATOL


# --- 2. The half-Cauchy decomposition (pins the τ0² decision) ---------------------------------


def _decomposed_global_scale(tau0: float, gamma_scale: float, n: int, seed: int) -> np.ndarray:
    """s = sqrt(s_a s_b), s_a ~ Gamma(½, gamma_scale), s_b ~ InvGamma(½, 1) = 1 / Gamma(½, 1)."""
    rng = np.random.default_rng(seed)
    s_a = rng.gamma(0.5, gamma_scale, n)
    s_b = 1.0 / rng.gamma(0.5, 1.0, n)
    return np.sqrt(s_a * s_b)


@pytest.mark.parametrize("tau0", [1e-5, 1.0])
def test_gamma_scale_tau0_squared_gives_half_cauchy_tau0(tau0):
    s = _decomposed_global_scale(tau0, tau0**2, N_MC, seed=7)
    target = scipy.stats.halfcauchy(scale=tau0)
    # KS test: under the null the p-value is uniform; 1e-3 fails a correct sampler with
    # probability 1e-3 (fixed seed: deterministic). A wrong scale gives p ≈ 0 (see below).
    assert scipy.stats.kstest(s, target.cdf).pvalue > 1e-3
    # Quantiles: the sample p-quantile has standard deviation sqrt(p(1−p)/n) / f(q_p).
    for p in (0.1, 0.25, 0.5, 0.75, 0.9):
        q_true = target.ppf(p)
        sd = math.sqrt(p * (1 - p) / N_MC) / target.pdf(q_true)
        assert abs(np.quantile(s, p) - q_true) <= K_SE * sd, (p, np.quantile(s, p), q_true)


def test_gamma_scale_tau0_gives_half_cauchy_sqrt_tau0():
    """The alternative (Gamma scale τ0, the re-implementations' KL) is C⁺(0, √τ0), not C⁺(0, τ0)."""
    s = _decomposed_global_scale(TAU0, TAU0, N_MC, seed=8)
    assert scipy.stats.kstest(s, scipy.stats.halfcauchy(scale=math.sqrt(TAU0)).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(s, scipy.stats.halfcauchy(scale=TAU0).cdf).pvalue < 1e-10
    # The median of C⁺(0, c) is c: √τ0 ≈ 3.2e-3 instead of 1e-5.
    assert np.median(s) == pytest.approx(math.sqrt(TAU0), rel=0.02)


# --- 3. The posterior ------------------------------------------------------------------------


# Contractions as the layers define them (posteriors.base.Contraction): the bias optional.
def _dense_contract(x, kernel, bias=None):
    y = x @ kernel
    return y if bias is None else y + bias


def _conv_contract(x, kernel, bias=None):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if bias is None else y + bias


# (kernel shape, group axis, contraction, input of one example)
DENSE = ((6, 3), -2, _dense_contract, (6,))
CONV = ((3, 3, 2, 4), -1, _conv_contract, (5, 5, 2))


def _perturbed_posterior(kernel_shape, group_axis, seed) -> GroupLogNormal:
    """A GroupLogNormal moved away from its init so that every parameter matters: v_g ≈ 0.1-0.3,
    groups of different sizes, weight σ² comparable to μ²."""
    q = GroupLogNormal(kernel_shape, group_axis=group_axis, rngs=nnx.Rngs(params=seed), tau0=TAU0)
    rng = np.random.default_rng(seed)
    g = q.num_groups
    q.sa_mu[...] = jnp.float32(LOG_TAU0_SQ + 0.2)
    q.sa_log_var[...] = jnp.float32(math.log(0.05))
    q.sb_mu[...] = jnp.float32(-LOG_TAU0_SQ - 0.5)
    q.sb_log_var[...] = jnp.float32(math.log(0.1))
    q.a_mu[...] = jnp.asarray(rng.normal(0.0, 0.3, g), jnp.float32)
    q.a_log_var[...] = jnp.asarray(rng.uniform(math.log(0.05), math.log(0.5), g), jnp.float32)
    q.b_mu[...] = jnp.asarray(rng.normal(0.0, 0.3, g), jnp.float32)
    q.b_log_var[...] = jnp.asarray(rng.uniform(math.log(0.05), math.log(0.5), g), jnp.float32)
    q.w_log_var[...] = jnp.asarray(rng.uniform(math.log(0.02), math.log(0.3), kernel_shape),
                                   jnp.float32)
    return q


def _params(q: GroupLogNormal) -> dict[str, np.ndarray]:
    names = ("sa_mu", "sa_log_var", "sb_mu", "sb_log_var", "a_mu", "a_log_var", "b_mu",
             "b_log_var", "w_mean", "w_log_var")
    return {n: np.asarray(getattr(q, n)[...], np.float64) for n in names}


def _log_z_moments_by_hand(p) -> tuple[np.ndarray, np.ndarray]:
    m = 0.5 * (p["sa_mu"] + p["sb_mu"] + p["a_mu"] + p["b_mu"])
    v = 0.25 * (np.exp(p["sa_log_var"]) + np.exp(p["sb_log_var"]) + np.exp(p["a_log_var"])
                + np.exp(p["b_log_var"]))
    return m, v


def _naive_z(q, n, rng) -> np.ndarray:
    """z ~ exp(N(m, v)) per sample and group, from the parameters with numpy."""
    m, v = _log_z_moments_by_hand(_params(q))
    return np.exp(m + np.sqrt(v) * rng.standard_normal((n, q.num_groups)))


def _naive_kernels(q, n, rng) -> tuple[np.ndarray, np.ndarray]:
    """(z, W) with W = z · W̃, W̃ ~ N(μ, σ²): n full kernels, float64."""
    p = _params(q)
    z = _naive_z(q, n, rng)
    w_tilde = p["w_mean"] + np.exp(0.5 * p["w_log_var"]) * rng.standard_normal(
        (n, *q.kernel_shape))
    shape = [n] + [1] * len(q.kernel_shape)
    shape[1 + q.group_axis + len(q.kernel_shape)] = q.num_groups
    return z, z.reshape(shape) * w_tilde


def _batch_means_se(samples: np.ndarray, statistic, batches: int = 50):
    """(statistic of all samples, its standard error from `batches` independent batches)."""
    parts = np.stack([statistic(b) for b in np.array_split(samples, batches)])
    return statistic(samples), parts.std(axis=0, ddof=1) / math.sqrt(batches)


@pytest.mark.parametrize("layer", [DENSE, CONV], ids=["dense", "conv"])
def test_z_moments_and_log_alpha_match_sampling(layer, key):
    kernel_shape, group_axis, _, _ = layer
    q = _perturbed_posterior(kernel_shape, group_axis, seed=3)
    z = np.asarray(q.sample_z(key(), N_MC), np.float64)
    assert z.shape == (N_MC, q.num_groups)

    def ratio(s):
        return s.var(axis=0) / s.mean(axis=0) ** 2

    checks = [
        (q.z_mean(), lambda s: s.mean(axis=0)),
        (q.z_second_moment(), lambda s: (s * s).mean(axis=0)),
        (jnp.exp(q.log_alpha()), ratio),  # α = Var z / E[z]²
    ]
    for value, statistic in checks:
        estimate, se = _batch_means_se(z, statistic)
        value = np.asarray(value, np.float64)
        # float32 library values: 1e-5 relative.
        assert np.all(np.abs(value - estimate) <= K_SE * se + 1e-5 * np.abs(value)), (
            value, estimate, se)
    # And log z is N(m, v) with m, v from the parameters.
    m, v = _log_z_moments_by_hand(_params(q))
    log_z = np.log(z)
    assert np.all(np.abs(log_z.mean(0) - m) <= K_SE * np.sqrt(v / N_MC))
    np.testing.assert_allclose(np.asarray(q.log_alpha()), np.log(np.expm1(v)), rtol=1e-5)


@pytest.mark.parametrize("layer", [DENSE, CONV], ids=["dense", "conv"])
def test_weight_moments_match_sampling(layer):
    kernel_shape, group_axis, _, _ = layer
    q = _perturbed_posterior(kernel_shape, group_axis, seed=4)
    n = 100_000
    _, w = _naive_kernels(q, n, np.random.default_rng(5))
    mean, var = np.asarray(q.mean(), np.float64), np.asarray(q.variance(), np.float64)
    assert mean.shape == var.shape == kernel_shape
    se_mean = w.std(axis=0, ddof=1) / math.sqrt(n)
    centred_sq = (w - w.mean(axis=0)) ** 2
    se_var = centred_sq.std(axis=0, ddof=1) / math.sqrt(n)  # SE of the sample variance
    assert np.all(np.abs(mean - w.mean(0)) <= K_SE * se_mean + 1e-5 * np.abs(mean))
    assert np.all(np.abs(var - w.var(0, ddof=1)) <= K_SE * se_var + 1e-5 * var)


@pytest.mark.parametrize("layer", [DENSE, CONV], ids=["dense", "conv"])
def test_sampled_preactivation_matches_naive_sampling(layer, key):
    """Local reparameterization vs. sampling whole kernels: same per-output mean and variance.

    Dense groups scale the inputs (bias unscaled); conv groups scale output channels and, as in
    the authors' Conv2dGroupNJ, the bias too: b = z_c (conv(x, W̃) + bias_c).
    """
    kernel_shape, group_axis, contract, x_shape = layer
    q = _perturbed_posterior(kernel_shape, group_axis, seed=6)
    n = 100_000
    rng = np.random.default_rng(9)
    x1 = jnp.asarray(rng.normal(size=(1, *x_shape)), jnp.float32)
    bias = jnp.asarray(rng.normal(0.0, 0.5, kernel_shape[-1]), jnp.float32)

    lib = np.asarray(q.sample_preactivation(jnp.repeat(x1, n, axis=0), contract, bias, key()),
                     np.float64).reshape(n, -1)

    z, w = _naive_kernels(q, n, rng)
    # contract(x1, ·) is linear in the kernel: its Jacobian J maps a flattened kernel to the
    # flattened output, so every sampled kernel's output is one matrix product.
    jac = jax.jacfwd(lambda k: contract(x1, k))(jnp.zeros(kernel_shape, jnp.float32))
    jac = np.asarray(jac, np.float64).reshape(-1, int(np.prod(kernel_shape)))
    naive = w.reshape(n, -1) @ jac.T
    out_shape = contract(x1, jnp.zeros(kernel_shape)).shape[1:]
    bias64 = np.asarray(bias, np.float64)
    if group_axis == -1:  # z per output channel multiplies the bias too
        scaled_bias = z.reshape(n, *([1] * (len(out_shape) - 1)), -1) * bias64
    else:
        scaled_bias = bias64
    naive = naive + np.broadcast_to(scaled_bias, (n, *out_shape)).reshape(n, -1)

    for statistic in (lambda s: s.mean(0), lambda s: s.var(0, ddof=1)):
        est_lib, se_lib = _batch_means_se(lib, statistic)
        est_naive, se_naive = _batch_means_se(naive, statistic)
        # Two independent MC estimates: their difference has SE sqrt(se1² + se2²). The LRT's
        # +1e-8 variance floor is far below that.
        assert np.all(np.abs(est_lib - est_naive) <= K_SE * np.hypot(se_lib, se_naive) + 1e-6)


def _kl_by_hand(p, tau0) -> float:
    """The k = ½ closed forms (prior module docstring), float64."""
    log_2 = math.log(2.0)

    def kl_gamma_half(mu, log_var, theta):
        return (0.5 * math.log(theta) + np.exp(mu + 0.5 * np.exp(log_var)) / theta
                - 0.5 * (mu + log_var + 1.0 + log_2))

    def kl_invgamma_half_one(mu, log_var):
        return np.exp(0.5 * np.exp(log_var) - mu) - 0.5 * (-mu + log_var + 1.0 + log_2)

    total = kl_gamma_half(p["sa_mu"], p["sa_log_var"], tau0**2)
    total += kl_invgamma_half_one(p["sb_mu"], p["sb_log_var"])
    total += np.sum(kl_gamma_half(p["a_mu"], p["a_log_var"], 1.0))
    total += np.sum(kl_invgamma_half_one(p["b_mu"], p["b_log_var"]))
    total += np.sum(0.5 * (-p["w_log_var"] + np.exp(p["w_log_var"]) + p["w_mean"] ** 2 - 1.0))
    return float(total)


@pytest.mark.parametrize("layer", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("perturbed", [False, True], ids=["init", "perturbed"])
def test_layer_kl_equals_sum_by_hand(layer, perturbed):
    kernel_shape, group_axis, _, _ = layer
    if perturbed:
        q = _perturbed_posterior(kernel_shape, group_axis, seed=11)
    else:
        q = GroupLogNormal(kernel_shape, group_axis=group_axis, rngs=nnx.Rngs(params=11),
                           tau0=TAU0)
    value = _f32(kl_divergence(q, GroupHorseshoe(tau0=TAU0)))
    # float32: a sum of ≤ 100 terms of ≤ 15 nats each; 1e-5 relative + 1e-3 absolute.
    assert value == pytest.approx(_kl_by_hand(_params(q), TAU0), rel=1e-5, abs=1e-3)


def test_kl_gradient_finite_at_tiny_tau0():
    """τ0² = 1e-10 in float32: value and gradient of the KL stay finite and O(1)."""
    q = GroupLogNormal((20, 5), group_axis=-2, rngs=nnx.Rngs(params=0), tau0=TAU0)
    graphdef, state = nnx.split(q)

    def kl(state):
        return kl_divergence(nnx.merge(graphdef, state), GroupHorseshoe(tau0=TAU0))

    value, grads = jax.value_and_grad(kl)(state)
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(_f32(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    # ∂KL/∂μ_sa = −½ + E[s_a]/τ0² ≈ ½ at init (μ_sa = log τ0², σ² = e^−9).
    assert _f32(grads["sa_mu"][...]) == pytest.approx(0.5, abs=1e-3)


def test_log_expm1_is_stable():
    v = jnp.array([1e-7, 1e-3, 0.5, 1.0, 2.0, 50.0, 200.0], jnp.float32)
    expected = np.array([math.log(math.expm1(float(x))) if x < 100 else float(x) for x in v])
    np.testing.assert_allclose(np.asarray(log_expm1(v)), expected, rtol=1e-6)
    grads = jax.grad(lambda x: jnp.sum(log_expm1(x)))(v)
    assert np.all(np.isfinite(np.asarray(grads)))


# --- 4. Initialisation -----------------------------------------------------------------------


@pytest.mark.parametrize("layer", [((300, 100), -2), ((5, 5, 20, 50), -1)], ids=["dense", "conv"])
def test_init_starts_at_z_one(layer, key):
    kernel_shape, group_axis = layer
    q = GroupLogNormal(kernel_shape, group_axis=group_axis, rngs=nnx.Rngs(params=0), tau0=TAU0)
    # m_g = ½(μ_a + μ_b) with two N(0, 0.01²) jitters: sd 0.01/√2 ≈ 0.0071; v/2 ≈ 6e-5. Over
    # ≤ 300 groups the largest |m| is below 5 sd = 0.035 (probability of a miss < 2e-4).
    ez = np.asarray(q.z_mean())
    assert np.all(np.abs(ez - 1.0) < 0.04), np.abs(ez - 1.0).max()
    assert _f32(q.sa_mu[...]) == pytest.approx(LOG_TAU0_SQ, abs=1e-5)
    assert _f32(q.sb_mu[...]) == pytest.approx(-LOG_TAU0_SQ, abs=1e-5)
    # log α = log(expm1(e^−9 (1 ± small))) ≈ −9: every group kept at any threshold > −8.
    assert np.all(np.abs(np.asarray(q.log_alpha()) + 9.0) < 0.05)
    z = np.asarray(q.sample_z(key(), 64))
    assert np.all(np.abs(z - 1.0) < 0.1)  # σ(log z) = e^−4.5 ≈ 0.011 on top of the jitter


# --- 5. The method config --------------------------------------------------------------------


def _factory(compose, *overrides):
    cfg = compose(["method=bc_ghs", *overrides])
    return cfg, bnn.from_config(OmegaConf.to_container(cfg.method, resolve=True))


def test_config_builds_lenet300(compose):
    # The dropout rate of z is pruned (the published recipe's statistic), so that noisy groups
    # below are the pruned ones; the default's shrinkage statistic: tests/test_ghs_statistic.py.
    # With the default local scales those groups' posterior mean overflows to inf: the pruned
    # view must still be finite (removed weights exactly 0, not inf * 0).
    cfg, factory = _factory(compose, "method.posterior_init.prune_statistic=z_dropout")
    assert cfg.method.name == "bc_ghs"
    assert factory.posterior == "group_lognormal" and factory.prior == "group_horseshoe"
    model = LeNet300(factory, rngs=nnx.Rngs(params=0, noise=1))
    factory.check_layer_names(LeNet300.layer_names)
    for name in LeNet300.layer_names:
        layer = getattr(model, name)
        assert isinstance(layer.posterior, GroupLogNormal)
        assert layer.prior == GroupHorseshoe(tau0=1e-5)
        assert layer.posterior.tau0 == 1e-5  # the interpolation carried the prior's τ0
        assert np.isfinite(_f32(layer.kl()))
    assert model.fc1.posterior.max_log_var == pytest.approx(math.log(0.04))  # posterior_per_layer

    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    train = nnx.view(model, deterministic=False, pruned=False)
    logits = train(x, rngs=nnx.Rngs(noise=2))
    assert logits.shape == (4, 10) and np.all(np.isfinite(np.asarray(logits)))
    mean_logits = nnx.view(model, deterministic=True, pruned=False)(x)
    pruned_logits = nnx.view(model, deterministic=True, pruned=True)(x)
    # At init every log α ≈ −9 < 0: nothing is pruned.
    np.testing.assert_array_equal(np.asarray(pruned_logits), np.asarray(mean_logits))

    # Make 40 input units of fc2 noisy (v ≥ 5, log α ≈ 5 ≥ threshold 0): the pruned view drops
    # exactly those rows of fc2's kernel.
    model.fc2.posterior.b_log_var[:40] = jnp.log(20.0)
    mask = np.asarray(model.fc2.keep_mask()).reshape(-1)
    assert mask[:40].sum() == 0 and mask[40:].sum() == 260
    pruned_logits = nnx.view(model, deterministic=True, pruned=True)(x)
    assert np.all(np.isfinite(np.asarray(pruned_logits)))
    assert not np.allclose(np.asarray(pruned_logits), np.asarray(mean_logits))


def test_config_tau0_written_once(compose):
    _, factory = _factory(compose, "method.prior.tau0=1e-3")
    assert factory.prior_kwargs["tau0"] == 1e-3
    assert factory.posterior_kwargs["tau0"] == 1e-3
