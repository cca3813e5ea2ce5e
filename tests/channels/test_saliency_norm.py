r"""VCNN's saliency BatchNorm (:mod:`bayescomp.nn.saliency_norm`).

References: our plain :class:`~bayescomp.nn.norm.BatchNorm` (at σ → 0 and in the evaluation view
the layer is a BatchNorm with scale μ and shift μβ̃, statistics and running update included),
distrax's Normal KL (float32 rounding: 1e-5 relative to Σ|terms|, plus 1e-5 nats), and the
saliency samples' mean and variance against μ and σ² within 5 standard errors (a two-sided 5σ miss
has probability 6e-7; the seed is fixed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import objectives
from bayescomp.models.graph import batch_norms
from bayescomp.nn.norm import BatchNorm, NormBias, NormScale
from bayescomp.nn.saliency_norm import SaliencyBatchNorm, SaliencyLogVar, SaliencyMean
from bayescomp.priors.gaussian import Gaussian
from bayescomp.priors.tied_gaussian import TiedGaussian

K_SE = 5.0
MU = np.asarray([1.3, -0.4, 0.02, 2.0], np.float32)
BETA_TILDE = np.asarray([0.5, -1.0, 3.0, 0.0], np.float32)


def _pair(log_var=-80.0):
    """A saliency BatchNorm with σ = e^{log_var/2} and the plain BatchNorm (scale μ, shift μβ̃)
    it should equal."""
    saliency = SaliencyBatchNorm(4, init_log_var=log_var)
    saliency.saliency_mean[...] = jnp.asarray(MU)
    saliency.bias[...] = jnp.asarray(BETA_TILDE)
    plain = BatchNorm(4)
    plain.scale[...] = jnp.asarray(MU)
    plain.bias[...] = jnp.asarray(MU * BETA_TILDE)
    return saliency, plain


def _x(seed=0, shape=(8, 5, 5, 4)):
    return jnp.asarray(np.random.default_rng(seed).normal(1.0, 2.0, shape), jnp.float32)


def test_vanishing_variance_equals_a_plain_batch_norm():
    saliency, plain = _pair()
    for seed in range(2):  # two batch-statistics steps: outputs and running averages
        x = _x(seed)
        got = np.asarray(saliency(x, rngs=nnx.Rngs(noise=seed)))
        want = np.asarray(plain(x))
        # γ·(x̂ + β̃) vs x̂·γ + γβ̃: float32 reassociation, a few ulp of |y| < 20.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # The statistics code is BatchNorm's own: the running averages are bit-identical.
        np.testing.assert_array_equal(np.asarray(saliency.mean[...]), np.asarray(plain.mean[...]))
        np.testing.assert_array_equal(np.asarray(saliency.var[...]), np.asarray(plain.var[...]))
    # Evaluation view (posterior mean, running averages): equal whatever σ is.
    saliency.saliency_log_var[...] = jnp.full((4,), 0.5)
    x = _x(2)
    evaluation = nnx.view(saliency, deterministic=True, pruned=True, use_running_average=True,
                          raise_if_not_found=False)
    want = np.asarray(nnx.view(plain, use_running_average=True)(x))
    np.testing.assert_allclose(np.asarray(evaluation(x)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(saliency.as_batch_norm()(x)), want, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(np.asarray(saliency.mean[...]), np.asarray(plain.mean[...]))


def test_statistics_update_inside_jit_as_in_the_training_step():
    saliency, plain = _pair()
    graphdef, params, stats = nnx.split(saliency, nnx.Param, nnx.BatchStat)

    @jax.jit
    def forward(params, stats, x, key):
        stats = jax.tree.map(lambda v: v, stats)  # fresh Variables in this trace (step.py)
        module = nnx.merge(graphdef, params, stats)
        return module(x, rngs=nnx.Rngs(noise=key)), nnx.state(module, nnx.BatchStat)

    x = _x(3)
    _, new_stats = forward(params, stats, x, jax.random.key(0))
    plain(x)
    np.testing.assert_allclose(np.asarray(new_stats["mean"][...]), np.asarray(plain.mean[...]),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new_stats["var"][...]), np.asarray(plain.var[...]),
                               rtol=1e-6)


def test_saliency_samples_have_the_posterior_moments():
    n = 50_000
    log_var = np.asarray([-2.0, -4.0, 0.0, -1.0], np.float32)
    saliency = SaliencyBatchNorm(4, use_running_average=True)
    saliency.saliency_mean[...] = jnp.asarray(MU)
    saliency.saliency_log_var[...] = jnp.asarray(log_var)
    # Running mean 0, variance 1, β̃ = 0: the output is γ·x/√(1 + ε), one γ per example.
    y = np.asarray(saliency(jnp.ones((n, 4)), rngs=nnx.Rngs(noise=0)), np.float64)
    gamma = y * np.sqrt(1.0 + saliency.epsilon)
    sigma2 = np.exp(log_var.astype(np.float64))
    assert np.all(np.abs(gamma.mean(0) - MU) <= K_SE * np.sqrt(sigma2 / n) + 1e-6)
    # Var of a Gaussian sample variance: 2σ⁴/(n − 1).
    assert np.all(np.abs(gamma.var(0, ddof=1) - sigma2) <= K_SE * sigma2 * np.sqrt(2 / (n - 1)))
    with pytest.raises(ValueError, match="rngs"):
        saliency(jnp.ones((2, 4)))


@pytest.mark.parametrize("prior", [TiedGaussian(), Gaussian(std=0.3)], ids=["tied", "s=0.3"])
def test_kl_matches_distrax_and_pushes_saliencies_to_zero(prior):
    distrax = pytest.importorskip("distrax")
    log_var = np.asarray([-3.0, -1.0, 0.5, -6.0], np.float32)
    saliency = SaliencyBatchNorm(4, prior=prior)
    saliency.saliency_mean[...] = jnp.asarray(MU)
    saliency.saliency_log_var[...] = jnp.asarray(log_var)
    sd = np.exp(0.5 * log_var)
    prior_sd = sd if isinstance(prior, TiedGaussian) else prior.std
    terms = np.asarray(distrax.Normal(MU, sd).kl_divergence(distrax.Normal(0.0, prior_sd)))
    got = float(saliency.kl())
    assert abs(got - terms.sum()) <= 1e-5 * np.abs(terms).sum() + 1e-5
    assert float(objectives.total_kl(saliency)) == pytest.approx(got)
    # Gradient descent on the KL shrinks |μ| (the third-party sign would grow it).
    grads = nnx.grad(lambda m: m.kl())(saliency)
    assert np.all(np.sign(np.asarray(grads["saliency_mean"][...])) == np.sign(MU))


def test_variable_types_and_the_model_graph_sees_a_batch_norm():
    saliency = SaliencyBatchNorm(3)
    types = {type(v) for _, v in nnx.to_flat_state(nnx.state(saliency))}
    # BatchNorm's own scale is gone: γ is the saliency.
    assert types == {SaliencyMean, SaliencyLogVar, NormBias, nnx.BatchStat}
    assert NormScale not in types
    assert list(batch_norms(saliency)) == [""]


def test_load_batch_norm_keeps_the_evaluation_network():
    trained = BatchNorm(4, use_running_average=True)
    trained.scale[...] = jnp.asarray([0.7, -1.2, 0.0, 2.0])
    trained.bias[...] = jnp.asarray([0.1, 0.3, -0.5, 1.0])
    trained.mean[...] = jnp.asarray([0.2, -0.1, 0.0, 1.0])
    trained.var[...] = jnp.asarray([1.5, 0.5, 2.0, 0.8])
    saliency = SaliencyBatchNorm(4, use_running_average=True, deterministic=True)
    saliency.load_batch_norm(trained)
    x = _x(4)
    want = np.array(trained(x))
    want[..., 2] = 0.0  # γ = 0: the plain channel is the constant β, the saliency one is 0
    np.testing.assert_allclose(np.asarray(saliency(x)), want, rtol=1e-5, atol=1e-5)
