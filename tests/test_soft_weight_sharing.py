"""Soft weight-sharing: post-processing (merging, quantisation), the figure, and smoke runs.

The prior's maths is tested in ``tests/priors/test_gaussian_mixture.py``. The end-to-end tests
retrain a 2-step smoke dense run (``pretrained_dense_run`` in conftest) on the synthetic data.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx
from omegaconf import OmegaConf

from bayescomp import compress, loop, runs
from bayescomp.procedures import soft_weight_sharing
from bayescomp.compression import codec, quantize
from bayescomp.errors import ConfigError
from bayescomp.models import LeNet300
from bayescomp.nn import LayerFactory
from bayescomp.priors.gaussian_mixture import GaussianMixture, MixtureParams
from bayescomp.procedures.soft_weight_sharing import (
    MergedMixture, assign_components, layer_codebooks, merge_components, post_process,
    quantize_to_mixture, save_weight_figure, settings_from_config, tau_at)

from cli_helpers import REPO_ROOT, run_cli  # tests/ is on sys.path (pytest rootdir)
SMOKE = ["+debug=smoke", "trainer.batch_size=256", "trainer.chunk_steps=2",
         "trainer.eval_batch_size=256"]


def _log(values):
    return np.log(np.asarray(values, np.float64))


def test_merging_a_hand_made_mixture():
    # Components 1 and 3 are identical, 2 is within 1e-4 nats of them, 4 is far; component 0
    # sits at 0 and 5 is a near-zero twin of it.
    means = np.array([0.0, 0.5, 0.5 + 1e-4, 0.5, -0.7, 1e-3])
    log_precisions = np.array([8.0, 4.0, 4.0, 4.0, 5.0, 8.0])
    pis = np.array([0.9, 0.02, 0.03, 0.01, 0.03, 0.01])
    kl_12 = 0.5 * math.exp(4.0) * 1e-4 ** 2  # equal precisions: KL = λ(Δμ)²/2 = 2.7e-7

    merged = merge_components(means, log_precisions, _log(pis), tolerance=1e-10)
    assert merged.groups == [[0], [1, 3], [2], [4], [5]]  # only the identical pair merges
    np.testing.assert_allclose(np.exp(merged.log_pis), [0.9, 0.03, 0.03, 0.03, 0.01])
    assert merged.means[1] == pytest.approx(0.5)

    merged = merge_components(means, log_precisions, _log(pis), tolerance=10 * kl_12)
    assert merged.groups == [[0], [1, 2, 3], [4], [5]]
    assert merged.means[1] == pytest.approx((0.02 * 0.5 + 0.03 * (0.5 + 1e-4) + 0.01 * 0.5) / 0.06)
    assert np.exp(merged.log_precisions[1]) == pytest.approx(math.exp(4.0))
    assert np.exp(merged.log_pis).sum() == pytest.approx(1.0)

    # A wide tolerance pulls the near-zero twin into the zero group, whose mean is then reset
    # to exactly 0 (the π-weighted average would be 1e-3 · 0.01 / 0.91).
    kl_05 = 0.5 * math.exp(8.0) * 1e-3 ** 2
    merged = merge_components(means, log_precisions, _log(pis), tolerance=2 * kl_05)
    assert merged.groups[merged.zero_index] == [0, 5]
    assert merged.means[merged.zero_index] == 0.0
    assert np.exp(merged.log_pis[merged.zero_index]) == pytest.approx(0.91)


def test_merging_is_transitive_and_zero_tolerance_merges_nothing():
    # 0.00 ~ 0.01 ~ 0.02 pairwise-adjacent (KL 0.5·e^4·1e-4 = 2.7e-3), 0 and 0.02 are not.
    means = np.array([0.0, 0.01, 0.02])
    merged = merge_components(means, np.full(3, 4.0), _log([0.5, 0.3, 0.2]), tolerance=5e-3)
    assert merged.groups == [[0, 1, 2]]
    merged = merge_components(means, np.full(3, 4.0), _log([0.5, 0.3, 0.2]), tolerance=0.0)
    assert merged.groups == [[0], [1], [2]]


@pytest.mark.parametrize("tolerance", [-1.0, float("nan"), "1e-10"])
def test_bad_tolerance_is_a_config_error(tolerance):
    with pytest.raises(ConfigError, match="merge_tolerance"):
        merge_components(np.zeros(2), np.zeros(2), _log([0.5, 0.5]), tolerance)


def _mixture():
    means = np.array([0.0, -0.4, 0.3, 0.8])
    log_precisions = np.array([7.0, 4.0, 5.0, 3.0])
    return MergedMixture(means, log_precisions, _log([0.7, 0.1, 0.15, 0.05]),
                         [[0], [1], [2], [3]], zero_index=0)


def test_quantization_picks_the_argmax_responsibility_component():
    mixture = _mixture()
    weights = np.random.default_rng(0).normal(0, 0.5, (40, 25))
    # Responsibilities from scipy densities: π_k N(w | μ_k, λ_k⁻¹).
    stds = np.exp(-0.5 * mixture.log_precisions)
    densities = np.exp(mixture.log_pis) * scipy.stats.norm(mixture.means, stds).pdf(
        weights.reshape(-1, 1))
    expected = densities.argmax(axis=1).reshape(weights.shape)
    np.testing.assert_array_equal(assign_components(weights, mixture, chunk=7), expected)

    quantized = quantize_to_mixture(weights, mixture)
    assert quantized.dtype == np.float32 and quantized.shape == weights.shape
    np.testing.assert_array_equal(quantized, mixture.means[expected].astype(np.float32))
    zero = expected == 0
    assert zero.any() and (~zero).any()
    assert np.all(quantized[zero] == 0.0) and not np.any(np.signbit(quantized[zero]))
    assert np.all(quantized[~zero] != 0.0)


def test_post_process_uses_the_training_normalisation():
    # Shifting every ρ by a constant changes neither the loss nor the quantisation.
    prior = GaussianMixture(num_components=4, pi_zero=0.9)
    params = MixtureParams(np.array([-0.4, 0.3, 0.8], np.float32), np.array([7.0, 4.0, 5.0, 3.0],
                           np.float32), np.array([0.1, 2.0, -1.0], np.float32))
    shifted = params._replace(rhos=params.rhos + 5.0)
    a, b = post_process(params, prior, 1e-10), post_process(shifted, prior, 1e-10)
    np.testing.assert_allclose(a.log_pis, b.log_pis, rtol=1e-6)
    assert np.exp(a.log_pis[0]) == pytest.approx(0.9, rel=1e-6)
    weights = np.linspace(-1, 1, 201)
    np.testing.assert_array_equal(quantize_to_mixture(weights, a), quantize_to_mixture(weights, b))


def test_layer_codebooks_are_sorted_distinct_kept_values():
    kernels = [np.array([[0.3, 0.0], [-0.4, 0.3]], np.float32), np.zeros((2, 2), np.float32)]
    books = layer_codebooks(kernels)
    np.testing.assert_array_equal(books[0], np.array([-0.4, 0.3], np.float32))
    assert books[0].dtype == np.float32 and books[1].size == 0


def test_weight_figure_is_written(tmp_path):
    rng = np.random.default_rng(1)
    pretrained = rng.normal(0, 0.3, 5000)
    retrained = quantize_to_mixture(pretrained, _mixture()) + rng.normal(0, 0.01, 5000)
    path = save_weight_figure(pretrained, retrained, _mixture(), tmp_path / "plots" / "w.png",
                              max_points=1000)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="differ in number"):
        save_weight_figure(pretrained, retrained[:10], _mixture(), tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------
# Configuration


def test_settings_of_the_method_config():
    method = OmegaConf.load(REPO_ROOT / "conf" / "method" / "sws.yaml")
    settings = settings_from_config(method)
    assert settings.prior.num_components == 17 and settings.prior.pi_zero == 0.999
    assert settings.tau == 5e-3 and settings.merge_tolerance == 1e-10
    assert settings.learning_rates == {"weights": 5e-4, "means": 1e-4, "log_precisions": 3e-3,
                                       "rhos": 3e-3}


def test_tau_schedule_constant_and_geometric():
    method = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "method" / "sws.yaml"))
    constant = settings_from_config(method)
    assert constant.tau_final is None
    assert [tau_at(constant, e, 5) for e in range(5)] == [5e-3] * 5
    annealed = settings_from_config({**method, "tau": 0.01, "tau_final": 1.0})
    taus = [tau_at(annealed, e, 5) for e in range(5)]
    # By hand: 0.01 * 100^(e/4) = 0.01, 0.01*sqrt(10), 0.1, 0.1*sqrt(10), 1.
    np.testing.assert_allclose(taus, [0.01, 0.01 * 10 ** 0.5, 0.1, 0.1 * 10 ** 0.5, 1.0],
                               rtol=1e-12)
    assert tau_at(annealed, 0, 1) == 0.01  # a single epoch uses the first tau


@pytest.mark.parametrize("override, match", [
    ({"tau": 0.0, "tau_final": 1.0}, "method.tau and method.tau_final > 0"),
    ({"tau": 0.1, "tau_final": 0.0}, "method.tau and method.tau_final > 0"),
    ({"tau": 0.1, "tau_final": -1.0}, "method.tau_final"),
    ({"tau": -1.0}, "method.tau"),
    ({"tau": float("nan")}, "method.tau"),
    ({"merge_tolerance": -1e-10}, "method.merge_tolerance"),
    ({"learning_rates": {"weights": 5e-4}}, "method.learning_rates"),
    ({"learning_rates": {"weights": 5e-4, "means": -1.0, "log_precisions": 3e-3, "rhos": 3e-3}},
     "learning_rates.means"),
    ({"prior": {"name": "flat"}}, "gaussian_mixture"),
    ({"prior": {"name": "gaussian_mixture", "pi_zero": 2.0}}, "pi_zero"),
])
def test_bad_settings_are_config_errors(override, match):
    method = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "method" / "sws.yaml"))
    method.update(override)
    with pytest.raises(ConfigError, match=match):
        settings_from_config(method)


class _UnitKL(nnx.Module):
    """A network whose only KL term is the constant N (the training-set size)."""

    def __init__(self, network, n_train: int):
        self.network = network
        self.n_train = n_train

    def __call__(self, x, *, rngs=None):
        return self.network(x, rngs=rngs)

    def kl(self):
        return jnp.float32(self.n_train)


def test_each_epoch_gets_its_scheduled_kl_weight(smoke_cfg, tmp_path):
    # The annealed tau reaches the jitted step as the phase's per-epoch KL weight. With a KL of
    # exactly N, every epoch's mean loss is its mean NLL plus beta_e, and one compiled step must
    # serve all epochs.
    cfg = smoke_cfg("lenet300_dense", "trainer.epochs=3", "trainer.tensorboard=false")
    dataset = runs.load_run_dataset(cfg)
    model = _UnitKL(LeNet300(LayerFactory(), rngs=nnx.Rngs(0)), len(dataset.y_train))
    training = loop.TrainingRun(cfg, tmp_path, dataset)
    schedule = [0.5, 0.25, 0.125]  # powers of 2: exact in float32
    training.fit(model, loop.Phase(
        "p", 3, optimizer={"name": "adam", "lr": 1e-3, "b1": 0.9, "b2": 0.999,
                           "schedule": "constant"},
        key=jax.random.key(0), kl_weight=lambda epoch: schedule[epoch]))
    assert [h["kl_weight"] for h in training.history] == schedule
    assert [h["kl"] for h in training.history] == [float(len(dataset.y_train))] * 3
    for h, beta in zip(training.history, schedule):
        # loss = NLL + beta·KL/N summed in float32 over the epoch's steps: ~1e-7 relative.
        assert h["loss"] - h["nll"] == pytest.approx(beta, rel=1e-5)
    (_, chunk), = training._compiled.values()
    compiled = chunk if not hasattr(chunk, "jitted_step") else chunk.jitted_step
    assert compiled._cache_size() == 1


# ---------------------------------------------------------------------------------------------
# The whole procedure through the command line


@pytest.fixture(scope="module")
def sws_run(tmp_path_factory, pretrained_dense_run):
    """A lenet300_sws smoke run (2 retraining steps) through ``python -m bayescomp.run``."""
    run_dir = tmp_path_factory.mktemp("sws") / "run"
    result = run_cli(run_dir, "+experiment=lenet300_sws", *SMOKE,
                     f"method.pretrained_run={pretrained_dense_run('lenet300')}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_cli_run_writes_metrics_figure_and_the_quantized_network(sws_run):
    metrics = json.loads((sws_run / "metrics.json").read_text())
    assert metrics["method"] == "sws" and metrics["experiment"] == "lenet300_sws"
    assert [h["phase"] for h in metrics["history"]] == ["sws"] and metrics["epochs"] == 1
    for key in ("test_error", "pruned_test_error", "quantized_test_error"):
        assert 0 <= metrics[key] <= 100
    assert 0 <= metrics["sws"]["retrained_test_error"] <= 100
    assert (sws_run / "plots" / "sws_weights.png").is_file()
    assert metrics["sws"]["figure"] == "plots/sws_weights.png"

    # Every kept weight is a mean of the merged mixture; removed weights are +0.0; the zero
    # component's mean is exactly 0.
    mixture = metrics["sws"]["mixture"]
    assert mixture["means"][mixture["zero_index"]] == 0.0
    means = np.asarray(mixture["means"], np.float32)
    quantized = quantize.load_quantized(sws_run / quantize.QUANTIZED_FILE)
    kept = 0
    for kernel, mask, codebook, bits in zip(quantized.kernels, quantized.masks,
                                            quantized.codebooks, metrics["bits_per_layer"]):
        assert np.all(kernel[~mask] == 0) and not np.signbit(kernel[~mask]).any()
        assert np.all(kernel[mask] != 0)
        if codebook is None:
            assert not mask.any()
            continue
        np.testing.assert_array_equal(np.unique(kernel[mask]), codebook)
        assert np.isin(codebook, means).all() and bits == (codebook.size - 1).bit_length()
        kept += int(mask.sum())
    assert kept == metrics["weights_kept"] > 0
    assert metrics["compression"]["pruning"] == pytest.approx(
        metrics["weights_total"] / (2 * metrics["weights_kept"]))  # unstructured accounting
    assert metrics["compression_details"]["pruning_accounting"] == "unstructured"
    assert np.isfinite([h["quantized_test_error"] for h in metrics["history"]]).all()


def test_compress_decodes_the_sws_network_bit_for_bit(sws_run):
    measured = compress.compress_run(sws_run)
    quantized = quantize.load_quantized(sws_run / quantize.QUANTIZED_FILE)
    _, decoded = codec.load(measured["compressed_file"])
    for kernel, restored in zip(quantized.kernels, decoded.kernels):
        np.testing.assert_array_equal(kernel.view(np.uint32), restored.view(np.uint32))
    metrics = json.loads((sws_run / "metrics.json").read_text())
    assert metrics["compressed_test_error"] == metrics["quantized_test_error"]


def test_a_network_quantised_to_nothing_is_one_clear_error(smoke_cfg, pretrained_dense_run,
                                                           tmp_path):
    # The tutorial's fixed initial std 0.25 is wide against the 2-step net's weights
    # (std ~0.04): after 2 steps the zero component (π0 = 0.999) wins every weight.
    cfg = smoke_cfg("lenet300_sws", "method.prior.init_std=0.25",
                    f"method.pretrained_run={pretrained_dense_run('lenet300')}")
    with pytest.raises(ConfigError, match="every weight to the zero component"):
        soft_weight_sharing.run(cfg, tmp_path)
    assert not (tmp_path / "metrics.json").exists()
