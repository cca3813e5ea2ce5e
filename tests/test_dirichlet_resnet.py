"""Dirichlet pruning (Adamczewski & Park, AISTATS 2021) of the CIFAR ResNets.

The switch hook leaves every other method's ResNet unchanged (no Variable, no operation) and
puts the switch on relu(bn1(conv1(x))); the switch phase on a BatchNorm network trains the
switches alone, with every loaded weight and every BatchNorm statistic bit-identical afterwards;
and a smoke run on a narrow ResNet-8 from a 2-step dense run (``pretrained_dense_run`` in
conftest) keeps the channels the switch mass says, counts them as a ResNet-8 of those widths,
retrains γ, β and the statistics on batch statistics, and exports a network with the masked
model's logits. That run compiles a dense and a Dirichlet run (~35 s on a loaded 2-core CPU),
so it is in the slow set (``pytest -m slow``).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from residual_nets import nontrivial  # tests/ is on sys.path (pytest rootdir)

from bayescomp import counting, models, pretrained, runs
from bayescomp.channel_selection import mass_widths
from bayescomp.checkpointing import Checkpointer
from bayescomp.compression import quantize
from bayescomp.compression.export import export_model
from bayescomp.errors import ConfigError
from bayescomp.loop import TrainingRun
from bayescomp.models import ResNet8, ResNet20
from bayescomp.models.graph import batch_norms, weight_layers
from bayescomp.models.pooling import global_average_pool
from bayescomp.nn import LayerFactory
from bayescomp.nn.switch import DirichletSwitch, SwitchLogit
from bayescomp.procedures import channel_pruning, dirichlet

SWITCHES = {"kind": "dirichlet", "alpha0": 0.05, "init_logit": 0.05, "mode": "integral"}
# A narrow ResNet-8 on 32x32x3 synthetic data: inner groups of 4, 8 and 8 channels.
NARROW = ("data=synthetic_cifar", "model=resnet8", "model.widths=[4,8,8]")
INNER = ("stage1.0.conv1", "stage2.0.conv1", "stage3.0.conv1")


def _paths(state) -> list[tuple[str, ...]]:
    return [tuple(map(str, path)) for path, _ in nnx.to_flat_state(state)]


def _flat(state) -> dict[tuple[str, ...], jax.Array]:
    return {tuple(map(str, path)): variable[...] for path, variable in nnx.to_flat_state(state)}


# ---------------------------------------------------------------------------------------------
# The channel hook


def _written_out_forward(model: ResNet20, x: jax.Array, inner_scales=None) -> jax.Array:
    """ResNet's forward as it was before the channel hook, written out over the same layers;
    ``inner_scales[i]`` (if given) multiplies block i's relu(bn1(conv1(x))) channel-wise. The
    ReLUs are ``jax.nn.relu`` here; the model hands them to its BatchNorms (``relu=True``),
    which with batch statistics on oneDNN apply them in the normalisation's pass, equal to this
    only to float32 rounding (``tests/nn/test_onednn_batch_norm.py``)."""
    x = jax.nn.relu(model.stem_bn(model.stem(x)))
    blocks = [block for stage in (model.stage1, model.stage2, model.stage3) for block in stage]
    for i, block in enumerate(blocks):
        h = jax.nn.relu(block.bn1(block.conv1(x)))
        if inner_scales is not None:
            h = h * inner_scales[i]
        h = block.bn2(block.conv2(h))
        if block.stride > 1:
            x = x[:, :: block.stride, :: block.stride, :]
        if h.shape[-1] > x.shape[-1]:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, h.shape[-1] - x.shape[-1])))
        x = jax.nn.relu(h + x)
    return model.fc(global_average_pool(x))


@pytest.mark.parametrize("factory", [
    LayerFactory(),
    LayerFactory(posterior="gaussian", prior="log_uniform"),
    # VCNN and slimming have a `channel` section (for LeNet-5) and carry their factor in their
    # BatchNorms: a ResNet gets no second factor from them, with or without their `norm`.
    LayerFactory(norm_settings={"kind": "vcnn"}, channel_settings={"kind": "vcnn"}),
    LayerFactory(norm_settings={"kind": "slimming", "n_train": 512},
                 channel_settings={"kind": "slimming", "n_train": 512}),
    LayerFactory(channel_settings={"kind": "vcnn"}),
], ids=["dense", "svd", "vcnn", "slimming", "vcnn_channel_only"])
def test_methods_without_channel_modules_build_the_same_resnet20(factory):
    model = nnx.eval_shape(lambda: ResNet20(factory, rngs=nnx.Rngs(0), widths=(4, 8, 8),
                                            input_shape=(8, 8, 3)))
    assert model.channel_modules() == {}
    assert not nnx.state(model, SwitchLogit)
    # Every Variable belongs to a weight layer or a BatchNorm: nothing was added.
    owners = [name for name, _ in weight_layers(model)] + list(batch_norms(model))
    for path in _paths(nnx.state(model)):
        assert any(".".join(path).startswith(owner + ".") for owner in owners), path


def test_a_resnet20_without_channel_modules_computes_what_it_did(key):
    x = jax.random.normal(key(), (4, 8, 8, 3))
    dense = nontrivial(ResNet20(LayerFactory(), rngs=nnx.Rngs(0), widths=(4, 8, 8),
                                input_shape=(8, 8, 3)))
    evaluated = nnx.view(dense, use_running_average=True, raise_if_not_found=False)
    np.testing.assert_array_equal(np.asarray(evaluated(x)),
                                  np.asarray(_written_out_forward(evaluated, x)))
    # Batch statistics too (they update the running averages: compare on copies); the fused
    # ReLU's batch-statistics BatchNorm rounds differently from the separate one (see above):
    # float32 rounding of 8x8x4-position sums through 19 layers, far below a wrong layer (O(1)).
    training, written_out = nnx.clone(dense), nnx.clone(dense)
    np.testing.assert_allclose(np.asarray(training(x)),
                               np.asarray(_written_out_forward(written_out, x)),
                               rtol=1e-4, atol=1e-5)

    # With switches: one per block's inner group, the only new Variables, each scaling
    # relu(bn1(conv1(x))) by C·E[s] in the mean view.
    switched = ResNet20(LayerFactory(channel_settings=SWITCHES), rngs=nnx.Rngs(0),
                        widths=(4, 8, 8), input_shape=(8, 8, 3))
    modules = switched.channel_modules()
    assert list(modules) == [f"stage{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert all(isinstance(m, DirichletSwitch) for m in modules.values())
    assert [m.num_channels for m in modules.values()] == [4] * 3 + [8] * 6
    new = set(_paths(nnx.state(switched))) - set(_paths(nnx.state(dense)))
    assert new == {(f"stage{s}", str(b), "conv1_switch", "logit")
                   for s in (1, 2, 3) for b in range(3)}
    nnx.update(switched, nnx.state(dense))
    for module in modules.values():
        module.logit[...] = jax.random.normal(key(), module.logit[...].shape)
    scales = [m.num_channels * m.mean() for m in modules.values()]
    mean_view = nnx.view(switched, deterministic=True, use_running_average=True,
                         raise_if_not_found=False)
    np.testing.assert_allclose(np.asarray(mean_view(x)),
                               np.asarray(_written_out_forward(evaluated, x, scales)),
                               rtol=1e-5, atol=1e-5)
    # and not the unscaled network: the scales matter
    assert not np.allclose(np.asarray(mean_view(x)), np.asarray(evaluated(x)), atol=1e-3)


@pytest.mark.parametrize("name, groups", [("vgg16", [f"conv{i}" for i in range(1, 14)] + ["fc1"]),
                                          ("vgg19", [f"conv{i}" for i in range(1, 17)])])
def test_vggs_switch_every_group_and_only_with_dirichlet(name, groups):
    def vgg(factory):  # abstract: only the modules matter here (and build fast)
        return nnx.eval_shape(lambda: models.get(name)(factory, rngs=nnx.Rngs(0),
                                                       widths=[4] * len(groups)))

    switched = vgg(LayerFactory(channel_settings=SWITCHES)).channel_modules()
    assert list(switched) == groups
    assert all(isinstance(m, DirichletSwitch) for m in switched.values())
    for factory in (LayerFactory(), LayerFactory(norm_settings={"kind": "vcnn"},
                                                 channel_settings={"kind": "vcnn"})):
        plain = vgg(factory)
        assert plain.channel_modules() == {} and not nnx.state(plain, SwitchLogit)


# ---------------------------------------------------------------------------------------------
# The switch phase on a BatchNorm network


def test_switch_phase_freezes_weights_and_batch_norm_statistics(smoke_cfg, tmp_path):
    """Only the switches train: weights, biases, γ, β and running statistics stay bit-identical
    (BatchNorm on its running averages, never updated)."""
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, "method.switches.epochs=1")
    dataset = runs.load_run_dataset(cfg)
    shape, classes = dataset.x_train.shape[1:], dataset.num_classes
    # A stand-in for the pretrained network: another seed, every stored number nontrivial.
    dense = nontrivial(runs.build_model(channel_pruning.plain_config(cfg), shape, classes, 1))
    model = dirichlet.switch_model(cfg, dense, shape, classes)
    assert list(dirichlet.switches_of(model)) == list(INNER)
    # Loaded: every Variable of the dense network, BatchNorm statistics included.
    frozen = _flat(nnx.state(model, nnx.Not(SwitchLogit)))
    assert frozen.keys() == _flat(nnx.state(dense)).keys()
    for path, value in _flat(nnx.state(dense)).items():
        np.testing.assert_array_equal(frozen[path], value, err_msg=str(path))
    initial_logits = _flat(nnx.state(model, SwitchLogit))

    training = TrainingRun(cfg, tmp_path, dataset)
    try:
        training.fit(model, dirichlet.switch_phase(cfg))
    finally:
        training.close()
    assert [h["phase"] for h in training.history] == [dirichlet.SWITCH_PHASE]
    for path, value in _flat(nnx.state(model, nnx.Not(SwitchLogit))).items():
        np.testing.assert_array_equal(value, frozen[path], err_msg=str(path))
    trained_logits = _flat(nnx.state(model, SwitchLogit))
    assert all(np.any(trained_logits[p] != initial_logits[p]) for p in initial_logits)


def test_residual_streams_are_refused(smoke_cfg, tmp_path):
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, "method.prune.groups=all")
    with pytest.raises(ConfigError, match="method.prune.groups=all"):
        dirichlet.run(cfg, tmp_path)


# ---------------------------------------------------------------------------------------------
# The procedure, end to end (a dense run, then switches and retraining: ~35 s of compilation)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, smoke_cfg, pretrained_dense_run):
    """``(cfg, run_dir, metrics)`` of a smoke run: 1 switch epoch and 1 retraining epoch of 2
    steps, keeping half of each group's switch mass."""
    # resnet20_dense's step decay needs more than 2 steps; the CPU recipe's cosine does not.
    dense_run = pretrained_dense_run("resnet20", *NARROW, "optimizer.schedule=cosine")
    cfg = smoke_cfg("resnet20_dirichlet_cpu", *NARROW, f"method.pretrained_run={dense_run}",
                    "method.switches.epochs=1", "method.mass=0.5")
    run_dir = tmp_path_factory.mktemp("dirichlet_resnet") / "run"
    return cfg, run_dir, dirichlet.run(cfg, run_dir)


