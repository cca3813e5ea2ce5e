r"""The Dirichlet importance switch (:mod:`bayescomp.nn.switch`).

Gradients through the reparameterised samples are checked against the gradient of the exact
expectation, E_q[f(s)] in closed form for

* f(s) = Σ w_j s_j:  E = Σ w_j φ_j/Φ,
* f(s) = Σ w_j s_j² + Σ c_j log s_j:  E = Σ w_j φ_j(φ_j+1)/(Φ(Φ+1)) + Σ c_j (ψ(φ_j) − ψ(Φ)),

(Dirichlet moments, e.g. Bishop 2006, Eqs. B.17–B.21) differentiated by central finite
differences in float64 (step 1e-5: truncation O(h²) ≈ 1e-10, rounding O(ε/h) ≈ 1e-11). The sample
gradient is the mean of R independent batch gradients (B draws each, one per example, through
the module); tolerance 5 standard errors of that mean (estimated from the R batch gradients) plus
1e-4 relative for float32. Sample moments are checked the same way against the Dirichlet mean and
variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import digamma

from bayescomp import objectives, step
from bayescomp.errors import ConfigError
from bayescomp.nn.norm import BatchNorm, NormBias, NormScale
from bayescomp.nn.switch import DirichletSwitch, SwitchLogit
from bayescomp.priors.dirichlet import Dirichlet, kl_dirichlet

K_SE = 5.0
THETA = np.asarray([0.3, 1.0, 2.0, 2.8])  # φ = softplus(θ) ≈ 0.85 … 2.86
W = np.asarray([1.0, -2.0, 0.5, 1.5])
C_LOG = np.asarray([0.2, 0.1, -0.3, 0.05])


def _softplus(x):
    return np.logaddexp(0.0, x)


def _expected_linear(theta):
    phi = _softplus(theta)
    return float(np.sum(W * phi / phi.sum()))


def _expected_nonlinear(theta):
    phi = _softplus(theta)
    total = phi.sum()
    return float(np.sum(W * phi * (phi + 1) / (total * (total + 1)))
                 + np.sum(C_LOG * (digamma(phi) - digamma(total))))


def _finite_difference_gradient(fn, theta, h=1e-5):
    grad = np.zeros_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        grad[j] = (fn(theta + e) - fn(theta - e)) / (2 * h)
    return grad


@pytest.fixture(scope="module")
def draws():
    """One compiled pass through the module: R = 40 batches of B = 1000 identical examples
    (2×2×C maps of ones). Returns the R batch gradients w.r.t. θ of the batch means of the linear
    and the non-linear f, ``(R, 2, C)``, and the module's outputs divided by its gain C,
    ``(R·B, 2, 2, C)``."""
    repeats, batch, c = 40, 1000, THETA.size
    switch = DirichletSwitch(c, init=0.0)
    switch.logit[...] = jnp.asarray(THETA, jnp.float32)
    graphdef, params, rest = nnx.split(switch, SwitchLogit, ...)
    x = jnp.ones((batch, 2, 2, c), jnp.float32)
    w, c_log = jnp.asarray(W, jnp.float32), jnp.asarray(C_LOG, jnp.float32)

    def sample(p, key):
        return nnx.merge(graphdef, p, rest)(x, rngs=nnx.Rngs(noise=key)) / c

    def batch_means(p, key):
        s = sample(p, key)[:, 0, 0, :]
        return jnp.stack([jnp.mean(s @ w),
                          jnp.mean(jnp.square(s) @ w + jnp.log(s) @ c_log)])

    @jax.jit
    def run(p, keys):
        jac = jax.vmap(jax.jacrev(batch_means), in_axes=(None, 0))(p, keys)
        return jac["logit"][...], jax.vmap(sample, in_axes=(None, 0))(p, keys)

    grads, s = run(params, jax.random.split(jax.random.key(3), repeats))
    return np.asarray(grads, np.float64), np.asarray(s, np.float64).reshape(-1, 2, 2, c)


def _assert_gradient(grads, want):
    mean = grads.mean(0)
    standard_error = grads.std(0, ddof=1) / np.sqrt(grads.shape[0])
    tolerance = K_SE * standard_error + 1e-4 * np.abs(want)
    assert np.all(np.abs(mean - want) <= tolerance), (mean, want, tolerance)


def test_sample_gradient_of_a_linear_expectation(draws):
    _assert_gradient(draws[0][:, 0], _finite_difference_gradient(_expected_linear, THETA))


def test_sample_gradient_of_a_nonlinear_expectation(draws):
    _assert_gradient(draws[0][:, 1], _finite_difference_gradient(_expected_nonlinear, THETA))


def test_sample_moments_are_the_dirichlet_moments(draws):
    s = draws[1][:, 0, 0, :]
    n = s.shape[0]
    phi = _softplus(THETA)
    total = phi.sum()
    mean, var = phi / total, phi * (total - phi) / (total**2 * (total + 1))
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.abs(s.mean(0) - mean) <= K_SE * np.sqrt(var / n))
    centred = s - s.mean(0)
    var_se = np.sqrt((np.mean(centred**4, 0) - np.var(s, 0)**2) / n)
    assert np.all(np.abs(s.var(0, ddof=1) - var) <= K_SE * var_se)


def test_every_example_draws_its_own_switch(draws):
    # Identical inputs (a batch repeated S times, the proposed S-sample average) get
    # independent draws, one per example and channel, shared by the example's positions.
    s = draws[1]
    assert np.all(s == s[:, :1, :1, :])
    # Distinct switch vectors (single float32 entries may collide by chance).
    assert len(np.unique(s[:, 0, 0, :], axis=0)) == s.shape[0]


def test_kl_through_the_module_is_on_the_concentrations():
    distrax = pytest.importorskip("distrax")
    switch = DirichletSwitch(5, prior=Dirichlet(0.05), init=-1.0)
    switch.logit[...] = jnp.asarray([-1.0, 0.0, 0.5, 1.0, 3.0])
    phi = jax.nn.softplus(switch.logit[...])
    want = distrax.Dirichlet(phi).kl_divergence(distrax.Dirichlet(jnp.full((5,), 0.05)))
    np.testing.assert_allclose(float(switch.kl()), float(want), rtol=1e-5)
    # Not the KL of the normalised mean (the reference's point-version fault).
    assert abs(float(switch.kl()) - float(kl_dirichlet(phi / phi.sum(), 0.05))) > 1.0
    assert float(objectives.total_kl(switch)) == pytest.approx(float(switch.kl()))


def test_uniform_switch_leaves_a_pretrained_network_unchanged():
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 6)).astype(np.float32)
    for mode in ("integral", "point"):
        switch = DirichletSwitch(6, init=0.05, mode=mode)
        np.testing.assert_allclose(np.asarray(nnx.view(switch, deterministic=True)(x)),
                                   x, rtol=1e-6)
    # The reference's scale shrinks every channel by 1/C.
    reference = DirichletSwitch(6, init=0.05, rescale=False, deterministic=True)
    np.testing.assert_allclose(np.asarray(reference(x)), x / 6, rtol=1e-6)


def test_views_and_modes():
    switch = DirichletSwitch(3, init=0.0)
    switch.logit[...] = jnp.asarray([0.0, 1.0, 2.0])
    x = jnp.ones((2, 3))
    mean = np.asarray(3 * switch.mean())
    np.testing.assert_allclose(np.asarray(nnx.view(switch, deterministic=True)(x)),
                               np.broadcast_to(mean, (2, 3)), rtol=1e-6)
    point = DirichletSwitch(3, init=0.0, mode="point")
    point.logit[...] = switch.logit[...]
    np.testing.assert_allclose(np.asarray(point(x)), np.broadcast_to(mean, (2, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="rngs"):
        switch(x)
    with pytest.raises(ConfigError, match="mode"):
        DirichletSwitch(3, mode="sampled")


class _Block(nnx.Module):
    def __init__(self):
        self.norm = BatchNorm(4)
        self.switch = DirichletSwitch(4)

    def __call__(self, x, *, rngs=None):
        return self.switch(self.norm(x), rngs=rngs)


def test_a_phase_can_train_the_switches_alone_by_type():
    block = _Block()
    _, trainable, batch_stats, frozen = step.StateSplit(trains=SwitchLogit).split(block)
    assert {type(v) for _, v in nnx.to_flat_state(trainable)} == {SwitchLogit}
    assert {type(v) for _, v in nnx.to_flat_state(batch_stats)} == {nnx.BatchStat}
    assert {type(v) for _, v in nnx.to_flat_state(frozen)} == {NormScale, NormBias}
