"""Variational CNN pruning (Zhao et al., CVPR 2019) end to end, on LeNet-5 and a tiny ResNet.

Smoke runs of 2 steps on synthetic data: ``metrics.json`` has the kept widths and the counting
of a network of those widths, the exported (physically smaller) network has the logits of the
masked one (a ResNet with its residual streams pruned too), ``bayescomp.compress`` decodes the
file, a finished run rerun trains nothing, and a rerun with other pruning settings re-evaluates
without training.
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
from bayescomp.errors import ConfigError
from bayescomp.nn import LayerFactory
from bayescomp.procedures import vcnn

NARROW_LENET = "model.widths=[6,8,12]"


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory, smoke_cfg):
    """A 2-step LeNet-5 smoke run: ``(cfg, run_dir, metrics)``."""
    cfg = smoke_cfg("lenet5_vcnn", NARROW_LENET)
    run_dir = tmp_path_factory.mktemp("vcnn") / "lenet"
    return cfg, run_dir, vcnn.run(cfg, run_dir)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, smoke_cfg):
    """A 2-step ResNet-8 smoke run pruning residual streams too, with thresholds that remove all
    but the largest |μ| of each BatchNorm (no fine-tuning: the paper's setting)."""
    cfg = smoke_cfg("resnet20_vcnn_cpu", "data=synthetic_cifar", "model=resnet8",
                    "model.widths=[4,8,8]", "method.prune.groups=all", "method.prune.tau=100")
    run_dir = tmp_path_factory.mktemp("vcnn") / "resnet"
    return cfg, run_dir, vcnn.run(cfg, run_dir)


@pytest.fixture(scope="module")
def resnet_internal_run(tmp_path_factory, smoke_cfg):
    """The experiment's own setting on a ResNet-8: block-internal channels only (the streams'
    BatchNorms plain, the others saliencies), a τ that removes all but the largest |μ|."""
    cfg = smoke_cfg("resnet20_vcnn_cpu", "data=synthetic_cifar", "model=resnet8",
                    "model.widths=[4,8,8]", "method.prune.tau=100")
    run_dir = tmp_path_factory.mktemp("vcnn") / "resnet_internal"
    return cfg, run_dir, vcnn.run(cfg, run_dir)


def _exported_matches_masked(cfg, run_dir, model_cls, input_shape, num_classes):
    quantized = quantize.load_quantized(run_dir / quantize.QUANTIZED_FILE)
    model = quantize.quantized_model(model_cls, quantized, input_shape=input_shape,
                                     num_classes=num_classes)
    masks = dict(zip(quantized.names, quantized.masks))
    exported = export_model(model, masks, input_shape=input_shape)
    x = jnp.asarray(runs.load_run_dataset(cfg).x_test[:32])
    want = np.asarray(nnx.view(model, use_running_average=True, raise_if_not_found=False)(x))
    np.testing.assert_allclose(np.asarray(exported(x)), want, rtol=1e-4, atol=1e-4)
    return exported


def test_lenet5_metrics_widths_counting_and_export(lenet_run):
    assert lenet_run[2]["vcnn"]["error_after_pruning_statistics_reestimated"] is None  # no BN
    cfg, run_dir, _ = lenet_run
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["method"] == "vcnn" and written["experiment"] == "lenet5_vcnn"
    assert [h["phase"] for h in written["history"]] == ["train"]
    info = written["vcnn"]
    assert info["widths"] == {"conv1": 6, "conv2": 8, "fc1": 12}
    assert info["tau"] == 0.02 and info["theta"] is None and info["prior"] == "TiedGaussian"
    assert set(info["saliency_means"]) == {"conv1_switch", "conv2_switch", "fc1_switch"}
    assert all(k >= 0 for k in info["kl"].values())
    widths = tuple(info["kept_widths"][g] for g in ("conv1", "conv2", "fc1"))
    narrow = nnx.eval_shape(lambda: models.LeNet5(LayerFactory(), rngs=nnx.Rngs(0),
                                                  widths=widths))
    want = counting.count(narrow, (28, 28, 1))
    pruned = written["counting"]["pruned"]
    assert (pruned["params"], pruned["macs"]) == (want.params, want.macs)
    assert written["weights_kept"] == want.weights
    assert written["pruned_test_error"] == info["error_after_pruning"]
    assert info["error_after_finetuning"] is None  # no fine-tuning by default
    _exported_matches_masked(cfg, run_dir, models.LeNet5, (28, 28, 1), 10)


def test_compress_decodes_the_pruned_network(lenet_run, tmp_path):
    from bayescomp import compress

    _, lenet_dir, metrics = lenet_run
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_dir, run_dir)
    measured = compress.compress_run(run_dir)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["compressed_test_error"] == metrics["quantized_test_error"]
    assert measured["compressed_file"]


