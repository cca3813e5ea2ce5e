r"""KL(N(μ, σ²) || N(0, s²)) of the Gaussian prior against scipy quadrature and Monte Carlo.

The library's closed form (``kl_normal_zero_mean``) is checked against two independent
estimates: the integral ∫ q(w) log(q(w)/p(w)) dw by ``scipy.integrate.quad`` with scipy's own
normal log-densities, and the Monte Carlo mean of log q(w) − log p(w) over samples of q.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from flax import nnx

from bayescomp.posteriors import FactorizedGaussian
from bayescomp.priors import Gaussian, kl_divergence
from bayescomp.priors.gaussian import kl_normal_zero_mean

# (μ, σ, s): near the prior, wide and narrow posteriors, a far-off mean, a tiny prior scale.
CASES = [
    (0.0, 1.0, 1.0),
    (0.3, 0.5, 1.0),
    (-1.5, 0.1, 1.0),
    (2.0, 2.0, 0.5),
    (0.01, 0.003, 0.1),
    (-0.7, 1.3, 3.0),
]
IDS = [f"mu={m:g},sigma={s:g},s={p:g}" for m, s, p in CASES]


def _kl_quad(mu: float, sigma: float, s: float) -> float:
    q, p = scipy.stats.norm(mu, sigma), scipy.stats.norm(0.0, s)

    def integrand(w):
        return q.pdf(w) * (q.logpdf(w) - p.logpdf(w))

    # ±30σ around the mean holds all of q's mass to double precision.
    value, abserr = scipy.integrate.quad(integrand, mu - 30 * sigma, mu + 30 * sigma,
                                         points=[mu], limit=200, epsabs=1e-13, epsrel=1e-12)
    assert abserr < 1e-9
    return value


def _library_kl(mu: float, sigma: float, s: float) -> float:
    log_var = jnp.array([2.0 * math.log(sigma)], jnp.float32)
    return float(kl_normal_zero_mean(jnp.array([mu], jnp.float32), log_var, s))


@pytest.mark.parametrize("mu, sigma, s", CASES, ids=IDS)
def test_closed_form_matches_quadrature(mu, sigma, s):
    # The library works in float32: relative rounding ~1e-7 on each of its terms, whose sizes
    # are at most |log(s/σ)| + (σ² + μ²)/(2s²) ≲ 10 here, so 1e-5 absolute covers it; quad's
    # error is < 1e-9 (asserted above).
    assert _library_kl(mu, sigma, s) == pytest.approx(_kl_quad(mu, sigma, s), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("mu, sigma, s", CASES, ids=IDS)
def test_closed_form_matches_monte_carlo(mu, sigma, s):
    n = 100_000
    rng = np.random.default_rng(1234)
    w = rng.normal(mu, sigma, n)
    log_ratio = scipy.stats.norm(mu, sigma).logpdf(w) - scipy.stats.norm(0.0, s).logpdf(w)
    estimate = log_ratio.mean()
    standard_error = log_ratio.std(ddof=1) / math.sqrt(n)
    # 5 standard errors: a false failure has probability ~6e-7 per case (the MC mean is
    # Gaussian to a good approximation at n = 1e5). The 1e-6 floor covers the case q == p, where
    # the log ratio is identically 0; float32 rounding of the library (≤ 1e-5) is far below 5 SE
    # in the other cases.
    assert abs(_library_kl(mu, sigma, s) - estimate) <= 5 * standard_error + 1e-5


def test_kl_is_zero_only_at_the_prior():
    assert _library_kl(0.0, 2.0, 2.0) == pytest.approx(0.0, abs=1e-6)
    assert _library_kl(1e-3, 2.0, 2.0) > 0.0


@pytest.mark.parametrize("std", [1.0, 0.5], ids=["std=1", "std=0.5"])
def test_kl_divergence_through_the_registry(std):
    # kl_divergence(FactorizedGaussian, Gaussian) sums the per-weight KL at the posterior's own
    # (θ, log σ²) — not at the α-clipped forward variance — so pick entries whose log α lies
    # outside [-8, 8] to make sure no clipping sneaks in.
    q = FactorizedGaussian((3, 2), rngs=nnx.Rngs(params=0))
    theta = np.array([[0.5, -1.0], [0.01, 2.0], [-0.3, 0.0]], np.float32)
    log_var = np.array([[-2.0, 0.5], [1.0, -30.0], [-1.0, -4.0]], np.float32)
    q.theta[...] = jnp.asarray(theta)
    q.log_sigma2[...] = jnp.asarray(log_var)
    want = sum(_kl_quad(float(m), math.exp(0.5 * float(lv)), std)
               for m, lv in zip(theta.ravel(), log_var.ravel()) if lv > -20)
    # The log σ² = -30 entry (σ = 3e-7) is too narrow for quadrature; use the closed form in
    # float64 for it: log(s/σ) + (σ² + μ²)/(2s²) − ½.
    want += math.log(std) + 15.0 + (math.exp(-30.0) + 4.0) / (2 * std * std) - 0.5
    got = float(kl_divergence(q, Gaussian(std=std)))
    # float32 sum of six terms of size ≤ 25 nats: ~1e-5 relative.
    assert got == pytest.approx(want, rel=2e-5)
