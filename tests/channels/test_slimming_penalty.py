r"""Network slimming's L1 penalty as a Laplace prior (:mod:`bayescomp.priors.laplace`,
:mod:`bayescomp.nn.slimming_norm`).

The scaling is the point: with ``Laplace.matching_l1(s, N)`` the one objective
``NLL_mean + KL/N`` (β = 1) must add exactly the reference's ``s·sign(γ)`` to the gradient of
the mean cross-entropy on every batch. Tolerance: the gradients are float32; the penalty's part
is recovered as a difference of two gradients of size ≈1e-2, so a few ulp of those (1e-8) on top
of 1e-4 relative to s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import objectives
from bayescomp.errors import ConfigError
from bayescomp.nn.norm import BatchNorm, NormScale
from bayescomp.nn.slimming_norm import SlimmingBatchNorm
from bayescomp.priors.laplace import Laplace, laplace_penalty


class _Net(nnx.Module):
    """dense 6→5 → slimming BatchNorm → ReLU → dense 5→3, point weights."""

    def __init__(self, prior: Laplace):
        rngs = nnx.Rngs(0)
        self.fc1 = nnx.Linear(6, 5, rngs=rngs)
        self.bn = SlimmingBatchNorm(5, prior=prior)
        self.fc2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        return self.fc2(jax.nn.relu(self.bn(self.fc1(x), rngs=rngs)))


@pytest.mark.parametrize("s", [1e-4, 1e-5])
def test_objective_gradient_adds_s_sign_gamma_per_batch(s):
    n_train = 50_000
    model = _Net(Laplace.matching_l1(s, n_train))
    model.bn.scale[...] = jnp.asarray([0.5, -0.3, 0.0, 0.2, 1e-3])  # a zero: sign 0, as torch
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 16))
    graphdef, scale, rest = nnx.split(model, NormScale, ...)

    def loss(scale, beta):  # the step's objective, NLL_mean + β·KL/N
        m = nnx.merge(graphdef, scale, jax.tree.map(lambda v: v, rest))
        return objectives.mean_nll(m(x), y) + beta * objectives.total_kl(m) / n_train

    grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(scale, jnp.asarray([1.0, 0.0]))
    total, nll_only = (np.asarray(g, np.float64) for g in grads["bn"]["scale"][...])
    gamma = np.asarray(model.bn.scale[...])
    np.testing.assert_allclose(total - nll_only, s * np.sign(gamma), rtol=1e-4, atol=1e-8)
    # The value logged as KL is the penalty itself: N·s·Σ|γ|.
    assert float(model.bn.kl()) == pytest.approx(n_train * s * np.abs(gamma).sum(), rel=1e-5)


def test_penalty_is_minus_log_laplace_up_to_its_normaliser():
    distrax = pytest.importorskip("distrax")
    b = 0.2
    x = jnp.asarray([0.5, -1.5, 0.25, 2.0])

    def neg_log(v):
        return -jnp.sum(distrax.Laplace(0.0, b).log_prob(v))

    np.testing.assert_allclose(float(neg_log(x) - laplace_penalty(x, b)),
                               x.size * np.log(2 * b), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda v: laplace_penalty(v, b))(x)),
                               np.asarray(jax.grad(neg_log)(x)), rtol=1e-6)


def test_scales_start_at_one_half_and_the_rest_is_batch_norm():
    norm = SlimmingBatchNorm(3, prior=Laplace(0.1))
    plain = BatchNorm(3)
    plain.scale[...] = jnp.full((3,), 0.5)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2, 2, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(norm(x)), np.asarray(plain(x)))
    np.testing.assert_array_equal(np.asarray(norm.var[...]), np.asarray(plain.var[...]))


def test_bad_prior_settings_are_refused():
    with pytest.raises(ConfigError):
        Laplace(0.0)
    with pytest.raises(ConfigError):
        Laplace.matching_l1(1e-4, 0)