def test_resnet_residual_streams_pruned_export_keeps_the_logits(resnet_run):
    cfg, run_dir, metrics = resnet_run
    info = metrics["vcnn"]
    assert info["groups"] == "all"
    assert [h["phase"] for h in metrics["history"]] == ["train"]
    kept = info["kept_widths"]
    # every BatchNorm keeps one channel; a stream keeps one per BatchNorm on it at most, and
    # each stage's stream keeps the channels the previous stream keeps (option-A shortcut)
    assert kept["stage1.0.conv1"] == kept["stage2.0.conv1"] == kept["stage3.0.conv1"] == 1
    for earlier, later in (("stage1", "stage2"), ("stage2", "stage3")):
        assert set(info["kept_channels"][earlier]) <= set(info["kept_channels"][later])
    assert info["pruned_channels"] > 0 and metrics["counting"]["macs_ratio"] > 1
    exported = _exported_matches_masked(cfg, run_dir, models.get("resnet8"), (32, 32, 3), 10)
    assert exported.network.stem.kernel.shape[-1] == kept["stage1"]
    # The diagnostic: the pruned network with its BatchNorm statistics re-estimated on training
    # images, recomputed here from the exported network (whose statistics are the trained ones).
    from bayescomp import threshold_selection
    from bayescomp.evaluation import Evaluator
    from bayescomp.nn.norm import reestimate_statistics

    dataset = runs.load_run_dataset(cfg)
    images, _ = threshold_selection.selection_subset(dataset.x_train, dataset.y_train,
                                                     vcnn.RESTAT_EXAMPLES, int(cfg.seed))
    assert info["restat_examples"] == min(vcnn.RESTAT_EXAMPLES, len(dataset.x_train))
    network = exported.network
    reestimate_statistics(network, jnp.asarray(images))
    want = Evaluator(int(cfg.trainer.eval_batch_size)).error(
        network, jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test))
    assert info["error_after_pruning_statistics_reestimated"] == pytest.approx(want, abs=0.01)
    assert info["error_before_pruning_statistics_reestimated"] is not None


def test_rerun_trains_nothing_and_new_thresholds_only_reevaluate(lenet_run, smoke_cfg,
                                                                 tmp_path):
    cfg, lenet_dir, metrics = lenet_run
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_dir, run_dir)
    again = vcnn.run(cfg, run_dir)
    assert again["history"] == metrics["history"]
    assert again["train_seconds"] == metrics["train_seconds"]
    assert again["vcnn"]["kept_channels"] == metrics["vcnn"]["kept_channels"]
    # τ chosen on training data within a tolerance: a re-evaluation of the same training
    selected = vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET,
                                  "method.prune.select={tolerance: 100, examples: 64}"),
                        run_dir)
    assert selected["history"] == metrics["history"]
    trace = selected["vcnn"]["selection"]
    assert trace["tolerance"] == 100 and selected["vcnn"]["tau"] == trace["tau"]
    # a 100-point tolerance prunes every channel the rule may: all but one per layer
    assert selected["vcnn"]["kept_widths"] == {"conv1": 1, "conv2": 1, "fc1": 1}
    # the paper's σ < θ condition, with θ below every σ (2 steps leave σ near its 0.05 start):
    # no channel is eligible, whatever τ
    strict = vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET, "method.prune.theta=0.01",
                                "method.prune.tau=100"), run_dir)
    assert strict["vcnn"]["theta"] == 0.01 and strict["vcnn"]["pruned_channels"] == 0


