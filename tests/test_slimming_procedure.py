"""Network slimming (Liu et al., ICCV 2017) end to end, on LeNet-5 and a tiny ResNet.

Smoke runs of 1 + 1 epochs of 2 steps on synthetic data: the global threshold prunes the
configured share of the prunable channels and never empties a layer, ``metrics.json`` has the
kept widths and the counting of a network of those widths, the fine-tuned network is exported
with the masked one's logits (a ResNet's residual streams pruned too), a finished run rerun
trains nothing, and another percent fine-tunes its own channels from the same sparsity training.
"""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import counting, models, runs
from bayescomp.compression import quantize
from bayescomp.compression.export import export_model
from bayescomp.nn import LayerFactory
from bayescomp.procedures import slimming

NARROW_LENET = "model.widths=[6,8,12]"


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory, smoke_cfg):
    """A LeNet-5 smoke run (2 sparsity steps, 2 fine-tuning steps): ``(cfg, run_dir, metrics)``."""
    cfg = smoke_cfg("lenet5_slimming", NARROW_LENET)
    run_dir = tmp_path_factory.mktemp("slimming") / "lenet"
    return cfg, run_dir, slimming.run(cfg, run_dir)


def _exported_matches_masked(cfg, run_dir, model_cls, input_shape):
    quantized = quantize.load_quantized(run_dir / quantize.QUANTIZED_FILE)
    model = quantize.quantized_model(model_cls, quantized, input_shape=input_shape,
                                     num_classes=10)
    exported = export_model(model, dict(zip(quantized.names, quantized.masks)),
                            input_shape=input_shape)
    x = jnp.asarray(runs.load_run_dataset(cfg).x_test[:32])
    want = np.asarray(nnx.view(model, use_running_average=True, raise_if_not_found=False)(x))
    np.testing.assert_allclose(np.asarray(exported(x)), want, rtol=1e-4, atol=1e-4)
    return exported


def test_lenet5_prunes_the_share_asked_and_counts_the_kept_widths(lenet_run):
    cfg, run_dir, _ = lenet_run
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["method"] == "slimming" and written["experiment"] == "lenet5_slimming"
    phases = [h["phase"] for h in written["history"]]
    assert phases[0] == "train" and phases[1].startswith("finetune-") and len(phases) == 2
    assert [h["kl_weight"] for h in written["history"]] == [1.0, 0.0]  # no penalty in fine-tuning
    info = written["slimming"]
    # 70 % of the 26 prunable channels: ⌊0.7·26⌋ = 18 at or below the threshold
    assert info["prunable_channels"] == 26 and info["pruned_channels"] == 18
    assert all(k >= 1 for k in info["kept_widths"].values())
    assert info["penalty"] == {path: pytest.approx(1e-4) for path in info["scales"]}
    scales = np.concatenate([np.abs(v) for v in info["scales"].values()])
    assert np.sum(scales <= info["threshold"]) == 18
    assert written["pruned_test_error"] == info["error_after_finetuning"]
    widths = tuple(info["kept_widths"][g] for g in ("conv1", "conv2", "fc1"))
    narrow = nnx.eval_shape(lambda: models.LeNet5(LayerFactory(), rngs=nnx.Rngs(0),
                                                  widths=widths))
    want = counting.count(narrow, (28, 28, 1))
    assert (written["counting"]["pruned"]["params"], written["weights_kept"]) == (
        want.params, want.weights)
    _exported_matches_masked(cfg, run_dir, models.LeNet5, (28, 28, 1))


