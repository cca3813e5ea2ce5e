"""The pure channel decisions of :mod:`bayescomp.channel_selection` (numpy, exact)."""

from __future__ import annotations

import numpy as np
import pytest

from bayescomp.channel_selection import (
    mass_widths,
    per_group,
    ratio_widths,
    slimming_keep,
    slimming_threshold,
    top_k_keep,
    vcnn_keep,
    vcnn_score,
)
from bayescomp.errors import ConfigError


def _vgg_like_scales(seed=0):
    rng = np.random.default_rng(seed)
    scales = {f"bn{i}": rng.normal(0.0, 0.5, width) for i, width in enumerate((16, 32, 64, 8))}
    scales["bn3"] = rng.uniform(1e-6, 1e-5, 8) * rng.choice([-1, 1], 8)  # a layer slimmed away
    return scales


@pytest.mark.parametrize("percent", [0.0, 0.3, 0.7, 0.9, 0.999])
def test_slimming_never_empties_a_layer_and_keeps_its_largest(percent):
    scales = _vgg_like_scales()
    keep = slimming_keep(scales, percent)
    for name, gamma in scales.items():
        assert keep[name].shape == gamma.shape and keep[name].any(), name
        assert keep[name][np.argmax(np.abs(gamma))], name
    if percent == 0.999:  # every layer is down to its largest |γ|
        assert all(int(k.sum()) == 1 for k in keep.values())


def test_slimming_threshold_is_global_and_prunes_floor_percent_of_all():
    scales = _vgg_like_scales(1)
    del scales["bn3"]  # no layer needs its guard here
    n = sum(g.size for g in scales.values())
    everything = np.abs(np.concatenate(list(scales.values())))
    for percent in (0.25, 0.5, 0.7):
        keep = slimming_keep(scales, percent)
        pruned = n - sum(int(k.sum()) for k in keep.values())
        assert pruned == int(np.floor(percent * n))  # distinct values: no ties at t
        t = slimming_threshold(scales, percent)
        assert np.sum(everything <= t) == pruned
        for name, gamma in scales.items():  # one threshold for every layer
            np.testing.assert_array_equal(keep[name], np.abs(gamma) > t)


def test_slimming_guard_restores_one_channel_of_a_layer_below_the_threshold():
    scales = _vgg_like_scales(1)  # bn3's |γ| are all below every other layer's
    keep = slimming_keep(scales, 0.1)
    assert int(keep["bn3"].sum()) == 1 and keep["bn3"][np.argmax(np.abs(scales["bn3"]))]
    assert int(slimming_keep(scales, 0.1, min_keep=3)["bn3"].sum()) == 3


def test_slimming_ties_at_the_threshold_go_together_and_percent_is_checked():
    scales = {"a": np.asarray([0.1, 0.2, 0.2, 0.2]), "b": np.asarray([0.5, 0.6])}
    # ⌊0.34·6⌋ = 2 → t = 0.2: every |γ| ≤ 0.2 goes, emptying "a"; its guard keeps the first
    # of its tied largest.
    keep = slimming_keep(scales, 0.34)
    np.testing.assert_array_equal(keep["a"], [False, True, False, False])
    np.testing.assert_array_equal(keep["b"], [True, True])
    assert slimming_threshold(scales, 0.1) is None  # ⌊0.6⌋ = 0: nothing pruned
    assert all(k.all() for k in slimming_keep(scales, 0.1).values())
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="percent"):
            slimming_keep(scales, bad)


def test_top_k_keeps_the_largest_and_breaks_ties_by_index():
    keep = top_k_keep({"conv": np.asarray([0.3, 0.5, 0.5, 0.5])}, {"conv": 2})
    np.testing.assert_array_equal(keep["conv"], [False, True, True, False])
    # Dirichlet's LeNet-5 (10-20-100-25 in its code) pruned to the paper's 5-8-45-15.
    rng = np.random.default_rng(0)
    sizes = {"conv1": 10, "conv2": 20, "fc1": 100, "fc2": 25}
    widths = {"conv1": 5, "conv2": 8, "fc1": 45, "fc2": 15}
    scores = {name: rng.dirichlet(np.full(c, 0.5)) for name, c in sizes.items()}
    keep = top_k_keep(scores, widths)
    for name, k in widths.items():
        assert int(keep[name].sum()) == k
        assert scores[name][keep[name]].min() >= scores[name][~keep[name]].max()
    with pytest.raises(ConfigError, match="kept width"):
        top_k_keep({"conv": np.ones(3)}, {"conv": 4})
    with pytest.raises(ConfigError, match="exactly"):
        top_k_keep({"conv": np.ones(3)}, {"fc": 1})