def test_wrong_method_is_one_line_error(smoke_cfg, tmp_path):
    cfg = smoke_cfg("lenet5_dense")
    with pytest.raises(ConfigError, match="method.norm.kind=vcnn"):
        vcnn.run(cfg, tmp_path)


def test_a_multiply_add_budget_replaces_tau(lenet_run, smoke_cfg, tmp_path):
    from bayescomp.channel_selection import fraction_widths

    cfg, lenet_dir, metrics = lenet_run
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_dir, run_dir)
    budgeted = vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET, "method.budget.macs=100000",
                                  "method.budget.allocate=uniform"), run_dir)
    assert budgeted["history"] == metrics["history"]  # a re-evaluation of the same training
    info = budgeted["vcnn"]
    assert info["budget"] == {"macs": 100000, "allocate": "uniform"} and info["tau"] is None

    def macs(w):  # LeNet-5 on 28x28x1 by hand
        return 14_400 * w["conv1"] + 1_600 * w["conv1"] * w["conv2"] + 16 * w["conv2"] * w[
            "fc1"] + 10 * w["fc1"]

    assert budgeted["counting"]["pruned"]["macs"] == macs(info["kept_widths"]) <= 100_000
    # The widest single share of 6-8-12 within the budget, found by scanning shares.
    sizes = {"conv1": np.zeros(6), "conv2": np.zeros(8), "fc1": np.zeros(12)}
    fitting = [w for f in np.linspace(0.01, 1, 991) if macs(w := fraction_widths(sizes, f))
               <= 100_000]
    assert info["kept_widths"] == max(fitting, key=macs)
    means = {path.split("_")[0]: np.abs(np.asarray(v))
             for path, v in info["saliency_means"].items()}
    for group, channels in info["kept_channels"].items():
        assert means[group][channels].min() >= np.delete(means[group], channels).max(initial=0)
    with pytest.raises(ConfigError, match="method.prune.select both choose"):
        vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET, "method.budget.macs=100000",
                           "method.prune.select={tolerance: 1, examples: 64}"), run_dir)
    with pytest.raises(ConfigError, match="method.prune.theta=0.01 would be ignored"):
        vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET, "method.budget.macs=100000",
                           "method.prune.theta=0.01"), run_dir)


def test_a_finished_run_is_fine_tuned_anew_and_ranked_by_snr_without_training_again(
        lenet_run, smoke_cfg, tmp_path):
    cfg, lenet_dir, metrics = lenet_run
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_dir, run_dir)
    trained = len(metrics["history"])
    # Fine-tuning settings shape only the later phase: the training phase is restored, not
    # retrained (its checkpoint was written with finetune.epochs = 0).
    tuned = vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET, "method.budget.macs=100000",
                               "method.prune.statistic=snr", "method.finetune.epochs=1"),
                     run_dir)
    assert tuned["history"][:trained] == metrics["history"]
    assert len(tuned["history"]) > trained  # the fine-tuning's epoch
    info = tuned["vcnn"]
    assert info["statistic"] == "snr" and info["finetune_epochs"] == 1
    assert info["error_after_finetuning"] is not None
    # The channels kept are the largest |μ|/σ of each group.
    for group, channels in info["kept_channels"].items():
        path = next(p for p in info["saliency_means"] if p.startswith(group))
        snr = np.abs(np.asarray(info["saliency_means"][path])) / np.asarray(
            info["saliency_stds"][path])
        assert snr[channels].min() >= np.delete(snr, channels).max(initial=0)
    with pytest.raises(ConfigError, match="method.prune.statistic"):
        vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET, "method.prune.statistic=median"),
                 run_dir)
    with pytest.raises(ConfigError, match="theta=0.01 compares sigma in absolute units"):
        vcnn.run(smoke_cfg("lenet5_vcnn", NARROW_LENET, "method.prune.statistic=snr",
                           "method.prune.theta=0.01"), run_dir)


