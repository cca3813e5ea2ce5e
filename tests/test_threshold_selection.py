"""Per-layer threshold selection (bayescomp/threshold_selection.py) on a hand-made example.

The selection error is a function we write down: each pruned group of layer k costs c_k
percentage points, so the greedy bisection must stop exactly where the hand computation says.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import runs, threshold_selection
from bayescomp.procedures import variational
from bayescomp.models import LeNet300
from bayescomp.nn import LayerFactory

# Cost (percentage points of selection error) of one pruned group in fc1, fc2, fc3.
COSTS = {"fc1": 0.01, "fc2": 0.02, "fc3": 0.05}
# Tolerance 0.915 spreads to bounds 0.305, 0.61, 0.915: fc1 may prune 30 groups (0.30; 31 would
# be 0.31 > 0.305), fc2 then 15 (0.30 + 0.30 ≤ 0.61; 16 would exceed), fc3 then 6
# (0.60 + 0.30 ≤ 0.915; 7 would be 0.95). The bounds sit half a step between the achievable
# errors, so float rounding cannot move the answer.
TOLERANCE = 0.915
EXPECTED_PRUNED = {"fc1": 30, "fc2": 15, "fc3": 6}


def _graded_model(seed=0):
    """A BC-GNJ LeNet-300 whose groups have distinct log α (z mean 1, log var = log α)."""
    model = LeNet300(LayerFactory(posterior="group_normal", prior="group_nj", threshold=-3.0),
                     rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for name in COSTS:
        posterior = getattr(model, name).posterior
        n = posterior.z_mean_param[...].shape[0]
        posterior.z_mean_param[...] = jnp.ones((n,))
        posterior.z_log_var[...] = jnp.asarray(rng.permutation(np.linspace(-8.0, 2.0, n)),
                                               jnp.float32)
    return model


def _pruned_groups(kernels):
    """Groups (input units: all-zero kernel rows) removed in each layer."""
    return {name: int((~np.asarray(k).any(axis=1)).sum()) for name, k in zip(COSTS, kernels)}


def hand_error(kernels, biases):
    del biases
    return sum(COSTS[name] * count for name, count in _pruned_groups(kernels).items())


def test_greedy_bisection_matches_hand_computation():
    model = _graded_model()
    evaluated = []  # the networks error_of was asked about, as their pruned-group counts

    def recording_error(kernels, biases):
        evaluated.append(tuple(_pruned_groups(kernels).values()))
        return hand_error(kernels, biases)

    thresholds, trace = threshold_selection.select_thresholds(model, recording_error,
                                                              tolerance=TOLERANCE)
    assert trace["reference_error"] == 0.0
    for name, expected in EXPECTED_PRUNED.items():
        log_alpha = np.asarray(getattr(model, name).log_alpha())
        # The threshold prunes exactly the `expected` groups of highest log α.
        assert int((log_alpha >= thresholds[name]).sum()) == expected, name
        # Strictly between two groups' values, so recomputed log α cannot flip a group.
        assert not np.any(np.isclose(log_alpha, thresholds[name], rtol=0, atol=1e-6)), name
        assert getattr(model, name).prune_threshold == thresholds[name]
        assert trace["layers"][name]["error"] <= trace["layers"][name]["bound"]
    kernels, _ = threshold_selection.masked_mean_params(
        model, threshold_selection.pruning.propagated_masks(model))
    assert _pruned_groups(kernels) == EXPECTED_PRUNED
    # Bisection: about log2(groups) evaluations per layer, not one per candidate, and no
    # network twice (a layer's "prune nothing" is the network the previous layer chose).
    # (evaluations == calls of error_of because no candidate here empties a layer: those are
    # counted but never reach error_of.)
    assert trace["evaluations"] == len(evaluated) < 3 * 15
    assert len(set(evaluated)) == len(evaluated), evaluated


def test_zero_tolerance_with_free_groups_prunes_only_free_ones():
    """Groups whose removal costs nothing are pruned even at tolerance 0; nothing else is."""
    model = _graded_model(seed=1)
    log_alpha = np.asarray(model.fc1.log_alpha())
    free = set(np.argsort(log_alpha)[-50:])  # the 50 noisiest fc1 groups cost nothing

    def error(kernels, biases):
        pruned = _pruned_groups(kernels)
        rows_gone = ~np.asarray(kernels[0]).any(axis=1)
        costly_fc1 = sum(1 for i in np.flatnonzero(rows_gone) if i not in free)
        return float(costly_fc1 + pruned["fc2"] + pruned["fc3"])

    thresholds, _ = threshold_selection.select_thresholds(model, error, tolerance=0.0)
    assert int((log_alpha >= thresholds["fc1"]).sum()) == 50
    assert thresholds["fc2"] is None and thresholds["fc3"] is None  # nothing free there


def test_run_stores_and_reuses_selected_thresholds(smoke_cfg, tmp_path, monkeypatch):
    cfg = smoke_cfg("lenet300_ghs", "+method.prune.select={tolerance: 1.0, examples: 64}",
                    "trainer.epochs=2", "trainer.pruned_eval_every=1")
    selections = []
    select = threshold_selection.select_thresholds
    monkeypatch.setattr(threshold_selection, "select_thresholds",
                        lambda *a, **k: selections.append(select(*a, **k)) or selections[-1])
    metrics = variational.run(cfg, tmp_path)
    # One selection per epoch for the logged pruned error; the run's end reuses the last one,
    # made on the final parameters, instead of repeating it.
    assert len(selections) == 2
    stored = metrics["prune_thresholds"]
    assert set(stored) == {"fc1", "fc2", "fc3"}
    assert stored == selections[-1][0]
    assert metrics["history"][-1]["pruned_test_error"] == metrics["pruned_test_error"]
    selection = metrics["threshold_selection"]
    for name, layer in selection["layers"].items():
        assert layer["error"] <= layer["bound"] + 1e-9
        assert layer["threshold"] == stored[name]
    # Rebuilding the run (compress, evaluate) prunes with the same thresholds.
    _, model, _ = runs.load_trained_model(tmp_path)
    assert {name: getattr(model, name).prune_threshold for name in stored} == stored
    # Rerunning the finished run trains nothing, so it selects afresh on the trained
    # parameters: the same thresholds.
    rerun = variational.run(cfg, tmp_path)
    assert len(selections) == 3
    assert rerun["prune_thresholds"] == stored


def test_unknown_layer_is_rejected():
    with pytest.raises(ValueError, match="unknown layers"):
        threshold_selection.set_thresholds(_graded_model(), {"fc9": 0.0})