@pytest.mark.slow
def test_smoke_run_widths_counting_retrained_batch_norm_and_export(resnet_run):
    cfg, run_dir, _ = resnet_run
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["experiment"] == "resnet20_dirichlet_cpu" and written["model"] == "resnet8"
    assert [h["phase"] for h in written["history"]] == ["switches", "retrain"]
    info = written["dirichlet"]
    assert info["width_rule"] == "mass" and info["mass"] == 0.5
    means = {g: np.asarray(v) for g, v in info["switch_means"].items()}
    assert list(means) == list(INNER)
    assert [m.size for m in means.values()] == [4, 8, 8]
    assert info["kept_widths"] == mass_widths(means, 0.5)
    widths = [info["kept_widths"][g] for g in INNER]
    assert all(k < m.size for k, m in zip(widths, means.values()))  # half the mass: pruned
    for group, kept in info["kept_channels"].items():
        assert means[group][kept].min() >= np.delete(means[group], kept).max(initial=0.0)

    # Counted as the ResNet-8 with those inner widths (streams 4, 8, 8 unpruned).
    full = (4, widths[0], 8, widths[1], 8, widths[2])
    narrow = nnx.eval_shape(lambda: ResNet8(LayerFactory(), rngs=nnx.Rngs(0), widths=full))
    want = counting.count(narrow, (32, 32, 3))
    pruned = written["counting"]["pruned"]
    assert (pruned["params"], pruned["macs"], pruned["weights"]) == (
        want.params, want.macs, want.weights)
    assert written["weights_kept"] == want.weights < written["weights_total"]

    # The switch phase's checkpoint: the pretrained network unchanged, the switches trained.
    dense, _ = pretrained.load_pretrained(cfg)
    checkpointer = Checkpointer(run_dir / "checkpoints" / dirichlet.SWITCH_PHASE,
                                read_only=True)
    dataset = runs.load_run_dataset(cfg)
    model = dirichlet.switch_model(cfg, dense, dataset.x_train.shape[1:], dataset.num_classes)
    try:
        (state,), _ = checkpointer.restore(checkpointer.latest_step(), (nnx.state(model),),
                                           prefix=True)
    finally:
        checkpointer.close()
    nnx.update(model, state)
    for path, value in _flat(nnx.state(dense)).items():
        np.testing.assert_array_equal(_flat(nnx.state(model))[path], value, err_msg=str(path))

    # The retraining trained γ, β and ran BatchNorm on batch statistics (running averages
    # moved), as the dense recipe: see it on the BatchNorms of the unpruned residual streams.
    quantized = quantize.load_quantized(run_dir / quantize.QUANTIZED_FILE)
    retrained = quantize.quantized_model(ResNet8, quantized, input_shape=(32, 32, 3),
                                         num_classes=10)
    retrained_bn, dense_bn = batch_norms(retrained), batch_norms(dense)
    streams = ("stem_bn", "stage1.0.bn2", "stage2.0.bn2", "stage3.0.bn2")
    for field in ("scale", "bias", "mean", "var"):
        for path in streams:
            assert np.any(np.asarray(getattr(retrained_bn[path], field)[...])
                          != np.asarray(getattr(dense_bn[path], field)[...])), (path, field)

    # The exported (physically smaller) network has the logits of the masked model.
    masks = dict(zip(quantized.names, quantized.masks))
    exported = export_model(retrained, masks, input_shape=(32, 32, 3))
    x = jnp.asarray(dataset.x_test[:32])
    want_logits = nnx.view(retrained, use_running_average=True, raise_if_not_found=False)(x)
    np.testing.assert_allclose(np.asarray(exported(x)), np.asarray(want_logits), rtol=1e-4,
                               atol=1e-4)
    assert exported.network.stage1[0].conv1.kernel.shape[-1] == widths[0]