@pytest.mark.parametrize("name", ["resnet20", "resnet164", "vgg16"])
@pytest.mark.parametrize("groups", ["internal", "all"])
def test_saliencies_sit_exactly_on_the_channels_the_method_prunes(name, groups):
    # A saliency is sampled noise with a KL towards zero: on a channel the method never removes
    # it only perturbs training. The BatchNorms that carry one must be exactly those of the
    # groups channel_pruning prunes in that mode (the model's own group declarations), and with
    # groups=all every BatchNorm of a prunable group.
    from bayescomp.models.graph import batch_norms
    from bayescomp.nn.saliency_norm import SaliencyBatchNorm
    from bayescomp.procedures import channel_pruning

    factory = LayerFactory(norm_settings={"kind": "vcnn"}, prune_streams=groups == "all")
    model = nnx.eval_shape(lambda: models.get(name)(factory, rngs=nnx.Rngs(0)))
    saliency = {path for path, norm in batch_norms(model).items()
                if isinstance(norm, SaliencyBatchNorm)}
    pruned = {path for modules in channel_pruning.prunable_factors(
        model, SaliencyBatchNorm, groups).values() for path in modules}
    declared = {path for group in model.channel_groups() if group.prunable
                for path in group.norms}
    assert saliency == pruned
    if groups == "all" or name == "vgg16":
        assert saliency == declared == set(batch_norms(model))
    else:  # the streams' BatchNorms are plain: ResNet-20's stem and every block's second
        assert saliency < declared
        if name == "resnet20":
            assert saliency == {f"stage{s}.{b}.bn1" for s in (1, 2, 3) for b in range(3)}


def test_resnet_block_internal_channels_with_plain_stream_batch_norms(resnet_internal_run):
    cfg, run_dir, metrics = resnet_internal_run
    info = metrics["vcnn"]
    assert info["groups"] == "internal"
    # Saliencies (and their KL) only on the blocks' first BatchNorms; the streams keep all.
    assert set(info["kl"]) == {"stage1.0.bn1", "stage2.0.bn1", "stage3.0.bn1"}
    kept = info["kept_widths"]
    assert kept["stage1.0.conv1"] == kept["stage2.0.conv1"] == kept["stage3.0.conv1"] == 1
    assert not {"stage1", "stage2", "stage3"} & set(kept)  # streams: not prunable here
    exported = _exported_matches_masked(cfg, run_dir, models.get("resnet8"), (32, 32, 3), 10)
    assert exported.network.stage2[0].conv1.kernel.shape[-1] == 1
    assert exported.network.stem.kernel.shape[-1] == 4  # the stream keeps its channels


def test_a_rerun_with_other_groups_is_refused_naming_the_setting(resnet_internal_run, smoke_cfg,
                                                                 tmp_path):
    # prune.groups decides which BatchNorms carry saliencies: the checkpoint of a groups=internal
    # run has no saliencies on the streams, so it cannot be re-evaluated as groups=all.
    _, run_dir, _ = resnet_internal_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = smoke_cfg("resnet20_vcnn_cpu", "data=synthetic_cifar", "model=resnet8",
                    "model.widths=[4,8,8]", "method.prune.tau=100", "method.prune.groups=all")
    with pytest.raises(ConfigError, match=r"method\.prune\.groups: 'internal' -> 'all'"):
        vcnn.run(cfg, copy)


def test_a_resnet_run_compresses_and_its_file_decodes(resnet_internal_run, tmp_path):
    # The decoder rebuilds the model's shapes through a weightless stand-in of the layer
    # factory (codec._ShapeRecorder), which must take every argument a model passes, the
    # stream marking of a ResNet's BatchNorms included; the tables then count from the file.
    from bayescomp import compress, tables
    from bayescomp.compression import codec

    _, resnet_dir, metrics = resnet_internal_run
    run_dir = tmp_path / "run"
    shutil.copytree(resnet_dir, run_dir)
    compress.compress_run(run_dir)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["compressed_test_error"] == metrics["quantized_test_error"]
    decoded = codec.decode_network((run_dir / "model.bcz").read_bytes())
    assert decoded.model_name == "resnet8"
    counted = tables.run_counting({"_path": str(run_dir)})  # from the file alone
    assert counted["pruned"]["macs"] == metrics["counting"]["pruned"]["macs"]
