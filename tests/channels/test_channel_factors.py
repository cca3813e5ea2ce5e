r"""The per-channel factors of VCNN and network slimming, the factory hooks that place them, the
folding into a plain network, and the keep rules of the two procedures.

References: the identity (a saliency scale at σ → 0 and μ = 1, a slimming scale at 1), a plain
BatchNorm (a saliency BatchNorm at σ → 0, the ``norm`` hook of a method without
``method.norm``), central finite differences of the KL (step 1e-3 in float64 arithmetic on the
closed form: relative error ≲ 1e-6), and the evaluation view of the trained network (its folded
plain network equals it to float32 rounding: 1e-5 of logits of order 1).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import models
from bayescomp.errors import ConfigError
from bayescomp.models import LeNet5
from bayescomp.models.graph import batch_norms, channel_graph
from bayescomp.nn import LayerFactory, from_config
from bayescomp.nn.fold import fold_into, load_plain
from bayescomp.nn.norm import BatchNorm
from bayescomp.nn.saliency_norm import SaliencyBatchNorm, SaliencyLogVar, SaliencyMean
from bayescomp.nn.saliency_scale import SaliencyScale
from bayescomp.nn.slimming_norm import SlimmingBatchNorm
from bayescomp.nn.slimming_scale import ChannelScale, SlimmingScale
from bayescomp.priors.gaussian import Gaussian
from bayescomp.priors.laplace import Laplace
from bayescomp.procedures import channel_pruning as cp
from bayescomp.procedures import slimming, vcnn

VCNN = {"kind": "vcnn"}
SLIM = {"kind": "slimming", "penalty": 1e-4, "n_train": 512}


def _x(seed=0, shape=(4, 28, 28, 1)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ---------------------------------------------------------------------------------------------
# The modules


def test_saliency_scale_at_vanishing_variance_is_its_mean_and_at_one_the_identity():
    scale = SaliencyScale(3, init_log_var=-80.0)
    x = _x(1, (5, 2, 2, 3))
    np.testing.assert_array_equal(np.asarray(scale(x, rngs=nnx.Rngs(noise=0))), np.asarray(x))
    scale.saliency_mean[...] = jnp.asarray([0.5, -2.0, 0.0])
    want = np.asarray(x) * np.asarray([0.5, -2.0, 0.0])
    # σ = e^-40 ≈ 4e-18: the noise is below float32's resolution of |x| ~ 1, not of 0
    np.testing.assert_allclose(np.asarray(scale(x, rngs=nnx.Rngs(noise=1))), want, rtol=1e-6,
                               atol=1e-15)
    # The evaluation view is μ whatever σ is; sampling needs rngs.
    scale.saliency_log_var[...] = jnp.zeros(3)
    mean_view = nnx.view(scale, deterministic=True)
    np.testing.assert_allclose(np.asarray(mean_view(x)), want, rtol=1e-6)
    with pytest.raises(ValueError, match="rngs"):
        scale(x)
    types = {type(v) for _, v in nnx.to_flat_state(nnx.state(scale))}
    assert types == {SaliencyMean, SaliencyLogVar}


def test_saliency_samples_are_per_example():
    scale = SaliencyScale(2, init_log_var=0.0)
    y = np.asarray(scale(jnp.ones((64, 3, 3, 2)), rngs=nnx.Rngs(noise=0)))
    # one γ per example and channel, shared over the spatial positions
    assert np.all(y == y[:, :1, :1, :])
    assert np.unique(y[:, 0, 0, 0]).size == 64


@pytest.mark.parametrize("prior", [None, Gaussian(std=0.5)], ids=["tied", "gaussian"])
def test_kl_gradient_pushes_the_mean_to_zero(prior):
    """∂KL/∂μ has the sign of μ (descent shrinks |μ|), checked against central differences."""
    mu = np.asarray([1.2, -0.7, 0.05], np.float64)
    log_var = np.asarray([-2.0, -1.0, -4.0], np.float64)
    scale = SaliencyScale(3, prior=prior)
    scale.saliency_mean[...] = jnp.asarray(mu, jnp.float32)
    scale.saliency_log_var[...] = jnp.asarray(log_var, jnp.float32)
    grad = np.asarray(nnx.grad(lambda m: m.kl())(scale)["saliency_mean"][...], np.float64)
    assert np.all(np.sign(grad) == np.sign(mu))

    def kl(m):  # the closed form in float64
        var = np.exp(log_var)
        if prior is None:
            return np.sum(m * m / (2 * var))
        s2 = prior.std ** 2
        return np.sum(0.5 * (np.log(s2) - log_var) + (var + m * m) / (2 * s2) - 0.5)

    h = 1e-3
    numeric = np.asarray([(kl(mu + h * e) - kl(mu - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5)
    assert float(scale.kl()) == pytest.approx(kl(mu), rel=1e-5)


def test_slimming_scale_is_the_identity_at_one_and_its_penalty_is_l1():
    prior = Laplace.matching_l1(1e-4, 1000)
    scale = SlimmingScale(3, prior=prior)
    x = _x(2, (2, 3))
    np.testing.assert_array_equal(np.asarray(scale(x)), np.asarray(x))
    scale.scale[...] = jnp.asarray([0.5, -0.25, 0.0])
    assert float(scale.kl()) == pytest.approx(1000 * 1e-4 * 0.75, rel=1e-6)
    assert {type(v) for _, v in nnx.to_flat_state(nnx.state(scale))} == {ChannelScale}


# ---------------------------------------------------------------------------------------------
# The factory hooks


def test_methods_without_the_hooks_build_the_same_networks():
    """A method without ``norm``/``channel`` builds plain BatchNorms and no channel modules."""
    def resnet(method):  # abstract: only the module types matter here (and build fast)
        return nnx.eval_shape(lambda: models.get("resnet8")(
            from_config({"posterior": "delta", **method}), rngs=nnx.Rngs(0), widths=(4, 8, 8)))

    plain = resnet({})
    assert all(type(n) is BatchNorm for n in batch_norms(plain).values())
    assert {p for p, _ in nnx.to_flat_state(nnx.state(plain))} == {
        p for p, _ in nnx.to_flat_state(nnx.state(resnet({"channel": VCNN})))}
    # VCNN: saliencies on the channels it prunes; with groups=internal (the default) the
    # streams' BatchNorms (stem and each block's second) stay plain.
    saliency = resnet({"norm": VCNN})
    assert {p: type(n) for p, n in batch_norms(saliency).items()} == {
        p: SaliencyBatchNorm if p.endswith(".bn1") else BatchNorm
        for p in batch_norms(saliency)}
    everywhere = resnet({"norm": VCNN, "prune": {"groups": "all"}})
    assert all(type(n) is SaliencyBatchNorm for n in batch_norms(everywhere).values())
    assert all(type(n) is SlimmingBatchNorm for n in batch_norms(resnet({"norm": SLIM})).values())
    lenet = LeNet5(from_config({"posterior": "delta"}), rngs=nnx.Rngs(0))
    assert lenet.channel_modules() == {}
    for settings, cls in ((VCNN, SaliencyScale), (SLIM, SlimmingScale)):
        model = LeNet5(LayerFactory(channel_settings=settings), rngs=nnx.Rngs(0))
        assert {type(m) for m in model.channel_modules().values()} == {cls}
        # identity at initialisation: the plain LeNet-5 of the same seed
        view = nnx.view(model, deterministic=True, raise_if_not_found=False)
        np.testing.assert_allclose(np.asarray(view(_x())), np.asarray(lenet(_x())), rtol=1e-5,
                                   atol=1e-6)


def test_hook_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown method.norm.kind"):
        LayerFactory(norm_settings={"kind": "nope"}).norm("bn", 3)
    with pytest.raises(ConfigError, match="training-set size"):
        LayerFactory(norm_settings={"kind": "slimming"}).norm("bn", 3)
    with pytest.raises(ConfigError, match="tied_gaussian or gaussian"):
        LayerFactory(channel_settings={"kind": "vcnn", "prior": "laplace"}).channel("c", 3)
    norm = LayerFactory(norm_settings={"kind": "vcnn", "prior": "gaussian",
                                       "prior_std": 0.3}).norm("bn", 3)
    assert norm.prior == Gaussian(std=0.3)


# ---------------------------------------------------------------------------------------------
# Folding


def _randomise(model, seed=0):
    rng = np.random.default_rng(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        if isinstance(variable, SaliencyLogVar):
            continue
        value = rng.normal(0.0, 0.5, variable[...].shape)
        if path[-1] == "var":
            value = np.abs(value) + 0.5
        variable[...] = jnp.asarray(value, jnp.float32)
    return model


@pytest.mark.parametrize("settings", [VCNN, SLIM], ids=["vcnn", "slimming"])
def test_folded_plain_network_equals_the_evaluation_view(settings):
    lenet = _randomise(LeNet5(LayerFactory(channel_settings=settings), rngs=nnx.Rngs(0)))
    plain = fold_into(lenet, LeNet5(LayerFactory(), rngs=nnx.Rngs(1)))
    view = nnx.view(lenet, deterministic=True, raise_if_not_found=False)
    np.testing.assert_allclose(np.asarray(plain(_x())), np.asarray(view(_x())), rtol=1e-4,
                               atol=1e-5)
    resnet = models.get("resnet8")
    x = _x(3, (4, 32, 32, 3))
    source = _randomise(resnet(LayerFactory(norm_settings=settings), rngs=nnx.Rngs(0),
                               widths=(4, 8, 8)))
    plain = fold_into(source, resnet(LayerFactory(), rngs=nnx.Rngs(1), widths=(4, 8, 8)))
    view = nnx.view(source, deterministic=True, use_running_average=True,
                    raise_if_not_found=False)
    np.testing.assert_allclose(np.asarray(nnx.view(plain, use_running_average=True)(x)),
                               np.asarray(view(x)), rtol=1e-4, atol=1e-4)
    # and back: a plain network loaded into a saliency network gives the same evaluation view
    if settings is VCNN:
        again = load_plain(resnet(LayerFactory(norm_settings=VCNN), rngs=nnx.Rngs(2),
                                  widths=(4, 8, 8)), plain)
        view = nnx.view(again, deterministic=True, use_running_average=True,
                        raise_if_not_found=False)
        np.testing.assert_allclose(np.asarray(view(x)),
                                   np.asarray(nnx.view(plain, use_running_average=True)(x)),
                                   rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Which groups, which channels


def test_prunable_groups_internal_or_all():
    # Saliencies on the streams too (method.prune.groups=all), so that both modes find them.
    resnet = nnx.eval_shape(lambda: models.get("resnet8")(
        LayerFactory(norm_settings=VCNN, prune_streams=True), rngs=nnx.Rngs(0),
        widths=(4, 8, 8)))
    internal = cp.prunable_factors(resnet, vcnn.SALIENCY_TYPES, "internal")
    assert list(internal) == ["stage1.0.conv1", "stage2.0.conv1", "stage3.0.conv1"]
    everything = cp.prunable_factors(resnet, vcnn.SALIENCY_TYPES, "all")
    assert set(everything) == set(internal) | {"stage1", "stage2", "stage3"}
    assert set(everything["stage1"]) == {"stem_bn", "stage1.0.bn2"}
    lenet = LeNet5(LayerFactory(channel_settings=VCNN), rngs=nnx.Rngs(0))
    factors = cp.prunable_factors(lenet, vcnn.SALIENCY_TYPES, "internal")
    assert {g: list(m) for g, m in factors.items()} == {
        "conv1": ["conv1_switch"], "conv2": ["conv2_switch"], "fc1": ["fc1_switch"]}
    with pytest.raises(ConfigError, match="no channel group"):
        cp.prunable_factors(LeNet5(LayerFactory(), rngs=nnx.Rngs(0)), vcnn.SALIENCY_TYPES,
                            "internal")


def test_group_keep_is_any_over_norms_and_joins_padded_shortcuts():
    graph = channel_graph(nnx.eval_shape(lambda: models.get("resnet8")(
        LayerFactory(), rngs=nnx.Rngs(0), widths=(4, 8, 8))))
    keep = cp.group_keep(graph, {
        "stage1": {"a": [True, False, False, False], "b": [False, False, True, False]},
        "stage2": {"c": [False, True, False, False, False, False, False, True]},
        "stage3": {"d": [False] * 7 + [True]},
    })
    # stage1: any of its two BatchNorms, then channel 1 kept because stage2 keeps it
    assert keep["stage1"].tolist() == [True, True, True, False]
    # stage2's first four channels follow stage1; stage3's first eight follow stage2
    assert keep["stage2"].tolist() == [True, True, True, False, False, False, False, True]
    assert keep["stage3"].tolist() == keep["stage2"].tolist()


def test_vcnn_rule_and_slimming_threshold_never_empty_a_layer():
    lenet = LeNet5(LayerFactory(channel_settings={**SLIM, "init_scale": 1.0}), rngs=nnx.Rngs(0))
    graph = channel_graph(lenet)
    factors = cp.prunable_factors(lenet, slimming.SCALE_TYPES, "internal")
    rng = np.random.default_rng(0)
    lenet.conv1_switch.scale[...] = jnp.asarray(rng.uniform(0, 1e-3, 20), jnp.float32)
    lenet.conv2_switch.scale[...] = jnp.asarray(rng.uniform(1, 2, 50), jnp.float32)
    lenet.fc1_switch.scale[...] = jnp.asarray(rng.uniform(1, 2, 500), jnp.float32)
    keep, threshold = slimming.decide(graph, factors, 0.1)
    # the global threshold sits above all of conv1's scales: conv1 keeps its largest one
    assert threshold > 1e-3 and keep["conv1"].sum() == 1
    assert int(np.argmax(np.asarray(lenet.conv1_switch.scale[...]))) == \
        int(np.flatnonzero(keep["conv1"])[0])
    for percent in (0.5, 0.99, 0.999):
        keep, _ = slimming.decide(graph, factors, percent)
        assert all(k.sum() >= 1 for k in keep.values())
    saliency = LeNet5(LayerFactory(channel_settings=VCNN), rngs=nnx.Rngs(0))
    for module in saliency.channel_modules().values():
        module.saliency_mean[...] = jnp.zeros_like(module.saliency_mean[...])
        module.saliency_log_var[...] = jnp.full_like(module.saliency_log_var[...], -20.0)
    keep = vcnn.decide(channel_graph(saliency),
                       cp.prunable_factors(saliency, vcnn.SALIENCY_TYPES, "internal"), 0.02, 0.01)
    assert {g: int(k.sum()) for g, k in keep.items()} == {"conv1": 1, "conv2": 1, "fc1": 1}


def test_select_tau_takes_the_largest_tau_within_tolerance():
    lenet = LeNet5(LayerFactory(channel_settings=VCNN), rngs=nnx.Rngs(0))
    factors = cp.prunable_factors(lenet, vcnn.SALIENCY_TYPES, "internal")
    for module in factors["conv1"].values():
        module.saliency_mean[...] = jnp.asarray(np.linspace(0.01, 0.2, 20), jnp.float32)
        module.saliency_log_var[...] = jnp.full((20,), -20.0)
    graph = channel_graph(lenet)

    def error_of(keep):  # a made-up error: one point per pruned channel
        return float(sum(int((~k).sum()) for k in keep.values()))

    tau, trace = vcnn.select_tau(graph, factors, 0.01, error_of, tolerance=5.0)
    keep = vcnn.decide(graph, factors, tau, 0.01)
    assert int((~keep["conv1"]).sum()) == 5 and trace["error"] == 5.0
    assert trace["evaluations"] < 10
    # On |μ|/σ with σ growing faster than μ along the channels the order reverses: the five
    # with the smallest ratio are the last five, which |μ| alone would keep.
    for module in factors["conv1"].values():
        module.saliency_log_var[...] = jnp.asarray(2 * np.log(np.linspace(1e-3, 1.0, 20)),
                                                   jnp.float32)
    tau, trace = vcnn.select_tau(graph, factors, None, error_of, tolerance=5.0,
                                 statistic_name="snr")
    keep = vcnn.decide(graph, factors, tau, None, "snr")
    assert trace["statistic"] == "snr" and trace["error"] == 5.0
    assert keep["conv1"].tolist() == [True] * 15 + [False] * 5
