"""Bit widths raised until rounding changes few predictions (bayescomp/bit_selection.py).

The search is checked on disagreement functions written down by hand, whose answers follow from
the rule in the module docstring; then a run whose posterior bits round its network into
nonsense is checked end to end: the stored network (``quantized_network.npz``, what the ``.bcz``
file encodes), rebuilt independently of the search, predicts what the unrounded pruned network
predicts on the selection subset.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from bayescomp import bit_selection, models, runs, threshold_selection
from bayescomp.bit_precision import MAX_SIGNIFICAND_BITS
from bayescomp.compression import quantize as quantize_lib
from bayescomp.evaluation import Evaluator
from bayescomp.procedures import variational


def _counting(disagreement):
    calls = []

    def disagreement_of(bits):
        calls.append(tuple(bits))
        return disagreement(bits)

    return disagreement_of, calls


def test_each_layer_alone_then_the_cheapest_helpful_layer_together():
    # Layer 0 (100 kept weights) alone changes 1 % of predictions per missing bit below 6,
    # layer 1 (10,000 weights) 2 % per missing bit below 4; rounded together they change 1 %
    # more while layer 0 has fewer than 7 bits. None: the layer unrounded.
    def disagreement(bits):
        b0, b1 = bits
        alone0 = 0.0 if b0 is None else max(0, 6 - b0)
        alone1 = 0.0 if b1 is None else 2.0 * max(0, 4 - b1)
        together = 1.0 if b0 is not None and b1 is not None and b0 < 7 else 0.0
        return alone0 + alone1 + together

    disagreement_of, calls = _counting(disagreement)
    bits, trace = bit_selection.select_bits([3, 2], [100, 10_000], disagreement_of,
                                            tolerance=0.9, names=["conv", "fc"])
    # Budget 0.45 % a layer: alone, layer 0 needs 6 bits (5 leaves 1 %), layer 1 4 bits (3
    # leaves 2 %). Together (6, 4) changes 1 % > 0.9: +1 bit on layer 0 gives 0 (gain 1 % per
    # 100 weights), on layer 1 still 1 %: layer 0, to 7 bits.
    assert trace["layers"]["conv"]["bits"] == 6 and trace["layers"]["fc"]["bits"] == 4
    assert [step["layer"] for step in trace["steps"]] == ["conv"]
    assert bits == [7, 4] and trace["disagreement"] == 0.0 and trace["met"]
    assert trace["posterior_bits"] == [3, 2] and trace["posterior_disagreement"] == 8.0
    assert len(calls) == len(set(calls)) == trace["evaluations"]  # no network twice


def test_the_even_split_is_trimmed_back_within_the_tolerance():
    # Additive: layer 0 alone 1 % per missing bit below 6, layer 1 2 % below 4. Tolerance 2 %,
    # budget 1 % a layer: alone, layer 0 gets 5 bits (1 %), layer 1 4 (3 would be 2 %);
    # together 1 %. Trim, the larger layer first: layer 1 to 3 bits gives 3 % > 2: kept; layer 0
    # to 4 bits gives 2 %: taken; to 3 bits 3 %: not.
    def disagreement(bits):
        b0, b1 = bits
        return (0.0 if b0 is None else max(0, 6 - b0)) + (
            0.0 if b1 is None else 2.0 * max(0, 4 - b1))

    bits, trace = bit_selection.select_bits([3, 2], [100, 10_000], disagreement, tolerance=2.0)
    assert [t["bits"] for t in trace["trims"]] == [[4, 4]]
    assert bits == [4, 4] and trace["disagreement"] == 2.0 and trace["met"]


def test_never_lowers_the_posterior_bits_and_stops_at_once_when_within():
    disagreement_of, calls = _counting(lambda bits: 0.0)
    bits, trace = bit_selection.select_bits([9, 4, 2], [5, 5, 5], disagreement_of,
                                            tolerance=0.0)
    assert bits == [9, 4, 2] and trace["steps"] == [] and calls == [(9, 4, 2)]


def test_flat_disagreement_refines_the_coarsest_layer():
    # Alone every layer is harmless (its posterior bits stand); together no single extra bit
    # helps until both reach 8 bits: the coarsest layer (fewest bits, then fewest kept weights)
    # is raised each time: (6, 5) → (6, 6) → (6, 7) [tie at 6 bits: layer 1 has fewer weights]
    # → (7, 7) → (7, 8) → (8, 8).
    def disagreement(bits):
        return 0.0 if None in bits or min(bits) >= 8 else 5.0

    bits, trace = bit_selection.select_bits([6, 5], [50, 10], _counting(disagreement)[0],
                                            tolerance=0.5)
    assert bits == [8, 8]
    assert [step["layer"] for step in trace["steps"]] == ["1", "1", "0", "1", "0"]


def test_unreachable_tolerance_is_recorded_not_hidden():
    bits, trace = bit_selection.select_bits([20, 0], [3, 0], lambda bits: 1.0, tolerance=0.5)
    # The emptied layer (no kept weight) is never raised; the other stops at the float limit.
    assert bits == [MAX_SIGNIFICAND_BITS, 0]
    assert trace["met"] is False and trace["disagreement"] == 1.0


def test_when_every_bit_hurts_the_least_harmful_is_taken():
    # Each layer alone is harmless. From (4, 4) together: an extra bit on layer 0 gives 3.5 %,
    # on layer 1 3.2 % (both above the
    # 3.0 % now): layer 1, the smaller rise, though layer 0 is no finer. Then (4, 5) → 0 via
    # layer 0 (any bits on it >= 5 fix everything).
    table = {(4, 4): 3.0, (5, 4): 3.5, (4, 5): 3.2, (5, 5): 0.0, (4, 6): 3.3}
    bits, trace = bit_selection.select_bits(
        [4, 4], [10, 10], lambda b: 0.0 if None in b else table[tuple(b)], tolerance=0.0)
    assert [step["layer"] for step in trace["steps"]] == ["1", "0"] and bits == [5, 5]


@pytest.mark.parametrize("tolerance", [-0.1, float("nan"), float("inf")])
def test_bad_tolerance_is_refused(tolerance):
    with pytest.raises(ValueError, match="tolerance"):
        bit_selection.select_bits([1], [1], lambda bits: 0.0, tolerance=tolerance)


def _subset_predictions(cfg, network, dataset, *, pruned=False):
    x, _ = threshold_selection.selection_subset(dataset.x_train, dataset.y_train,
                                                int(cfg.method.prune.select.examples),
                                                int(cfg.seed))
    return Evaluator(64).predictions(network, jnp.asarray(x), pruned=pruned)


def test_run_raises_bits_until_the_rounded_network_agrees(smoke_cfg, tmp_path):
    # log σ² = -1 for every weight: the posterior rule gives fc2 and fc3 0 significand bits
    # (2·Var ≈ 0.74 > 1/2: rounded to integers) and fc1, whose variance the recipe clips at
    # 0.04, 3 bits (2·0.04 = 0.08 ≥ 2^-4): enough to change predictions.
    overrides = ("+method.prune.select={tolerance: 1.0, examples: 64}",
                 "method.posterior_init.weight_log_var_init=-1.0")
    cfg = smoke_cfg("lenet300_ghs", *overrides, "method.bits.tolerance=0.0")
    metrics = variational.run(cfg, tmp_path)
    selection = metrics["bit_selection"]
    assert selection["posterior_bits"] == [3, 0, 0]
    assert selection["posterior_disagreement"] > 0.0  # the posterior bits alone did damage
    assert selection["met"] and selection["disagreement"] == 0.0
    assert metrics["bits_per_layer"] == selection["bits"]
    assert all(b >= p for b, p in zip(selection["bits"], selection["posterior_bits"]))
    # Independently of the search: the stored network predicts what the pruned one does.
    _, model, _ = runs.load_trained_model(tmp_path)
    dataset = runs.load_run_dataset(cfg)
    stored = quantize_lib.load_quantized(tmp_path / "quantized_network.npz")
    assert stored.precision.bits_per_layer == selection["bits"]
    network = quantize_lib.quantized_model(models.get(cfg.model.name), stored,
                                           input_shape=dataset.x_train.shape[1:],
                                           num_classes=dataset.num_classes)
    np.testing.assert_array_equal(_subset_predictions(cfg, network, dataset),
                                  _subset_predictions(cfg, model, dataset, pruned=True))
    # Without the setting the posterior bits stand, as the paper's rule gives them; a finished
    # run is re-evaluated so (the bit tolerance, like the thresholds, is not a training setting).
    plain = variational.run(smoke_cfg("lenet300_ghs", *overrides, "method.bits=null"), tmp_path)
    assert plain["bit_selection"] is None and plain["bits_per_layer"] == [3, 0, 0]


@pytest.mark.parametrize("override, message", [
    ("method.bits=0.1", "must be null"),
    ("+method.bits.tol=0.1", "has unknown keys \\['tol'\\]"),
    ("method.bits.tolerance=-1", "method.bits.tolerance=-1"),
])
def test_bad_bit_settings_are_refused_before_training(smoke_cfg, override, message):
    from bayescomp.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        runs.check_settings(smoke_cfg("lenet300_ghs", override))
