"""No pruning ruins a network silently (issue 23, item 3).

Fixed thresholds that empty a layer, or raise the training-subset error of the posterior-mean
network by more than ``method.prune.max_error_rise``, end the run with one line naming the layer
and the fix, before ``metrics.json`` is written; selection never empties a layer; the per-epoch
pruned error is the one the run reports. Runs are 2-step smoke runs on synthetic data.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_threshold_selection import _graded_model, hand_error

from bayescomp import pruning, runs, threshold_selection
from bayescomp.errors import ConfigError
from bayescomp.procedures import variational

# A tolerance selection can use on the 64-example subsets below (one example is 1.6 points).
SELECT_64 = "method.prune.select={tolerance: 5.0, examples: 64}"


def test_fixed_thresholds_that_empty_a_layer_are_refused_and_selection_repairs_the_run(
        smoke_cfg, tmp_path):
    # After two steps every fc3 group has log α ≈ −9, so a threshold of −20 removes them all.
    cfg = smoke_cfg("lenet300_gnj", "method.prune.per_layer.fc3=-20")
    with pytest.raises(pruning.RuinousPruningError) as info:
        variational.run(cfg, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "fc3 keeps 0 of 100 input units (log α < -20)" in message
    assert "method.prune.select=" in message and "method.prune.per_layer.fc3" in message
    assert f"hydra.run.dir={tmp_path}" in message
    assert info.value.emptied == ["fc3"]
    assert not (tmp_path / "metrics.json").exists()  # nothing ruined is written
    assert not (tmp_path / "plots").exists()
    # The advice works: the same directory, thresholds selected, re-evaluates without training.
    metrics = variational.run(smoke_cfg("lenet300_gnj", "method.prune.per_layer.fc3=-20",
                                        SELECT_64), tmp_path)
    assert metrics["epochs"] == 1
    assert min(metrics["kept_per_layer"]) > 0
    check = metrics["pruning_check"]
    assert check["emptied"] == []
    assert check["error_rise"] <= 5.0 + 1e-9
    assert metrics["threshold_selection"]["reference_error"] == check["reference_error"]


def test_fixed_thresholds_that_raise_the_training_error_past_the_tolerance_are_refused(
        smoke_cfg, tmp_path, monkeypatch):
    """The run's refusal path with a written-down error: each pruned fc1 row costs 0.1 points."""

    def subset_error_of(cfg, model, dataset, evaluator, examples, **_):
        del cfg, model, dataset, evaluator, examples
        return lambda kernels, biases: 0.1 * int((~np.asarray(kernels[0]).any(axis=1)).sum())

    monkeypatch.setattr(variational, "subset_error_of", subset_error_of)
    # fc1 groups have log α ≈ −9 ± 0.03 after two steps: −9 prunes about half of its 784.
    overrides = ("method.prune.per_layer.fc1=-9.0", "method.prune.max_error_rise=2.5")
    with pytest.raises(pruning.RuinousPruningError) as info:
        variational.run(smoke_cfg("lenet300_gnj", *overrides), tmp_path)
    message = str(info.value)
    assert "\n" not in message and info.value.emptied == []
    assert "raise the training-subset error from 0.00 % to" in message
    assert "more than 2.5 points: fc1 keeps" in message and "of 784 input units" in message
    assert "method.prune.max_error_rise (now 2.5)" in message
    assert not (tmp_path / "metrics.json").exists()
    # A tolerance that allows the rise lets the same thresholds through, and records the check.
    # (method.bits=null: the written-down error is not a disagreement for bit selection.)
    metrics = variational.run(smoke_cfg("lenet300_gnj", "method.prune.per_layer.fc1=-9.0",
                                        "method.bits=null",
                                        "method.prune.max_error_rise=100"), tmp_path)
    check = metrics["pruning_check"]
    assert 2.5 < check["error_rise"] == pytest.approx(
        0.1 * (784 - check["layers"]["fc1"]["kept"]))
    assert check["max_error_rise"] == 100
    assert metrics["prune_thresholds"]["fc1"] == -9.0  # fixed, not re-selected


def test_ruin_names_the_layer_that_lost_most():
    model = _graded_model()
    # fc2's log α are spread over [−8, 2]; −4 keeps 120 of its 300 groups (cost 0.02 each).
    threshold_selection.set_thresholds(model, {"fc1": None, "fc2": -4.0, "fc3": 1.5})
    check = threshold_selection.pruning_check(model, hand_error)
    kept = int((np.asarray(model.fc2.log_alpha()) < -4.0).sum())
    assert check["layers"]["fc2"] == {"kept": kept, "groups": 300, "unit": "input units",
                                      "threshold": -4.0}
    assert check["reference_error"] == 0.0 and check["emptied"] == []
    problem, layers = threshold_selection.ruin(check, max_error_rise=1.0)
    assert layers == ["fc2"] and f"fc2 keeps {kept} of 300 input units" in problem
    assert threshold_selection.ruin(check, max_error_rise=check["error_rise"]) is None
    assert threshold_selection.ruin(check, max_error_rise=None) is None
    # An emptied layer is wrong whatever the tolerance.
    threshold_selection.set_thresholds(model, {"fc3": -100.0})
    check = threshold_selection.pruning_check(model, hand_error)
    assert check["emptied"] == ["fc3"]
    problem, layers = threshold_selection.ruin(check, max_error_rise=None)
    assert layers == ["fc3"] and "fc3 keeps 0 of 100 input units" in problem


