"""Dirichlet pruning (Adamczewski & Park, AISTATS 2021) of LeNet-5, end to end.

The channel hook leaves every other method's LeNet-5 unchanged; a smoke run from the 2-step
dense run (``pretrained_dense_run`` in conftest) keeps the requested widths, counts them as a
LeNet-5 of those widths, exports a network with the masked model's logits, and resumes after an
interruption between its phases without retraining a finished phase.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import counting, runs
from bayescomp.compression import quantize
from bayescomp.compression.export import export_model
from bayescomp.errors import ConfigError
from bayescomp.models import LeNet5
from bayescomp.nn import LayerFactory, from_config
from bayescomp.nn.switch import DirichletSwitch, SwitchLogit
from bayescomp.procedures import dirichlet

SWITCHES = {"kind": "dirichlet", "alpha0": 0.05, "init_logit": -1.0, "mode": "integral"}


# ---------------------------------------------------------------------------------------------
# The channel hook


def test_methods_without_channel_modules_build_the_same_lenet5(key):
    """No new Variables and bit-identical logits for a method without ``channel``."""
    x = jax.random.normal(key(), (8, 28, 28, 1))
    svd = {"posterior": "gaussian", "prior": {"name": "log_uniform"}}
    for method in ({"posterior": "delta"}, svd):
        model = LeNet5(from_config(method), rngs=nnx.Rngs(0))
        assert model.channel_modules() == {}
        assert not nnx.state(model, SwitchLogit)
        paths = {tuple(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}
        assert not any("switch" in part for path in paths for part in path)
    dense = LeNet5(LayerFactory(), rngs=nnx.Rngs(0))
    with_switches = LeNet5(LayerFactory(channel_settings=SWITCHES), rngs=nnx.Rngs(0))
    assert set(with_switches.channel_modules()) == {"conv1", "conv2", "fc1"}
    assert all(isinstance(m, DirichletSwitch) for m in with_switches.channel_modules().values())
    # The same weights (same seed) and the forward of the dense model computes what it did:
    # relu → pool → ... with no scale; the switch model's mean view equals it up to rounding of
    # C·φ/Σφ = 1.
    want = dense(x)
    # LeNet-5's forward before the hook, written out over the same layers: bit-identical.
    from bayescomp.models.pooling import max_pool_2x2

    h = max_pool_2x2(jax.nn.relu(dense.conv1(x)))
    h = max_pool_2x2(jax.nn.relu(dense.conv2(h)))
    before = dense.fc2(jax.nn.relu(dense.fc1(h.reshape(h.shape[0], -1))))
    np.testing.assert_array_equal(np.asarray(want), np.asarray(before))
    mean_view = nnx.view(with_switches, deterministic=True, raise_if_not_found=False)
    np.testing.assert_allclose(np.asarray(mean_view(x)), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_channel_kind_is_validated():
    with pytest.raises(ConfigError, match="unknown method.channel.kind"):
        LayerFactory(channel_settings={"kind": "nope"}).channel("conv1", 4)
    assert LayerFactory().channel("conv1", 4) is None


def test_kl_weight_is_linear_per_epoch_and_reaches_one():
    assert [dirichlet.kl_weight(e, 3) for e in range(4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert dirichlet.kl_weight(0, 0) == 1.0


def test_settings_refuse_bad_widths(smoke_cfg):
    from bayescomp import settings

    cfg = smoke_cfg("lenet5_dirichlet", "method.widths=[5,0,45]")
    with pytest.raises(ConfigError, match="method.widths"):
        settings.check(cfg)
    cfg = smoke_cfg("lenet5_dirichlet", "method.channel.mode=sampled")
    with pytest.raises(ConfigError, match="method.channel.mode"):
        settings.check(cfg)


# ---------------------------------------------------------------------------------------------
# The procedure


def _cfg(smoke_cfg, pretrained_dense_run, *overrides):
    return smoke_cfg("lenet5_dirichlet", "method.switches.epochs=2",
                     f"method.pretrained_run={pretrained_dense_run('lenet5')}", *overrides)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, smoke_cfg, pretrained_dense_run):
    """A smoke run (2 + 1 epochs of 2 steps) in one go: ``(cfg, run_dir, metrics)``."""
    cfg = _cfg(smoke_cfg, pretrained_dense_run)
    run_dir = tmp_path_factory.mktemp("dirichlet") / "run"
    return cfg, run_dir, dirichlet.run(cfg, run_dir)


def test_smoke_run_metrics_widths_counts_and_export(straight_run):
    cfg, run_dir, _ = straight_run
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["method"] == "dirichlet" and written["experiment"] == "lenet5_dirichlet"
    assert [h["phase"] for h in written["history"]] == ["switches", "switches", "retrain"]
    # β per epoch over the 2-epoch switch phase: 1/2, 1; no KL term in the retraining.
    assert [h["kl_weight"] for h in written["history"]] == [0.5, 1.0, 0.0]
    info = written["dirichlet"]
    assert info["kept_widths"] == {"conv1": 5, "conv2": 8, "fc1": 45}
    assert {g: len(c) for g, c in info["kept_channels"].items()} == info["kept_widths"]
    for group, size in (("conv1", 20), ("conv2", 50), ("fc1", 500)):
        means = np.asarray(info["switch_means"][group])
        assert means.shape == (size,) and means.sum() == pytest.approx(1.0, rel=1e-5)
        kept = np.asarray(info["kept_channels"][group])
        # the kept channels are the largest switches
        assert means[kept].min() >= np.delete(means, kept).max()
        assert info["kl"][group] >= 0.0

    # The pruned counts are those of a LeNet-5 built at the kept widths.
    narrow = nnx.eval_shape(lambda: LeNet5(LayerFactory(), rngs=nnx.Rngs(0), widths=(5, 8, 45)))
    want = counting.count(narrow, (28, 28, 1))
    pruned = written["counting"]["pruned"]
    assert (pruned["params"], pruned["macs"], pruned["weights"]) == (
        want.params, want.macs, want.weights)
    # 5·25 + 5·8·25 + 8·16·45 + 45·10 = 7,335 weights
    assert want.weights == 5 * 25 + 5 * 8 * 25 + 8 * 16 * 45 + 45 * 10
    assert written["counting"]["dense"]["weights"] == 430_500
    assert written["counting"]["dense"]["macs"] == 2_293_000
    assert written["weights_kept"] == want.weights

    # The exported (physically smaller) network has the logits of the masked model.
    quantized = quantize.load_quantized(run_dir / quantize.QUANTIZED_FILE)
    model = quantize.quantized_model(LeNet5, quantized, input_shape=(28, 28, 1), num_classes=10)
    masks = dict(zip(quantized.names, quantized.masks))
    exported = export_model(model, masks, input_shape=(28, 28, 1))
    x = runs.load_run_dataset(cfg).x_test[:64]
    want_logits = np.asarray(model(jnp.asarray(x)))
    got = np.asarray(exported(jnp.asarray(x)))
    np.testing.assert_allclose(got, want_logits, rtol=1e-5, atol=1e-5)
    # physically smaller: conv1 writes 5 channels, conv2 reads 5 and writes 8
    assert exported.network.conv1.kernel.shape[-1] == 5
    assert tuple(exported.network.conv2.kernel.shape[-2:]) == (5, 8)


def test_compress_writes_and_decodes_the_pruned_network(straight_run, tmp_path):
    """``python -m bayescomp.compress`` rebuilds LeNet-5 from the file (no switches there)."""
    from bayescomp import compress

    _, straight_dir, straight = straight_run
    run_dir = tmp_path / "run"
    shutil.copytree(straight_dir, run_dir)
    measured = compress.compress_run(run_dir)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["compressed_test_error"] == straight["quantized_test_error"]
    assert measured["compressed_file"]


def test_resume_after_an_interruption_between_phases(straight_run, pretrained_dense_run,
                                                     smoke_cfg, tmp_path):
    """Stopped after the switch phase: the rerun restores it, recomputes the same channels and
    retrains only the masked network, ending where the uninterrupted run ended."""
    cfg, straight_dir, straight = straight_run
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(straight_dir, resumed_dir)
    for path in ("checkpoints/retrain", "metrics.json", quantize.QUANTIZED_FILE):
        target = resumed_dir / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    resumed = dirichlet.run(cfg, resumed_dir)
    assert resumed["history"][:2] == straight["history"][:2]  # the switches were not retrained
    assert [h["phase"] for h in resumed["history"]] == ["switches", "switches", "retrain"]
    assert resumed["dirichlet"]["kept_channels"] == straight["dirichlet"]["kept_channels"]
    for field in ("loss", "test_error"):
        assert resumed["history"][2][field] == pytest.approx(straight["history"][2][field],
                                                             rel=1e-6, abs=1e-7)
    assert resumed["quantized_test_error"] == straight["quantized_test_error"]

    # A finished run rerun trains nothing.
    again = dirichlet.run(cfg, resumed_dir)
    assert again["history"] == resumed["history"]
    assert again["train_seconds"] == resumed["train_seconds"]


def test_the_ranking_control_of_a_run_measures_the_network_the_run_pruned(straight_run,
                                                                            tmp_path, capsys):
    from bayescomp import ranking_control

    _, run_dir, metrics = straight_run
    out = tmp_path / "control.json"
    assert ranking_control.main([str(run_dir), "--draws", "2", "--fractions", "0.5",
                                 "--out", str(out)]) == 0
    control = json.loads(out.read_text())
    # The unpruned error and the error at the run's own ranking are the run's (and
    # main() refuses any other), though random masks were applied to copies in between.
    assert control["dense_error"] == pytest.approx(metrics["pretrained_test_error"], abs=0.05)
    own, half = control["rows"]
    assert own["kept_widths"] == metrics["dirichlet"]["kept_widths"]
    assert own["switches"] == pytest.approx(metrics["dirichlet"]["error_after_pruning"],
                                            abs=0.05)
    assert half["kept_widths"] == {"conv1": 10, "conv2": 25, "fc1": 250}
    assert len(half["random"]) == 2
    assert control["batch_norms"] == 0 and control["bn_recalibration_examples"] == 0
    # LeNet-5 has no BatchNorm to re-estimate: one line, exit 2.
    assert ranking_control.main([str(run_dir), "--recalibrate-bn", "100"]) == 2
    assert "lenet5 has no BatchNorm" in capsys.readouterr().err


def test_automatic_widths_from_the_switch_mass(smoke_cfg, pretrained_dense_run, tmp_path):
    cfg = _cfg(smoke_cfg, pretrained_dense_run, "method.widths=null", "method.mass=0.5",
               "method.switches.epochs=1", "trainer.epochs=1")
    metrics = dirichlet.run(cfg, tmp_path)
    info = metrics["dirichlet"]
    assert info["width_rule"] == "mass" and info["mass"] == 0.5
    from bayescomp.channel_selection import mass_widths

    means = {g: np.asarray(v) for g, v in info["switch_means"].items()}
    assert info["kept_widths"] == mass_widths(means, 0.5)


def test_widths_as_one_share_of_every_group(smoke_cfg, pretrained_dense_run, tmp_path):
    from bayescomp import settings

    # ⌈0.3·C⌉ of conv1 (20), conv2 (50), fc1 (500): 6, 15, 150; the switches pick which.
    cfg = _cfg(smoke_cfg, pretrained_dense_run, "method.widths=null", "method.keep_fraction=0.3",
               "method.switches.epochs=1", "trainer.epochs=1")
    info = dirichlet.run(cfg, tmp_path)["dirichlet"]
    assert info["width_rule"] == "fraction" and info["keep_fraction"] == 0.3
    assert info["mass"] is None
    assert info["kept_widths"] == {"conv1": 6, "conv2": 15, "fc1": 150}
    for group, channels in info["kept_channels"].items():
        means = np.asarray(info["switch_means"][group])
        assert means[channels].min() >= np.delete(means, channels).max()
    # One rule at a time, and a share in (0, 1].
    both = _cfg(smoke_cfg, pretrained_dense_run, "method.keep_fraction=0.3")
    with pytest.raises(ConfigError, match="keep one and set the other to null"):
        dirichlet.run(both, tmp_path / "both")
    with pytest.raises(ConfigError, match="method.keep_fraction"):
        settings.check(_cfg(smoke_cfg, pretrained_dense_run, "method.widths=null",
                            "method.keep_fraction=1.5"))


def test_wrong_number_of_widths_is_one_line_error(smoke_cfg, pretrained_dense_run, tmp_path):
    cfg = _cfg(smoke_cfg, pretrained_dense_run, "method.widths=[5,8]")
    with pytest.raises(ConfigError, match="one width per prunable group"):
        dirichlet.run(cfg, tmp_path)


@pytest.mark.parametrize("allocate", ["uniform", "global"])
def test_widths_at_a_multiply_add_budget(smoke_cfg, pretrained_dense_run, tmp_path, allocate):
    # 600,000 of LeNet-5's 2,293,000 multiply-adds.
    cfg = _cfg(smoke_cfg, pretrained_dense_run, "method.widths=null", "method.budget.macs=600000",
               f"method.budget.allocate={allocate}", "method.switches.epochs=1",
               "trainer.epochs=1")
    metrics = dirichlet.run(cfg, tmp_path)
    info = metrics["dirichlet"]
    assert info["width_rule"] == "budget"
    assert info["budget"] == {"macs": 600000, "allocate": allocate}
    assert metrics["counting"]["pruned"]["macs"] <= 600_000
    def macs(w):  # LeNet-5 on 28x28x1 by hand
        return 14_400 * w["conv1"] + 1_600 * w["conv1"] * w["conv2"] + 16 * w["conv2"] * w[
            "fc1"] + 10 * w["fc1"]

    assert metrics["counting"]["pruned"]["macs"] == macs(info["kept_widths"])
    if allocate == "uniform":  # the largest share that fits: 0.46 -> 10-23-230, 598,940
        assert info["kept_widths"] == {"conv1": 10, "conv2": 23, "fc1": 230}
    else:  # remove the lowest C·s of the whole network while over the budget
        means = {g: np.asarray(v) for g, v in info["switch_means"].items()}
        widths = {g: m.size for g, m in means.items()}
        for _, _, group in sorted((round(m.size * v / m.sum(), 9), i, g)
                                  for i, (g, m) in enumerate(means.items()) for v in m):
            if macs(widths) <= 600_000:
                break
            if widths[group] > 1:
                widths[group] -= 1
        assert info["kept_widths"] == widths
    # with the budget, the retraining is a phase of these channels only
    assert metrics["history"][-1]["phase"].startswith("retrain-")


def test_a_budget_below_every_network_is_refused_before_training(smoke_cfg, pretrained_dense_run,
                                                                  tmp_path):
    cfg = _cfg(smoke_cfg, pretrained_dense_run, "method.widths=null", "method.budget.macs=1000")
    with pytest.raises(ConfigError, match="no network within 1,000 multiply-adds"):
        dirichlet.run(cfg, tmp_path)
    assert not (tmp_path / "metrics.json").exists()
    both = _cfg(smoke_cfg, pretrained_dense_run, "method.budget.macs=600000")
    with pytest.raises(ConfigError, match=r"method.widths=\[5, 8, 45\] and "
                                          "method.budget.macs=600000 each set the kept widths; "
                                          "keep one and set the other to null"):
        dirichlet.run(both, tmp_path / "both")
    three = _cfg(smoke_cfg, pretrained_dense_run, "method.budget.macs=600000",
                 "method.keep_fraction=0.5")
    with pytest.raises(ConfigError, match=r"method.widths=\[5, 8, 45\], "
                                          "method.keep_fraction=0.5 and method.budget.macs=600000"
                                          " each set the kept widths; keep one and set the "
                                          "others to null"):
        dirichlet.run(three, tmp_path / "three")
