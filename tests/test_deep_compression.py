"""Deep Compression: k-means, the centroid gradient, masks, and a whole run through the CLI.

Han, Mao & Dally (ICLR 2016): iterative magnitude pruning with retraining, k-means weight sharing
with linear initialisation, centroid fine-tuning with gradients summed per cluster (Eq. 3).
The end-to-end tests retrain a 1-epoch smoke dense run (``pretrained_dense_run`` in conftest)
on the synthetic dataset.
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import compress, loop, pretrained, runs
from bayescomp.posteriors.codebook import shared_kernel
from bayescomp.posteriors.variables import Bias, PointWeight
from bayescomp.procedures import deep_compression
from bayescomp.compression import codec, quantize
from bayescomp.errors import ConfigError
from bayescomp.models import LeNet300
from bayescomp.nn import LayerFactory

from cli_helpers import run_cli  # tests/ is on sys.path (pytest rootdir)
SMOKE = ["+debug=smoke", "trainer.batch_size=256", "trainer.chunk_steps=2",
         "trainer.eval_batch_size=256"]


# ---------------------------------------------------------------------------------------------
# k-means


def test_kmeans_on_a_hand_made_example():
    # Linear initialisation over [0, 10] with 3 clusters: 0, 5, 10. Assignment by midpoints
    # 2.5 and 7.5: {0, 1, 2} | {4, 6} | {9, 10}; means 1, 5, 9.5; the next assignment is the
    # same, so Lloyd stops there.
    values = np.array([0.0, 1.0, 2.0, 4.0, 6.0, 9.0, 10.0])
    centroids, assignment = deep_compression.kmeans_1d(values, 3)
    np.testing.assert_allclose(centroids, [1.0, 5.0, 9.5])
    np.testing.assert_array_equal(assignment, [0, 0, 0, 1, 1, 2, 2])


def test_kmeans_refills_an_empty_cluster_with_the_farthest_value():
    # Start 0, 10/3, 20/3, 10 (midpoints 5/3, 5, 25/3): {0, 0.2, 0.4} {3.4} {} {10}. The third
    # cluster is empty; the value farthest from its centroid is 0.4 (distance 0.4; 3.4 is 0.067
    # from 10/3), which becomes that centroid. Sorted 0, 0.4, 10/3, 10 (midpoints 0.2, 1.87,
    # 6.67): {0, 0.2} {0.4} {3.4} {10} (0.2 sits on a midpoint: the lower cluster), means
    # 0.1, 0.4, 3.4, 10; the next assignment is the same, so Lloyd stops.
    values = np.array([0.0, 0.2, 0.4, 3.4, 10.0])
    centroids, assignment = deep_compression.kmeans_1d(values, 4)
    np.testing.assert_allclose(centroids, [0.1, 0.4, 3.4, 10.0])
    np.testing.assert_array_equal(assignment, [0, 0, 1, 2, 3])


def test_kmeans_with_fewer_distinct_values_than_clusters():
    centroids, assignment = deep_compression.kmeans_1d([1.0, 1.0, 2.0], 8)
    used = np.unique(assignment)
    assert used.size == 2
    np.testing.assert_allclose(centroids[used], [1.0, 2.0])


def test_shared_weights_drop_empty_clusters_and_index_the_kept_weights():
    weights = np.array([[0.5, -0.01, 0.52], [0.0, -0.4, 0.3]], np.float32)
    mask = np.abs(weights) > 0.1
    centroids, index = deep_compression.shared_weights(weights, mask, bits=3)
    assert centroids.dtype == np.float32 and np.all(np.diff(centroids) > 0)
    assert centroids.size == 4  # 4 kept weights, 4 distinct values, 8 clusters
    np.testing.assert_allclose(centroids[index[mask]], weights[mask], rtol=1e-6)
    assert np.all(index[~mask] == 0)


def test_magnitude_mask_keeps_the_largest_and_never_revives():
    weights = np.array([0.1, -0.5, 0.3, -0.2, 0.05, 0.4])
    first = deep_compression.magnitude_mask(weights, 0.5)
    np.testing.assert_array_equal(first, [False, True, True, False, False, True])
    # A later round only chooses among the kept weights, even if a removed one grew.
    grown = np.where(first, weights, 0.0)
    grown[0] = 9.0
    second = deep_compression.magnitude_mask(grown, 2 / 6, previous=first)
    np.testing.assert_array_equal(second, [False, True, False, False, False, True])


def test_keep_schedule_is_geometric_and_ends_at_the_target():
    schedule = deep_compression.keep_schedule(0.08, 3)
    np.testing.assert_allclose(schedule, [0.08 ** (1 / 3), 0.08 ** (2 / 3), 0.08])
    assert schedule[-1] == 0.08
    with pytest.raises(ConfigError):
        deep_compression.keep_schedule(1.5, 3)


# ---------------------------------------------------------------------------------------------
# The centroid gradient (Han et al. 2016, Eq. 3)


def test_centroid_gradient_is_the_sum_of_the_shared_weights_gradients(key):
    rng = np.random.default_rng(0)
    shape = (6, 5)
    mask = rng.random(shape) < 0.6
    index = np.where(mask, rng.integers(0, 3, shape), 0).astype(np.int32)
    centroids = jnp.asarray([-0.3, 0.1, 0.7], jnp.float32)
    x = jax.random.normal(key(), (4, 6))
    target = jax.random.normal(key(), (4, 5))

    def loss_of_kernel(kernel):
        return jnp.sum((jnp.tanh(x @ kernel) - target) ** 2)

    def loss_of_centroids(c):
        return loss_of_kernel(shared_kernel(c, index, mask))

    grad_c = jax.grad(loss_of_centroids)(centroids)
    grad_w = np.asarray(jax.grad(loss_of_kernel)(
        shared_kernel(centroids, index, mask)))
    # Eq. 3: dL/dc_k = sum over kept weights in cluster k of dL/dw_i (by hand, with numpy).
    by_hand = [grad_w[mask & (index == k)].sum() for k in range(3)]
    np.testing.assert_allclose(np.asarray(grad_c), by_hand, rtol=1e-5, atol=1e-6)
    # And against central finite differences of the loss in float64 terms.
    step = 1e-3
    for k in range(3):
        e = jnp.zeros(3).at[k].set(step)
        numeric = (loss_of_centroids(centroids + e) - loss_of_centroids(centroids - e)) / (2 * step)
        np.testing.assert_allclose(float(grad_c[k]), float(numeric), rtol=2e-2, atol=2e-3)


def test_shared_kernel_keeps_removed_weights_at_positive_zero():
    mask = np.array([[True, False], [False, True]])
    kernel = np.asarray(shared_kernel(
        jnp.asarray([-0.5, 0.25]), np.array([[0, 0], [1, 1]], np.int32), mask))
    np.testing.assert_array_equal(kernel, [[-0.5, 0.0], [0.0, 0.25]])
    assert not np.signbit(kernel[~mask]).any()


# ---------------------------------------------------------------------------------------------
# Retraining with fixed masks


def test_masked_weights_stay_exactly_zero_after_retraining_steps(smoke_cfg, tmp_path):
    # A phase with keep masks, through the one training loop: removed weights get no gradient
    # and are reset after every update, so they stay +0.0 (never -0.0), while kept ones move.
    cfg = smoke_cfg("lenet300_dense", "trainer.tensorboard=false")
    model = LeNet300(LayerFactory(), rngs=nnx.Rngs(0))
    layers = [(name, getattr(model, name)) for name in ("fc1", "fc2", "fc3")]
    kernels = {n: np.asarray(layer.posterior.weight[...]) for n, layer in layers}
    masks = {n: deep_compression.magnitude_mask(kernels[n], 0.1) for n in kernels}
    training = loop.TrainingRun(cfg, tmp_path, runs.load_run_dataset(cfg))
    training.fit(model, loop.Phase(
        "p", 1, optimizer={"name": "adam", "lr": 1e-2, "b1": 0.9, "b2": 0.999,
                           "schedule": "constant"},
        key=jax.random.key(0), trains=(PointWeight, Bias), masks=masks))
    for n, layer in layers:
        kernel = np.asarray(layer.posterior.weight[...])
        assert np.all(kernel[~masks[n]] == 0) and not np.signbit(kernel[~masks[n]]).any()
        assert np.any(kernel[masks[n]] != kernels[n][masks[n]])  # kept ones moved
    assert all(math.isfinite(training.history[-1][k]) for k in ("loss", "nll"))


# ---------------------------------------------------------------------------------------------
# The whole procedure through the command line


@pytest.fixture(scope="module")
def dc_run(tmp_path_factory, pretrained_dense_run):
    """A Deep Compression smoke run (1 pruning round: 2 + 2 steps) through ``bayescomp.run``."""
    run_dir = tmp_path_factory.mktemp("dc") / "run"
    result = run_cli(run_dir, "+experiment=lenet300_dc", *SMOKE, "method.prune_rounds=1",
                     f"method.pretrained_run={pretrained_dense_run('lenet300')}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_cli_run_writes_metrics_and_the_quantized_network(dc_run, pretrained_dense_run):
    metrics = json.loads((dc_run / "metrics.json").read_text())
    # Every key a variational run writes (here the dense run's), so tables treat both alike.
    dense = json.loads((pretrained_dense_run("lenet300") / "metrics.json").read_text())
    assert set(dense) <= set(metrics), set(dense) - set(metrics)
    assert metrics["method"] == "dc" and metrics["experiment"] == "lenet300_dc"
    assert [h["phase"] for h in metrics["history"]] == ["prune1", "finetune"]
    assert metrics["epochs"] == 2
    # The per-layer targets of Han et al. (Table 2) are met exactly (rounded to whole weights).
    assert metrics["kept_per_layer"] == [round(0.08 * 235200), round(0.09 * 30000), 260]
    quantized = quantize.load_quantized(dc_run / quantize.QUANTIZED_FILE)
    for kernel, mask, codebook, bits in zip(quantized.kernels, quantized.masks,
                                            quantized.codebooks, metrics["bits_per_layer"]):
        assert np.all(kernel[~mask] == 0)
        np.testing.assert_array_equal(np.unique(kernel[mask]), codebook)
        assert codebook.size <= 2 ** 6 and bits == (codebook.size - 1).bit_length()
    assert metrics["codebook_sizes"] == [c.size for c in quantized.codebooks]
    comp = metrics["compression"]
    assert comp["pruning"] == pytest.approx(
        metrics["weights_total"] / (2 * metrics["weights_kept"]))  # unstructured accounting
    assert metrics["compression_details"]["pruning_accounting"] == "unstructured"
    assert metrics["exponent_bits"] == 0
    for key in ("test_error", "pruned_test_error", "quantized_test_error"):
        assert 0 <= metrics[key] <= 100
    assert (dc_run / "plots" / "weights_fc1.png").is_file()


def test_compress_decodes_the_quantized_kernels_bit_for_bit(dc_run):
    measured = compress.compress_run(dc_run)
    quantized = quantize.load_quantized(dc_run / quantize.QUANTIZED_FILE)
    _, decoded = codec.load(measured["compressed_file"])
    assert decoded.version == 2
    for kernel, restored, codebook, restored_codebook in zip(
            quantized.kernels, decoded.kernels, quantized.codebooks, decoded.codebooks):
        np.testing.assert_array_equal(kernel.view(np.uint32), restored.view(np.uint32))
        np.testing.assert_array_equal(codebook.view(np.uint32), restored_codebook.view(np.uint32))
    metrics = json.loads((dc_run / "metrics.json").read_text())
    assert metrics["compressed_test_error"] == metrics["quantized_test_error"]
    assert metrics["compressed_bytes"] == pathlib.Path(measured["compressed_file"]).stat().st_size
    assert {layer["values_kind"] for layer in metrics["compression_file"]["layers"]} == {
        "codebook"}


def test_rerun_in_the_same_directory_resumes_and_trains_nothing(dc_run, pretrained_dense_run,
                                                                 tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(dc_run, run_dir)
    before = json.loads((run_dir / "metrics.json").read_text())
    result = run_cli(run_dir, "+experiment=lenet300_dc", *SMOKE, "method.prune_rounds=1",
                     f"method.pretrained_run={pretrained_dense_run('lenet300')}")
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["history"] == before["history"]
    assert after["train_seconds"] == before["train_seconds"]
    assert after["quantized_test_error"] == before["quantized_test_error"]


# Slow set (about a minute on 2 cores): resuming between phases is the loop's, tested in the
# default run by tests/test_loop.py and tests/test_dirichlet_procedure.py.
@pytest.mark.slow
def test_resume_after_an_interruption_between_phases(pretrained_dense_run, tmp_path):
    """Two pruning rounds, interrupted after the first: the rerun recomputes round 2's mask and
    the codebooks from the restored weights and ends exactly where an uninterrupted run does."""
    import shutil

    args = ["+experiment=lenet300_dc", *SMOKE, "method.prune_rounds=2",
            f"method.pretrained_run={pretrained_dense_run('lenet300')}"]
    straight_dir = tmp_path / "straight"
    assert run_cli(straight_dir, *args).returncode == 0
    straight = json.loads((straight_dir / "metrics.json").read_text())
    assert [h["phase"] for h in straight["history"]] == ["prune1", "prune2", "finetune"]

    # The state of a run stopped after prune1: its checkpoint, nothing later.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(straight_dir, resumed_dir)
    for path in ("checkpoints/prune2", "checkpoints/finetune", "metrics.json",
                 quantize.QUANTIZED_FILE):
        target = resumed_dir / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    result = run_cli(resumed_dir, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((resumed_dir / "metrics.json").read_text())
    assert resumed["history"][0] == straight["history"][0]  # prune1 was not retrained
    for got, want in zip(resumed["history"][1:], straight["history"][1:]):
        for field in ("loss", "test_error"):  # same programs, same inputs (see test_train)
            assert got[field] == pytest.approx(want[field], rel=1e-6, abs=1e-7), field
    assert resumed["kept_per_layer"] == straight["kept_per_layer"]
    assert resumed["quantized_test_error"] == straight["quantized_test_error"]


def test_rerun_with_more_epochs_is_refused(dc_run, pretrained_dense_run, tmp_path):
    """Retraining phases derive masks and codebooks from the phases before them, so a changed
    epoch count (allowed for variational runs) cannot resume them: refused, nothing lost."""
    import hashlib
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(dc_run, run_dir)
    digest = {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
              for name in ("metrics.json", "config.yaml")}
    result = run_cli(run_dir, "+experiment=lenet300_dc", *SMOKE, "method.prune_rounds=1",
                     "trainer.epochs=2",
                     f"method.pretrained_run={pretrained_dense_run('lenet300')}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "trainer.epochs: 1 -> 2" in lines[0]
    # The hint names the run's own config.yaml: Hydra has already rewritten .hydra/config.yaml.
    assert f"{run_dir.absolute()}/config.yaml" in lines[0]
    assert digest == {name: hashlib.sha256((run_dir / name).read_bytes()).hexdigest()
                      for name in ("metrics.json", "config.yaml")}


def test_missing_pretrained_run_is_one_line_error(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(run_dir, "+experiment=lenet300_dc", *SMOKE)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert ("set method.pretrained_run=DIR of a finished lenet300_dense run on synthetic"
            in lines[0])
    assert not (run_dir / "metrics.json").exists()


def test_pretrained_run_checks(smoke_cfg, pretrained_dense_run, tmp_path):
    with pytest.raises(ConfigError, match="is not a directory.*lenet300_dense"):
        pretrained.load_pretrained(smoke_cfg("lenet300_dc",
                                          f"method.pretrained_run={tmp_path / 'missing'}"))
    with pytest.raises(ConfigError, match="no config.yaml.*lenet300_dense"):
        pretrained.load_pretrained(smoke_cfg("lenet300_dc", f"method.pretrained_run={tmp_path}"))
    with pytest.raises(ConfigError, match="is a lenet300 run on synthetic.*lenet5_dense"):
        pretrained.load_pretrained(smoke_cfg(
            "lenet5_dc", f"method.pretrained_run={pretrained_dense_run('lenet300')}"))
    model, metrics = pretrained.load_pretrained(smoke_cfg(
        "lenet300_dc", f"method.pretrained_run={pretrained_dense_run('lenet300')}"))
    assert isinstance(model, LeNet300) and metrics["experiment"] == "lenet300_dense"


def test_lenet5_dc_smoke_run(smoke_cfg, pretrained_dense_run, tmp_path):
    # Conv layers: 8-bit codebooks for conv1/conv2, Python loop of jitted steps on CPU.
    cfg = smoke_cfg("lenet5_dc", "method.prune_rounds=1",
                    f"method.pretrained_run={pretrained_dense_run('lenet5')}")
    metrics = deep_compression.run(cfg, tmp_path)
    assert metrics["kept_per_layer"] == [round(0.66 * 500), round(0.12 * 25000),
                                         round(0.08 * 400000), round(0.19 * 5000)]
    assert max(metrics["codebook_sizes"][:2]) <= 256 and max(metrics["codebook_sizes"][2:]) <= 32
    quantized = quantize.load_quantized(tmp_path / quantize.QUANTIZED_FILE)
    data = codec.encode_network(quantized, model_name="lenet5", input_shape=(28, 28, 1),
                                num_classes=10)
    decoded = codec.decode_network(data)
    for kernel, restored in zip(quantized.kernels, decoded.kernels):
        np.testing.assert_array_equal(kernel.view(np.uint32), restored.view(np.uint32))