def test_automatic_widths():
    s = {"a": np.asarray([0.05, 0.5, 0.15, 0.3]), "b": np.asarray([0.6, 0.4, 0.0, 0.0]),
         "u": np.full(4, 0.25)}
    assert mass_widths(s, 0.8) == {"a": 2, "b": 2, "u": 4}
    assert mass_widths(s, 0.81) == {"a": 3, "b": 2, "u": 4}
    assert mass_widths(s, 1.0) == {"a": 4, "b": 2, "u": 4}  # zero switches are never needed
    assert mass_widths(s, 0.5) == {"a": 1, "b": 1, "u": 2}
    assert mass_widths({"tiny": np.asarray([1e-9, 1e-9])}, 0.01) == {"tiny": 1}
    # C·s_j ≥ ratio; a uniform layer keeps everything for ratio ≤ 1; never empty.
    assert ratio_widths(s, 0.5) == {"a": 3, "b": 2, "u": 4}
    assert ratio_widths(s, 3.0) == {"a": 1, "b": 1, "u": 1}
    with pytest.raises(ConfigError):
        mass_widths(s, 0.0)
    # The widths feed top_k_keep directly.
    assert int(top_k_keep(s, mass_widths(s, 0.8))["a"].sum()) == 2


def test_vcnn_prunes_small_saliencies_and_with_theta_only_those_concentrated_at_zero():
    mu = np.asarray([0.01, 0.01, 0.5, -0.01, -0.5])
    sigma = np.asarray([0.005, 0.5, 0.005, 0.001, 0.5])
    keep = vcnn_keep({"bn": mu}, {"bn": 2 * np.log(sigma)}, tau=0.02, theta=0.01)
    np.testing.assert_array_equal(keep["bn"], [False, True, True, False, True])
    # Without θ (the default) σ does not matter: |μ| < τ alone, the wide one at μ = 0.01 too.
    keep = vcnn_keep({"bn": mu}, {"bn": 2 * np.log(sigma)}, tau=0.02)
    np.testing.assert_array_equal(keep["bn"], [False, False, True, False, True])
    # A layer entirely at zero keeps its largest |μ| (min_keep = 1), or nothing if asked.
    mu0, lv0 = np.asarray([0.001, -0.003, 0.002]), np.full(3, -20.0)
    np.testing.assert_array_equal(vcnn_keep({"bn": mu0}, {"bn": lv0})["bn"],
                                  [False, True, False])
    assert not vcnn_keep({"bn": mu0}, {"bn": lv0}, min_keep=0)["bn"].any()


def test_vcnn_snr_statistic_is_scale_free_and_differs_from_the_mean_rule():
    mu = np.asarray([0.02, 0.5, 0.3, -0.05])
    sigma = np.asarray([0.001, 1.0, 0.01, 0.5])
    log_var = 2 * np.log(sigma)
    # |μ|/σ = 20, 0.5, 30, 0.1: the two noisy channels go at τ = 1, not the small precise one.
    np.testing.assert_allclose(vcnn_score(mu, log_var, "snr"), [20, 0.5, 30, 0.1], rtol=1e-12)
    keep = vcnn_keep({"bn": mu}, {"bn": log_var}, tau=1.0, statistic="snr")
    np.testing.assert_array_equal(keep["bn"], [True, False, True, False])
    np.testing.assert_array_equal(vcnn_keep({"bn": mu}, {"bn": log_var}, tau=0.1)["bn"],
                                  [False, True, True, False])
    # Scaling one module's μ and σ by c (log σ² by 2 log c), which the next BatchNorm divides
    # away, moves |μ| across a fixed τ but leaves |μ|/σ and the decision unchanged.
    for c in (1e-3, 7.0):
        scaled = vcnn_keep({"bn": c * mu}, {"bn": log_var + 2 * np.log(c)}, tau=1.0,
                           statistic="snr")
        np.testing.assert_array_equal(scaled["bn"], keep["bn"])
    with pytest.raises(ConfigError, match="statistic"):
        vcnn_score(mu, log_var, "median")


def test_per_group_combines_the_batch_norms_of_a_residual_group():
    values = {"b1.bn2": np.asarray([0.1, 0.9, 0.0]), "b2.bn2": np.asarray([0.4, 0.2, 0.0]),
              "stem.bn": np.asarray([0.3, 0.1, 0.05])}
    grouped = per_group(values, {"trunk": ["stem.bn", "b1.bn2", "b2.bn2"], "image": []})
    np.testing.assert_allclose(grouped["trunk"], [0.4, 0.9, 0.05])
    assert "image" not in grouped
    keep = per_group({"x": np.asarray([True, False]), "y": np.asarray([False, False])},
                     {"g": ["x", "y"]}, reduce=np.any)
    np.testing.assert_array_equal(keep["g"], [True, False])
