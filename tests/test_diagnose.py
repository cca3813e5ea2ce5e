"""``python -m bayescomp.diagnose``: mean vs sampled views of a variational run, read-only."""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import data, diagnose, models, objectives
from bayescomp.nn import LayerFactory


@pytest.fixture(scope="module")
def gnj_run(finished_smoke_run):
    """A finished 2-step LeNet-300-100 BC-GNJ smoke run (group scales and their pruning)."""
    return finished_smoke_run("lenet300_gnj")


def _tree_digest(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_cli_reports_the_runs_own_numbers_and_writes_nothing_into_it(gnj_run, tmp_path,
                                                                    capsys):
    run_dir, metrics = gnj_run
    before = _tree_digest(run_dir)
    out = tmp_path / "diagnosis.json"
    assert diagnose.main([str(run_dir), "--samples", "3", "--out", str(out)]) == 0
    assert _tree_digest(run_dir) == before  # read-only: safe beside a training process
    report = json.loads(out.read_text())
    # The mean network and the compression snapshot are the run's own: same numbers as its
    # metrics.json, computed again from the checkpoint by independent calls.
    assert report["mean_error"] == pytest.approx(metrics["test_error"], abs=1e-9)
    snapshot = report["compression_snapshot"]
    for key in ("quantized_test_error", "pruned_test_error", "architecture", "bits_per_layer",
                "weights_kept"):
        assert snapshot[key] == pytest.approx(metrics[key], abs=1e-9), key
    assert len(report["sampled_errors"]) == 3
    assert set(report["one_layer_sampled"]) == {"fc1", "fc2", "fc3"}
    printed = capsys.readouterr().out
    assert "posterior-mean network" in printed and "Fast Prediction" in printed


def _svd_lenet300(log_sigma2: float):
    model = models.get("lenet300")(LayerFactory(posterior="gaussian", prior="log_uniform"),
                                   rngs=nnx.Rngs(0), input_shape=(28, 28, 1), num_classes=10)
    for _, layer in objectives.variational_layers(model):
        layer.posterior.log_sigma2[...] = jnp.full_like(layer.posterior.log_sigma2[...],
                                                        log_sigma2)
    return model


def test_sampling_matches_the_mean_at_zero_variance_and_departs_from_it_at_large():
    dataset = data.load_dataset("synthetic")
    x, y = dataset.x_test[:256], dataset.y_test[:256]
    # log σ² = -60 is clipped to the floor log α = -8 (σ = 0.018·|θ|), so the passes differ
    # from the mean network only on near-ties of this untrained network's logits: allow 6 of
    # the 256 images (2.3 points; observed: up to 3).
    quiet = diagnose.diagnose(_svd_lenet300(-60.0), x, y, samples=2, batch_size=128)
    for error in (*quiet["sampled_errors"], quiet["ensemble_error"],
                  *quiet["one_layer_sampled"].values()):
        assert abs(error - quiet["mean_error"]) <= 100 * 6 / 256
    # log σ² = +4 (σ ≈ 7.4 against |θ| ~ 0.05): the passes are noise. Errors alone cannot show
    # it (an untrained network is near chance either way), so compare predictions: a sampled
    # pass must disagree with the mean network on most images (10 classes: ~90 % by chance).
    loud_model = _svd_lenet300(4.0)
    loud = diagnose.diagnose(loud_model, x, y, samples=4, batch_size=128)
    assert loud["mean_error"] == quiet["mean_error"]  # the mean view ignores σ
    assert loud["sampled_error_std"] > 0.0
    mean_graph, params = diagnose._view(loud_model, set())
    sampled_graph, _ = diagnose._view(loud_model, {"fc1", "fc2", "fc3"})
    key = jax.random.key(1)
    mean_pred = jnp.argmax(diagnose.make_probabilities(mean_graph, 128)(params, x, key), -1)
    sampled_pred = jnp.argmax(diagnose.make_probabilities(sampled_graph, 128)(params, x, key), -1)
    assert float(jnp.mean(mean_pred != sampled_pred)) > 0.5


def test_bad_arguments_end_in_one_clear_error(tmp_path, capsys):
    assert diagnose.main([str(tmp_path / "missing")]) == 2
    assert "not a bayescomp run directory" in capsys.readouterr().err
    with pytest.raises(Exception, match="at least 1"):
        diagnose.diagnose(_svd_lenet300(-10.0), np.zeros((4, 28, 28, 1), np.float32),
                          np.zeros(4, np.int32), samples=0)