def test_selection_never_empties_a_layer():
    """With pruning free of cost, selection prunes all but one group of every layer."""
    model = _graded_model()
    thresholds, _ = threshold_selection.select_thresholds(model, lambda k, b: 0.0,
                                                          tolerance=0.0)
    for name in ("fc1", "fc2", "fc3"):
        log_alpha = np.asarray(getattr(model, name).log_alpha())
        assert int((log_alpha < thresholds[name]).sum()) == 1, name
    assert pruning.emptied_layers(model) == []
    assert all(mask.any() for mask in pruning.propagated_masks(model).values())


def test_logged_pruned_error_is_the_reported_one(smoke_cfg, tmp_path):
    """Under selection the history's pruned error uses thresholds selected at that epoch, every
    ``pruned_eval_every`` epochs and at the last; the last equals ``metrics.json``'s."""
    cfg = smoke_cfg("lenet300_ghs", SELECT_64, "trainer.epochs=3",
                    "trainer.pruned_eval_every=2")
    metrics = variational.run(cfg, tmp_path)
    history = metrics["history"]
    assert ["pruned_test_error" in record for record in history] == [False, True, True]
    assert history[-1]["pruned_test_error"] == metrics["pruned_test_error"]
    # The selected thresholds are what the run reports, not the configured −3 of every layer.
    assert metrics["threshold_selection"] is not None
    assert metrics["prune_thresholds"] != {"fc1": -3.0, "fc2": -3.0, "fc3": -3.0}


def test_fixed_thresholds_log_the_reported_pruned_error(finished_smoke_run):
    _, metrics = finished_smoke_run("lenet300_svd")
    assert metrics["history"][-1]["pruned_test_error"] == metrics["pruned_test_error"]
    check = metrics["pruning_check"]
    assert check["emptied"] == [] and check["max_error_rise"] == 3.0
    assert check["layers"]["fc1"]["unit"] == "weights"


@pytest.mark.parametrize("experiment, override, message", [
    ("lenet300_gnj", "method.prune.select=true",
     "method.prune.select=True must be null (the fixed"),
    ("lenet300_gnj", "method.prune.select={tolerence: 1}",
     "method.prune.select has unknown keys ['tolerence']"),
    ("lenet300_gnj", "method.prune.select={examples: 10}",
     "method.prune.select.tolerance must be set"),
    ("lenet300_ghs", "method.prune.select.tolerance=-1",
     "method.prune.select.tolerance=-1 must be a number in"),
    ("lenet300_ghs", "method.prune.select.examples=0",
     "method.prune.select.examples=0 must be a positive integer"),
    ("lenet300_svd", "method.prune.max_error_rise=abc",
     "method.prune.max_error_rise='abc' must be a number"),
    ("lenet300_svd", "method.prune.max_error_rise=-1",
     "method.prune.max_error_rise=-1 must be a number in"),
])
def test_bad_pruning_settings_are_one_line_naming_the_key(smoke_cfg, experiment, override,
                                                          message):
    with pytest.raises(ConfigError) as info:
        runs.check_settings(smoke_cfg(experiment, override))
    text = str(info.value)
    assert message in text and "\n" not in text, text


@pytest.mark.parametrize("experiment, selects", [
    ("lenet300_gnj", False), ("lenet5_gnj", False),  # the published fixed-threshold recipes
    ("lenet300_ghs", True), ("lenet5_ghs", True), ("lenet300_svd", False)])
def test_group_methods_select_by_default_and_published_recipes_stay_fixed(
        compose, experiment, selects):
    cfg = compose([f"+experiment={experiment}"])
    runs.check_settings(cfg)
    assert bool(cfg.method.prune.get("select")) == selects
    assert cfg.method.prune.max_error_rise == 3.0
    assert compose(["method=bc_gnj"]).method.prune.select.tolerance == 0.5
    if experiment == "lenet5_gnj":
        assert cfg.method.prune.threshold == -3.0 and not cfg.method.prune.per_layer
    if experiment == "lenet300_gnj":
        assert dict(cfg.method.prune.per_layer) == {"fc1": -2.8, "fc2": -3.0, "fc3": -5.0}