def test_resnet_residual_streams_pruned_export_keeps_the_logits(smoke_cfg, tmp_path):
    """All of ResNet-8's groups, residual streams included, at percent 0.9: every layer keeps at
    least one channel and the exported network computes the masked one's logits."""
    cfg = smoke_cfg("resnet20_slimming_cpu", "data=synthetic_cifar", "model=resnet8",
                    "model.widths=[4,8,8]", "method.prune.groups=all",
                    "method.prune.percent=0.9")
    metrics = slimming.run(cfg, tmp_path)
    info = metrics["slimming"]
    assert info["penalty"]["stem_bn"] == pytest.approx(1e-5)  # the paper's ResNet s
    assert set(info["kept_widths"]) == {"stage1", "stage1.0.conv1", "stage2", "stage2.0.conv1",
                                        "stage3", "stage3.0.conv1"}
    assert all(k >= 1 for k in info["kept_widths"].values())
    assert info["pruned_fraction"] > 0.5
    for earlier, later in (("stage1", "stage2"), ("stage2", "stage3")):
        assert set(info["kept_channels"][earlier]) <= set(info["kept_channels"][later])
    assert metrics["counting"]["macs_ratio"] > 1
    _exported_matches_masked(cfg, tmp_path, models.get("resnet8"), (32, 32, 3))


def test_rerun_trains_nothing_and_another_percent_fine_tunes_anew(lenet_run, smoke_cfg,
                                                                  tmp_path):
    cfg, lenet_dir, metrics = lenet_run
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_dir, run_dir)
    again = slimming.run(cfg, run_dir)
    assert again["history"] == metrics["history"]
    assert again["train_seconds"] == metrics["train_seconds"]
    other = slimming.run(smoke_cfg("lenet5_slimming", NARROW_LENET, "method.prune.percent=0.3"),
                         run_dir)
    # the sparsity training is restored; a fine-tuning of the new channels is trained
    assert other["history"][0] == metrics["history"][0]
    assert other["slimming"]["pruned_channels"] == 7  # ⌊0.3·26⌋
    assert other["history"][1]["phase"] != metrics["history"][1]["phase"]


def _lenet5_macs(widths):
    """LeNet-5 on 28x28x1 by hand (tests/test_budget_widths.py)."""
    c1, c2, f1 = widths["conv1"], widths["conv2"], widths["fc1"]
    return 25 * 576 * c1 + 25 * c1 * 64 * c2 + 16 * c2 * f1 + 10 * f1


def test_a_multiply_add_budget_replaces_the_percent(lenet_run, smoke_cfg, tmp_path):
    cfg, lenet_dir, metrics = lenet_run
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_dir, run_dir)
    # 6-8-12 has 164,856 multiply-adds; 100,000 forces channels out of the convs.
    budgeted = slimming.run(smoke_cfg("lenet5_slimming", NARROW_LENET,
                                      "method.budget.macs=100000"), run_dir)
    assert budgeted["history"][0] == metrics["history"][0]  # the sparsity training restored
    info = budgeted["slimming"]
    assert info["budget"] == {"macs": 100000, "allocate": "global"} and info["percent"] is None
    assert budgeted["counting"]["pruned"]["macs"] == _lenet5_macs(info["kept_widths"]) <= 100_000
    # Independently: drop the smallest |γ| of the whole network while it is over the budget,
    # never a layer's last channel.
    scales = {path.split("_")[0]: np.abs(np.asarray(v)) for path, v in info["scales"].items()}
    widths = {g: s.size for g, s in scales.items()}
    for _, group in sorted((v, g) for g, s in scales.items() for v in s):
        if _lenet5_macs(widths) <= 100_000:
            break
        if widths[group] > 1:
            widths[group] -= 1
    assert info["kept_widths"] == widths
    for group, channels in info["kept_channels"].items():
        assert scales[group][channels].min() >= np.delete(scales[group], channels).max(
            initial=0.0)
    _exported_matches_masked(cfg, run_dir, models.LeNet5, (28, 28, 1))


def test_an_unreachable_budget_is_refused_before_training(smoke_cfg, tmp_path):
    from bayescomp.errors import ConfigError

    with pytest.raises(ConfigError, match="no network within 1,000 multiply-adds"):
        slimming.run(smoke_cfg("lenet5_slimming", NARROW_LENET, "method.budget.macs=1000"),
                     tmp_path / "small")
    assert not (tmp_path / "small" / "metrics.json").exists()
    with pytest.raises(ConfigError, match="needs method.prune.groups=internal"):
        slimming.run(smoke_cfg("lenet5_slimming", NARROW_LENET, "method.budget.macs=100000",
                               "method.prune.groups=all"), tmp_path / "all")
