"""A retraining starts from a published dense run: its ``model.bcz`` when it has no checkpoints.

A published run directory (``results/…/seedN``) keeps ``config.yaml``, ``metrics.json`` and
``model.bcz``; its checkpoints stay on the machine that trained it. The retraining procedures
(Dirichlet pruning, Deep Compression, soft weight-sharing) and ``method.start_from`` must be
able to start from it, and the network they start from must be the one the checkpoints held up
to the file's rounding: kernels rounded to 2^-23 (so within 2^-24 ≈ 6e-8 of the trained values),
biases and BatchNorm parameters stored as float32 (equal).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import compress, pretrained, runs
from bayescomp.errors import ConfigError

#: A narrow ResNet with BatchNorms (their parameters and statistics travel in the file).
NARROW = ("data=synthetic_cifar", "model=resnet8", "model.widths=[4,8,8]")


def _flat(model) -> dict:
    return {path: np.asarray(value[...]) for path, value in
            nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}


@pytest.fixture(scope="module")
def published(pretrained_dense_run, tmp_path_factory):
    """``(run with checkpoints, the same run as published: no checkpoints)``."""
    # resnet20_dense's step decay needs more than 2 steps; the CPU recipe's cosine does not.
    source = pretrained_dense_run("resnet20", *NARROW, "optimizer.schedule=cosine")
    trained = tmp_path_factory.mktemp("trained")
    shutil.copytree(source, trained, dirs_exist_ok=True)
    compress.compress_run(trained, evaluate=False)
    published = tmp_path_factory.mktemp("published")
    for name in ("config.yaml", "metrics.json", "model.bcz"):
        shutil.copy(trained / name, published / name)
    return trained, published


def test_a_published_run_loads_from_its_file_as_the_checkpoint_network(smoke_cfg, published):
    trained, published_dir = published
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, f"method.pretrained_run={published_dir}")
    model, recorded = pretrained.load_pretrained(cfg)
    assert recorded["loaded_from"] == str((published_dir / "model.bcz").resolve())
    _, reference, _ = runs.load_trained_model(trained)
    got, want = _flat(model), _flat(reference)
    assert sorted(got) == sorted(want)
    for path in want:
        # Kernels: round half up to the 2^-23 grid, |error| <= 2^-24. Everything else float32.
        tolerance = 2.0 ** -24 if path[-1] == "weight" else 0.0
        np.testing.assert_allclose(got[path], want[path], rtol=0, atol=tolerance,
                                   err_msg=str(path))
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    model.eval()
    reference.eval()
    # Logits: the kernel rounding, propagated through 8 layers, moves them by ~1e-6.
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(reference(x)), atol=1e-4)


def test_a_run_with_checkpoints_still_loads_them(smoke_cfg, published):
    trained, _ = published
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, f"method.pretrained_run={trained}")
    _, recorded = pretrained.load_pretrained(cfg)
    assert recorded["loaded_from"] == "checkpoint"


def test_a_file_that_is_not_the_runs_is_refused(smoke_cfg, published, pretrained_dense_run,
                                                 tmp_path):
    _, published_dir = published
    other = tmp_path / "other"
    shutil.copytree(published_dir, other)
    lenet = tmp_path / "lenet"
    shutil.copytree(pretrained_dense_run("lenet5"), lenet)
    compress.compress_run(lenet, evaluate=False)
    shutil.copy(lenet / "model.bcz", other / "model.bcz")
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, f"method.pretrained_run={other}")
    with pytest.raises(ConfigError, match="model lenet5.*says resnet8.*not this run's"):
        pretrained.load_pretrained(cfg)
    (other / "model.bcz").write_bytes(b"not a bcz file")
    with pytest.raises(ConfigError, match="no checkpoints and its model.bcz cannot be read"):
        pretrained.load_pretrained(cfg)
    (other / "model.bcz").unlink()
    with pytest.raises(ConfigError, match="neither checkpoints/train nor model.bcz"):
        pretrained.load_pretrained(cfg)


def test_another_file_of_the_same_network_is_refused(smoke_cfg, published, tmp_path):
    # Seeds of one model write files of the same size; metrics.json's record tells them apart
    # by size where it can, and by the test error of the decoded network where it cannot.
    _, published_dir = published
    other = tmp_path / "other"
    shutil.copytree(published_dir, other)
    written = json.loads((other / "metrics.json").read_text())
    written["compressed_bytes"] += 1
    (other / "metrics.json").write_text(json.dumps(written))
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, f"method.pretrained_run={other}")
    with pytest.raises(ConfigError, match="bytes, its metrics.json records .*restore the run's"):
        pretrained.load_pretrained(cfg)
    _, recorded = pretrained.load_pretrained(
        smoke_cfg("resnet20_dirichlet_cpu", *NARROW, f"method.pretrained_run={published_dir}"))
    error = recorded["test_error"]
    assert pretrained.check_loaded(recorded, error + 0.05) == error + 0.05
    with pytest.raises(ConfigError, match="not that run's network"):
        pretrained.check_loaded(recorded, error + 0.06)
    # A network loaded from its checkpoint is the run's own: nothing to check.
    assert pretrained.check_loaded({**recorded, "loaded_from": "checkpoint"}, 50.0) == 50.0


def test_a_pruned_file_is_no_dense_start(smoke_cfg, published, tmp_path, monkeypatch):
    _, published_dir = published
    pruned = tmp_path / "pruned"
    shutil.copytree(published_dir, pruned)
    from bayescomp.compression import codec

    load = codec.load

    def load_pruned(path):
        model, network = load(path)
        network.masks[0] = np.zeros_like(network.masks[0])
        return model, network

    monkeypatch.setattr(codec, "load", load_pruned)
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, f"method.pretrained_run={pruned}")
    with pytest.raises(ConfigError, match="removes weights, so it is not the dense network"):
        pretrained.load_pretrained(cfg)

    def load_rounded(path):  # every weight kept, rounded to 8 bits: a quantized network
        model, network = load(path)
        network.precision = dataclasses.replace(
            network.precision, bits_per_layer=[8] * len(network.precision.bits_per_layer))
        return model, network

    monkeypatch.setattr(codec, "load", load_rounded)
    with pytest.raises(ConfigError, match=r"holds quantized weights \(\[8, 8"):
        pretrained.load_pretrained(cfg)


def test_a_dirichlet_run_starts_from_a_published_run(smoke_cfg, published, tmp_path):
    from bayescomp.procedures import dirichlet

    _, published_dir = published
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, f"method.pretrained_run={published_dir}",
                    "method.switches.epochs=1", "method.mass=0.5")
    written = dirichlet.run(cfg, tmp_path)
    assert written["pretrained_loaded_from"] == str((published_dir / "model.bcz").resolve())
    # The network it started from scores what the published run's file decoded to.
    assert written["pretrained_test_error"] == pytest.approx(
        runs_metrics(published_dir)["test_error"], abs=0.05 + 1e-9)
    assert jnp.isfinite(written["pruned_test_error"])


def runs_metrics(run_dir) -> dict:
    from bayescomp import metrics

    return metrics.read_metrics(run_dir)
