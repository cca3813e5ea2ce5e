"""BC-GHS options of issue 23: the pruned statistic and the step size of the scale parameters.

* ``prune_statistic``: the z-dropout rate is bounded by the prior (a group whose local factors
  sit at the log-normals closest to Gamma(½, 1) and IG(½, 1) has log α = log(e − 1)), while the
  weight-dropout rate equals Σ Var[w] / Σ E[w]² computed from the posterior's own moments.
* ``scale_lr_multiplier``: storing the scale parameters as θ / c changes nothing about the model
  (KL, moments, samples) and makes one Adam step move θ by c times as much.
* The published recipe (``conf/method/bc_ghs.yaml`` defaults) is the old code path.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy.optimize import minimize

import bayescomp.nn  # noqa: F401  (import order: see tests/priors/test_horseshoe.py)
from bayescomp.posteriors.group_lognormal import GroupLogNormal, log_expm1
from bayescomp.priors import kl_divergence
from bayescomp.priors.horseshoe import (
    GroupHorseshoe,
    kl_lognormal_gamma,
    kl_lognormal_inverse_gamma,
)

SCALE_PARAMS = ("sa_mu", "sa_log_var", "sb_mu", "sb_log_var", "a_mu", "a_log_var", "b_mu",
                "b_log_var")
LAYERS = [((12, 7), -2), ((3, 3, 4, 6), -1)]


def _posterior(kernel_shape, group_axis, **kwargs) -> GroupLogNormal:
    return GroupLogNormal(kernel_shape, group_axis=group_axis, rngs=nnx.Rngs(params=0), **kwargs)


def _moved(q: GroupLogNormal, seed: int = 1) -> GroupLogNormal:
    """Move every parameter away from its init (θ values, whatever c is)."""
    rng = np.random.default_rng(seed)
    for name in SCALE_PARAMS:
        shape = np.shape(q.scale_param(name))
        q.set_scale_param(name, q.scale_param(name) + rng.normal(0.0, 0.5, shape))
    q.w_log_var[...] = jnp.asarray(rng.uniform(-4.0, -1.0, q.kernel_shape), jnp.float32)
    return q


def test_relaxed_group_z_dropout_is_bounded_at_log_e_minus_one():
    """The log-normal closest to Gamma(½, 1) (and to IG(½, 1)) has variance 2, so a fully
    relaxed group has v = ¼(σ²_sa + σ²_sb + 4) and log α = log(e − 1) ≈ 0.54 with exact global
    factors, whatever the size of z."""
    for kl in (lambda p: float(kl_lognormal_gamma(p[0], p[1], 0.5, 1.0)),
               lambda p: float(kl_lognormal_inverse_gamma(p[0], p[1], 0.5, 1.0))):
        best = minimize(kl, [0.0, 0.0], method="Nelder-Mead",
                        options={"xatol": 1e-7, "fatol": 1e-10})
        assert math.exp(best.x[1]) == pytest.approx(2.0, rel=1e-3)
    q = _posterior((10, 4), -2)
    for name in ("sa_log_var", "sb_log_var"):
        q.set_scale_param(name, -30.0)
    for name in ("a_log_var", "b_log_var"):
        q.set_scale_param(name, jnp.full((10,), math.log(2.0)))
    for shift in (-20.0, 0.0, 5.0):  # any size of z: the statistic does not see it
        q.set_scale_param("a_mu", jnp.full((10,), shift))
        np.testing.assert_allclose(np.asarray(q.z_log_alpha()), math.log(math.e - 1.0),
                                   rtol=1e-5)


@pytest.mark.parametrize("kernel_shape, group_axis", LAYERS)
def test_weight_dropout_is_the_groups_noise_to_signal_ratio(kernel_shape, group_axis):
    q = _moved(_posterior(kernel_shape, group_axis, prune_statistic="weight_dropout"))
    mean = np.asarray(q.mean(), np.float64)
    var = np.asarray(q.variance(), np.float64)
    axis = len(kernel_shape) + group_axis
    others = tuple(i for i in range(len(kernel_shape)) if i != axis)
    expected = np.log(var.sum(others) / (mean ** 2).sum(others))
    np.testing.assert_allclose(np.asarray(q.log_alpha()), expected, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(q.weight_log_alpha()), expected, rtol=2e-4,
                               atol=2e-4)
    # With exact W̃ it is the z-dropout rate.
    q.w_log_var[...] = jnp.full(kernel_shape, -60.0)
    np.testing.assert_allclose(np.asarray(q.weight_log_alpha()), np.asarray(q.z_log_alpha()),
                               rtol=1e-4, atol=1e-4)


def test_a_group_with_zero_means_has_infinite_weight_dropout():
    q = _posterior((6, 3), -2, prune_statistic="weight_dropout")
    q.w_mean[...] = q.w_mean[...].at[2].set(0.0)
    log_alpha = np.asarray(q.log_alpha())
    assert np.isposinf(log_alpha[2]) and np.isfinite(np.delete(log_alpha, 2)).all()


def test_published_default_is_the_z_dropout_rate():
    q = _moved(_posterior((8, 5), -2))
    np.testing.assert_array_equal(np.asarray(q.log_alpha()),
                                  np.asarray(log_expm1(q.log_z_variance())))


@pytest.mark.parametrize("kernel_shape, group_axis", LAYERS)
def test_scale_lr_multiplier_changes_no_distribution(kernel_shape, group_axis):
    """Same θ under c = 1 and c = 7: the same KL, moments and samples."""
    q1 = _moved(_posterior(kernel_shape, group_axis))
    q7 = _posterior(kernel_shape, group_axis, scale_lr_multiplier=7.0)
    for name in SCALE_PARAMS:
        q7.set_scale_param(name, q1.scale_param(name))
        np.testing.assert_allclose(np.asarray(getattr(q7, name)[...]) * 7.0,
                                   np.asarray(q1.scale_param(name)), rtol=1e-6, atol=1e-6)
    q7.w_log_var[...] = q1.w_log_var[...]
    prior = GroupHorseshoe(1e-5)
    assert float(kl_divergence(q7, prior)) == pytest.approx(float(kl_divergence(q1, prior)),
                                                            rel=1e-5)
    for method in ("log_z_mean", "log_z_variance", "z_mean", "log_alpha", "variance"):
        np.testing.assert_allclose(np.asarray(getattr(q7, method)()),
                                   np.asarray(getattr(q1, method)()), rtol=1e-5, atol=1e-6)
    key = jax.random.key(3)
    np.testing.assert_allclose(np.asarray(q7.sample_z(key, 4)), np.asarray(q1.sample_z(key, 4)),
                               rtol=1e-5)


def test_scale_lr_multiplier_multiplies_the_adam_step():
    """One Adam step (lr 1e-3) on the KL moves each scale θ by c times what it moves at c = 1,
    and the weights by the same amount."""
    steps = {}
    for c in (1.0, 10.0):
        q = _posterior((8, 5), -2, scale_lr_multiplier=c)
        before = {name: np.asarray(q.scale_param(name)) for name in SCALE_PARAMS}
        w_before = np.asarray(q.w_mean[...])
        graph, params = nnx.split(q, nnx.Param)
        prior = GroupHorseshoe(1e-5)

        def loss(p, graph=graph, prior=prior):
            return kl_divergence(nnx.merge(graph, p), prior)

        optimizer = optax.adam(1e-3)
        grads = jax.grad(loss)(params)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        nnx.update(q, optax.apply_updates(params, updates))
        steps[c] = ({name: np.asarray(q.scale_param(name)) - before[name]
                     for name in SCALE_PARAMS}, np.asarray(q.w_mean[...]) - w_before)
    for name in SCALE_PARAMS:
        np.testing.assert_allclose(steps[10.0][0][name], 10.0 * steps[1.0][0][name], rtol=1e-3,
                                   atol=1e-7)
        assert np.abs(steps[1.0][0][name]).max() == pytest.approx(1e-3, rel=1e-2)
    np.testing.assert_allclose(steps[10.0][1], steps[1.0][1], rtol=1e-5, atol=1e-9)


def test_shrinkage_statistic_is_the_log_odds_of_the_shrinkage_factor():
    """−2 E[log z] = log(κ / (1 − κ)) with κ = 1 / (1 + z²) at the median z = exp(E[log z])."""
    q = _moved(_posterior((9, 4), -2, prune_statistic="shrinkage"))
    median = np.exp(np.asarray(q.log_z_mean(), np.float64))
    kappa = 1.0 / (1.0 + median ** 2)
    np.testing.assert_allclose(np.asarray(q.log_alpha()), np.log(kappa / (1.0 - kappa)),
                               rtol=1e-5, atol=1e-5)


def test_local_scale_init_starts_at_the_same_z_with_s_at_tau0():
    """``scale_init: local`` moves the −log τ0² from s_b into every b_g: same z (so the same
    network at the start), log s = log τ0, and ½ μ + e^{σ²/2−μ} − e^{σ²/2} ≈ −log τ0 − 1 nats
    more KL(q(b) || IG(½, 1)) for each of the G groups, less the same once for s_b."""
    tau0 = 1e-5
    glob = _posterior((40, 6), -2, tau0=tau0)
    loc = _posterior((40, 6), -2, tau0=tau0, scale_init="local")
    np.testing.assert_allclose(np.asarray(loc.log_z_mean()), np.asarray(glob.log_z_mean()),
                               atol=2e-5)
    log_s = 0.5 * float(loc.scale_param("sa_mu") + loc.scale_param("sb_mu"))
    assert log_s == pytest.approx(math.log(tau0), abs=1e-4)
    prior = GroupHorseshoe(tau0)
    extra = float(kl_divergence(loc, prior)) - float(kl_divergence(glob, prior))
    assert extra == pytest.approx((40 - 1) * (-math.log(tau0) - 1.0), rel=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"prune_statistic": "snr"}, "prune_statistic must be one of"),
    ({"scale_init": "middle"}, "scale_init must be one of"),
    ({"scale_lr_multiplier": 0.0}, "scale_lr_multiplier must be a positive number"),
    ({"scale_lr_multiplier": float("inf")}, "scale_lr_multiplier must be a positive number"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _posterior((4, 3), -2, **kwargs)
