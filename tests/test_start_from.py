"""Starting a run from a finished dense run (``method.start_from``): posterior means loaded
from the dense kernels, the loaded network checked against the dense run's error.

Tolerances: ``load_mean`` divides a kernel by E[z] and ``mean()`` multiplies it back, two
float32 roundings, so the round trip is exact to a few ulp (rtol 1e-6 ≈ 8 ulp of float32).
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import pretrained, runs
from bayescomp.errors import ConfigError
from bayescomp.nn import fold
from bayescomp.posteriors.delta import Delta
from bayescomp.posteriors.gaussian import FactorizedGaussian
from bayescomp.posteriors.group_lognormal import GroupLogNormal
from bayescomp.posteriors.group_normal import GroupNormal
from bayescomp.procedures import variational, vcnn

NARROW_LENET = "model.widths=[6,8,12]"
TINY_VGG = ("data=synthetic_cifar", "model.widths=[4,4,8,8,8,8,8,8,8,8,8,8,8,8]")


@pytest.mark.parametrize("make", [
    lambda shape, axis: Delta(shape, rngs=nnx.Rngs(0)),
    lambda shape, axis: FactorizedGaussian(shape, rngs=nnx.Rngs(0)),
    lambda shape, axis: GroupNormal(shape, group_axis=axis, rngs=nnx.Rngs(0)),
    lambda shape, axis: GroupLogNormal(shape, group_axis=axis, rngs=nnx.Rngs(0)),
], ids=["delta", "gaussian", "group_normal", "group_lognormal"])
@pytest.mark.parametrize("shape,axis", [((3, 3, 4, 5), -1), ((6, 5), -2)], ids=["conv", "dense"])
def test_load_mean_inverts_mean_and_mean_bias(make, shape, axis):
    posterior = make(shape, axis)
    kernel = jax.random.normal(jax.random.key(1), shape)
    bias = jax.random.normal(jax.random.key(2), (shape[-1],))
    before = {path: np.array(value[...]) for path, value in
              nnx.to_flat_state(nnx.state(posterior))}
    raw_bias = posterior.load_mean(kernel, bias)
    np.testing.assert_allclose(np.asarray(posterior.mean()), np.asarray(kernel), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(posterior.mean_bias(raw_bias)), np.asarray(bias),
                               rtol=1e-6)
    # Only the kernel's mean parameter moved: variances, q(z) and scales keep their values.
    after = dict(nnx.to_flat_state(nnx.state(posterior)))
    moved = [path for path, value in before.items()
             if not np.array_equal(value, np.asarray(after[path][...]))]
    assert moved == [path for path in before if path[-1] in ("weight", "theta", "w_mean")]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, smoke_cfg):
    """A finished 2-step narrow LeNet-5 dense smoke run: ``(run_dir, metrics)``."""
    run_dir = tmp_path_factory.mktemp("dense") / "run"
    return run_dir, variational.run(smoke_cfg("lenet5_dense", NARROW_LENET), run_dir)


@pytest.fixture(scope="module")
def vgg_dense_run(tmp_path_factory, smoke_cfg):
    """A finished 2-step tiny VGG-like dense smoke run (BatchNorm after every layer)."""
    run_dir = tmp_path_factory.mktemp("vgg") / "run"
    # constant rate: the recipe's step decay has no room in 2 steps
    variational.run(smoke_cfg("vgg_like_dense", *TINY_VGG, "optimizer.schedule=constant"),
                    run_dir)
    return run_dir


@pytest.mark.parametrize("experiment", ["lenet5_gnj", "lenet5_ghs", "lenet5_svd", "vgg_like_gnj",
                                        "vgg_like_ghs"])
def test_loaded_variational_network_is_the_dense_one(request, smoke_cfg, experiment):
    if experiment.startswith("vgg"):
        run_dir, overrides = request.getfixturevalue("vgg_dense_run"), TINY_VGG
    else:
        (run_dir, _), overrides = request.getfixturevalue("dense_run"), (NARROW_LENET,)
    cfg = smoke_cfg(experiment, *overrides, f"method.start_from={run_dir}")
    dataset = runs.load_run_dataset(cfg)
    model = runs.build_model(cfg, dataset.x_train.shape[1:], dataset.num_classes, 0)
    started = pretrained.start_from(cfg, model)
    assert started["run"] == str(run_dir.resolve())
    _, dense, _ = runs.load_trained_model(run_dir)
    x = jnp.asarray(dataset.x_test[:64])
    got = nnx.view(model, deterministic=True, raise_if_not_found=False)(x)
    want = nnx.view(dense, deterministic=True, raise_if_not_found=False)(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_bc_run_from_a_dense_run_records_and_checks_its_start(dense_run, smoke_cfg, tmp_path):
    run_dir, dense_metrics = dense_run
    metrics = variational.run(
        smoke_cfg("lenet5_gnj", NARROW_LENET, f"method.start_from={run_dir}"), tmp_path / "bc")
    start = metrics["start_from"]
    assert start["run"] == str(run_dir.resolve())
    # the loaded network, evaluated before training, scores what the dense run scored
    assert start["start_test_error"] == dense_metrics["test_error"]


def test_start_from_refuses_a_network_that_does_not_score_as_in_its_run(dense_run, smoke_cfg,
                                                                       tmp_path):
    with pytest.raises(ConfigError, match="scores 50.00 % test error loaded here but 9.00 %"):
        pretrained.check_start({"run": "/x", "test_error": 9.0}, 50.0)
    assert pretrained.check_start({"run": "/x", "test_error": 9.0}, 9.04) == 9.04
    # End to end: a dense run whose recorded error is not what its network scores.
    run_dir, dense_metrics = dense_run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    written = json.loads((other / "metrics.json").read_text())
    written["test_error"] = dense_metrics["test_error"] + 1.0
    (other / "metrics.json").write_text(json.dumps(written))
    for procedure, experiment in ((variational, "lenet5_gnj"), (vcnn, "lenet5_vcnn")):
        with pytest.raises(ConfigError, match="loaded here but"):
            procedure.run(smoke_cfg(experiment, NARROW_LENET, f"method.start_from={other}"),
                          tmp_path / experiment)


def test_a_checkpoint_from_another_start_is_refused(dense_run, smoke_cfg, tmp_path):
    run_dir, _ = dense_run
    scratch = tmp_path / "scratch"
    variational.run(smoke_cfg("lenet5_gnj", NARROW_LENET), scratch)
    with pytest.raises(ConfigError, match="trained from scratch, this run starts from"):
        variational.run(smoke_cfg("lenet5_gnj", NARROW_LENET, f"method.start_from={run_dir}"),
                        scratch)
    started = tmp_path / "started"
    variational.run(smoke_cfg("lenet5_gnj", NARROW_LENET, f"method.start_from={run_dir}"),
                    started)
    with pytest.raises(ConfigError, match="this run starts from scratch"):
        variational.run(smoke_cfg("lenet5_gnj", NARROW_LENET), started)
    # The same start written otherwise (a trailing slash) resumes: a re-evaluation.
    again = variational.run(smoke_cfg("lenet5_gnj", NARROW_LENET,
                                      f"method.start_from={run_dir}/"), started)
    assert again["start_from"]["run"] == str(run_dir.resolve())


def test_start_from_other_widths_or_no_run_is_one_line(dense_run, smoke_cfg, tmp_path):
    run_dir, _ = dense_run
    cfg = smoke_cfg("lenet5_gnj", "model.widths=[6,8,16]", f"method.start_from={run_dir}")
    with pytest.raises(ConfigError, match="does not fit this model.*same model.widths"):
        variational.run(cfg, tmp_path / "wide")
    cfg = smoke_cfg("lenet5_gnj", NARROW_LENET, f"method.start_from={tmp_path / 'nothing'}")
    with pytest.raises(ConfigError, match="method.start_from=.*is not a directory"):
        variational.run(cfg, tmp_path / "none")


def test_vcnn_starts_from_the_dense_run(dense_run, smoke_cfg, tmp_path):
    run_dir, _ = dense_run
    metrics = vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET, f"method.start_from={run_dir}"),
                       tmp_path / "vcnn")
    assert metrics["vcnn"]["start_from"] == str(run_dir.resolve())
    # the saliency model's first layer holds the dense kernel before training: load it again
    cfg = smoke_cfg("lenet5_vcnn", NARROW_LENET, f"method.start_from={run_dir}")
    dataset = runs.load_run_dataset(cfg)
    model = runs.build_model(cfg, dataset.x_train.shape[1:], dataset.num_classes, 0)
    pretrained.start_from(cfg, model)
    _, dense, _ = runs.load_trained_model(run_dir)
    ours, theirs = dict(fold.weight_layers(model)), dict(fold.weight_layers(dense))
    for name in ours:
        np.testing.assert_array_equal(np.asarray(ours[name].posterior.mean()),
                                      np.asarray(theirs[name].posterior.mean()))