@pytest.mark.slow
def test_ranking_control_with_batch_norm_statistics_reestimated(resnet_run, tmp_path):
    """--recalibrate-bn: the run's own figures are still checked on the pretrained statistics;
    each pruned copy is evaluated with statistics re-estimated on N training images."""
    from bayescomp import ranking_control
    from bayescomp.nn.norm import reestimate_statistics

    cfg, run_dir, metrics = resnet_run
    out = tmp_path / ranking_control.CONTROL_FILE
    assert ranking_control.main([str(run_dir), "--draws", "1", "--fractions", "0.5",
                                 "--recalibrate-bn", "64", "--out", str(out)]) == 0
    control = json.loads(out.read_text())
    assert control["bn_recalibration_examples"] == 64 and control["batch_norms"] > 0
    assert [r["kept_widths"] for r in control["rows"]][0] == metrics["dirichlet"]["kept_widths"]
    lines = ranking_control.section([{"_path": str(tmp_path), "dirichlet": {
        "mode": "integral", "kept_widths": metrics["dirichlet"]["kept_widths"]}}])
    assert sum("| integral | re-estimated (64) |" in line for line in lines) == 2

    # What an evaluation sees: the masked copy with re-estimated statistics, the dense network
    # untouched.
    dense, _ = pretrained.load_pretrained(cfg)
    dataset = runs.load_run_dataset(cfg)
    x = jnp.asarray(dataset.x_train[:64])
    seen = []
    pruned_error = ranking_control.PrunedError(dense, dataset, 256, x)
    pruned_error.evaluator.error = lambda model, *_: seen.append(nnx.clone(model)) or 0.0
    keep = {g: np.arange(len(v)) < 2 for g, v in metrics["dirichlet"]["switch_means"].items()}
    before = {p: np.asarray(n.mean[...]) for p, n in batch_norms(dense).items()}
    pruned_error(keep)
    want = nnx.clone(dense)
    channel_pruning.apply_masks_in_place(want, channel_pruning.pruned_masks(want, keep))
    reestimate_statistics(want, x)
    got, want = batch_norms(seen[0]), batch_norms(want)
    for path, norm in want.items():
        np.testing.assert_array_equal(np.asarray(got[path].mean[...]), np.asarray(norm.mean[...]))
        np.testing.assert_array_equal(np.asarray(got[path].var[...]), np.asarray(norm.var[...]))
    for path, norm in batch_norms(dense).items():
        np.testing.assert_array_equal(np.asarray(norm.mean[...]), before[path])
