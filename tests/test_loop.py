"""The training loop and step: resuming, compiling once, learning, divergence, KL warm-up,
pruned view."""

import hashlib
import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from omegaconf import OmegaConf

from bayescomp import data, loop, metrics, objectives, optim, runs, step
from bayescomp.evaluation import make_evaluate
from bayescomp.procedures import variational
from bayescomp.errors import ConfigError, TrainingDivergedError
from bayescomp.priors.log_uniform import neg_kl_log_uniform_approx

# lenet300_dense compiles fastest; its runs depend on the PRNG key (batch order) and the Adam
# state, which is what resuming has to restore.
EXPERIMENT = "lenet300_dense"
CONSTANT_LR = "optimizer.schedule=constant"  # so 1 + 1 epochs and 2 epochs train alike
SPLIT = step.StateSplit()  # every Param trains
EMPTY = nnx.State({})  # the LeNets have no batch statistics and nothing frozen


def _snapshot(directory: pathlib.Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, smoke_cfg):
    """A finished 1-epoch (2-step) smoke run; tests copy its directory before touching it."""
    workdir = tmp_path_factory.mktemp("one_epoch")
    cfg = smoke_cfg(EXPERIMENT, CONSTANT_LR)
    metrics = variational.run(cfg, workdir)
    return workdir, metrics


def _copy(run_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


# ---------------------------------------------------------------------------------------------
# (a) resume


def test_resume_continues_at_the_next_epoch(one_epoch_run, smoke_cfg, tmp_path):
    first_dir, first = one_epoch_run
    workdir = _copy(first_dir, tmp_path)
    cfg = smoke_cfg(EXPERIMENT, CONSTANT_LR, "trainer.epochs=2")
    resumed = variational.run(cfg, workdir)

    assert [h["epoch"] for h in resumed["history"]] == [0.0, 1.0]
    assert resumed["history"][0] == first["history"][0]  # epoch 0 was not retrained
    assert resumed["epochs"] == 2
    # Training time accumulates over both runs.
    assert resumed["train_seconds"] == pytest.approx(
        first["train_seconds"] + resumed["history"][1]["seconds"], rel=1e-9)
    # The same run in one go trains identically: params, Adam state and PRNG key were restored
    # exactly (same XLA programs on the same inputs: bitwise equal up to float32 rounding).
    straight = variational.run(cfg, tmp_path / "straight")
    for got, want in zip(resumed["history"], straight["history"]):
        for field in ("loss", "nll", "train_accuracy", "test_error"):
            assert got[field] == pytest.approx(want[field], rel=1e-6, abs=1e-7), field
    assert resumed["test_error"] == straight["test_error"]
    # Each process compiles the step in its first epoch; the history says which epochs those
    # are (seconds_per_epoch leaves them out) and the run length each epoch was trained for.
    assert [h["includes_compilation"] for h in resumed["history"]] == [1.0, 1.0]
    assert [h["includes_compilation"] for h in straight["history"]] == [1.0, 0.0]
    assert [h["planned_epochs"] for h in resumed["history"]] == [1.0, 2.0]
    assert [h["planned_epochs"] for h in straight["history"]] == [2.0, 2.0]


def test_rerun_of_a_finished_run_trains_nothing(one_epoch_run, smoke_cfg, tmp_path):
    first_dir, first = one_epoch_run
    workdir = _copy(first_dir, tmp_path)
    again = variational.run(smoke_cfg(EXPERIMENT, CONSTANT_LR), workdir)
    assert again["history"] == first["history"]
    assert again["test_error"] == first["test_error"]


def test_resume_with_other_training_settings_is_refused(one_epoch_run, smoke_cfg, tmp_path):
    workdir = _copy(one_epoch_run[0], tmp_path)
    before = _snapshot(workdir)
    cfg = smoke_cfg(EXPERIMENT, CONSTANT_LR, "trainer.epochs=2", "optimizer.lr=5e-4",
                    "trainer.kl_warmup.end_epoch=7")
    with pytest.raises(ConfigError) as info:
        variational.run(cfg, workdir)
    message = str(info.value)
    assert "optimizer.lr: 0.001 -> 0.0005" in message
    # The warm-up is compared in epochs of the checkpoint's run (here 1 epoch: 0 -> 7).
    assert "trainer.kl_warmup.end_epoch: 0.0 -> 7.0" in message
    assert "hydra.run.dir" in message and "\n" not in message
    assert str(workdir.absolute() / "config.yaml") in message
    assert _snapshot(workdir) == before  # nothing written, nothing lost


def test_resume_may_change_logging_pruning_and_epochs(one_epoch_run, smoke_cfg, tmp_path):
    workdir = _copy(one_epoch_run[0], tmp_path)
    cfg = smoke_cfg(EXPERIMENT, CONSTANT_LR, "trainer.tensorboard=false",
                    "trainer.pruned_eval_every=3", "trainer.eval_batch_size=50",
                    "experiment_name=renamed", "method.prune.threshold=1.5")
    again = variational.run(cfg, workdir)
    assert again["history"] == one_epoch_run[1]["history"]
    # trainer.epochs is accepted too: test_resume_continues_at_the_next_epoch extends the run.


def test_the_schedule_warning_compares_the_phase_s_own_length(smoke_cfg, tmp_path, caplog):
    # A fine-tuning phase of 5 epochs in a 10-epoch run, resumed as 5 epochs: its schedule
    # is unchanged, no warning; resumed as 7 epochs it restarts from a different curve.
    cfg = smoke_cfg(EXPERIMENT, "optimizer.schedule=cosine", "trainer.epochs=10")
    meta = {"epochs": 5}  # no stored settings: only the length is compared
    with caplog.at_level("WARNING", logger="bayescomp.runs"):
        runs.resume_checks(meta, cfg, "ckpt", tmp_path, phase_epochs=5)
    assert "different curve" not in caplog.text
    with caplog.at_level("WARNING", logger="bayescomp.runs"):
        runs.resume_checks(meta, cfg, "ckpt", tmp_path, phase_epochs=7)
    assert "trained for a 5-epoch run and is resumed for 7 epochs" in caplog.text


def test_checkpoint_settings_comparison():
    """check_same_config on hand-made dicts: old checkpoints, added keys, the listing cap."""
    from bayescomp.checkpointing import check_same_config, flatten_config

    assert flatten_config({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": 1, "a.c.d": [1, 2], "e": None}
    assert check_same_config(None, {"a": 1}, "ckpt") == []  # written before settings were saved
    # Tuples compare equal to the lists JSON saved them as; one-sided keys are returned.
    assert check_same_config({"a": [1, 2], "old": 0}, {"a": (1, 2), "new": 1}, "ckpt") == [
        "new", "old"]
    saved = {f"k{i:02d}": i for i in range(12)}
    with pytest.raises(ConfigError) as info:
        check_same_config(saved, {k: v + 1 for k, v in saved.items()}, "ckpt")
    message = str(info.value)
    assert "k00: 0 -> 1" in message and "k07: 7 -> 8" in message
    assert "k08" not in message and "and 4 more" in message


# ---------------------------------------------------------------------------------------------
# (d) divergence


def test_nan_loss_raises_and_keeps_the_last_good_state(one_epoch_run, smoke_cfg, tmp_path,
                                                        monkeypatch):
    workdir = _copy(one_epoch_run[0], tmp_path)
    # The diverging lr is set on resume, which the settings check would refuse (tested below);
    # here the run must get as far as the bad step.
    monkeypatch.setattr(runs, "resume_checks", lambda *args, **kwargs: None)
    before = _snapshot(workdir)
    assert "metrics.json" in before
    # Adam's step is ~lr whatever the gradient: the first step of epoch 1 moves the weights by
    # 1e30, so the second step's logits overflow and its loss is NaN.
    cfg = smoke_cfg(EXPERIMENT, CONSTANT_LR, "trainer.epochs=2", "optimizer.lr=1e30")
    with pytest.raises(TrainingDivergedError) as info:
        variational.run(cfg, workdir)
    message = str(info.value)
    assert "epoch 1" in message and "optimizer.lr" in message
    assert "the checkpoint of the last good epoch (0)" in message and "is kept" in message
    assert "\n" not in message
    # Nothing that was written before changed, and no checkpoint of the bad epoch appeared.
    assert _snapshot(workdir) == before
    assert not (workdir / "checkpoints" / "train" / "1").exists()


def test_non_finite_parameters_after_a_finite_loss_are_caught(smoke_cfg, tmp_path, monkeypatch):
    """One step per epoch (batch = the 512 synthetic images) of an optimiser whose update is
    g·∞ (a configured learning rate cannot be ∞: optim refuses it): the step's loss is computed
    before its update, so it is finite, and only the parameter check at the end of the epoch
    sees that the update made the parameters non-finite. No checkpoint of that state may be
    written, since a resume would start from it."""
    monkeypatch.setattr(optim, "make_optimizer",
                        lambda *args, **kwargs: optax.scale(float("inf")))
    cfg = smoke_cfg(EXPERIMENT, CONSTANT_LR, "trainer.batch_size=512")
    with pytest.raises(TrainingDivergedError) as info:
        variational.run(cfg, tmp_path)
    message = str(info.value)
    assert "parameters became non-finite at the end of phase train, epoch 0" in message
    # Epoch 0 never finished: no checkpoint is claimed to be kept.
    assert "no epoch of this phase finished, so nothing of it is kept" in message
    assert "hydra.run.dir" in message and "\n" not in message
    assert not (tmp_path / "checkpoints" / "train" / "0").exists()
    assert not (tmp_path / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# (b) no retrace, (c) learning: through the library's building blocks


def _building_blocks(compose, experiment, total_steps, *overrides):
    cfg = compose([f"+experiment={experiment}", "+debug=smoke", *overrides])
    model = runs.build_model(cfg, (28, 28, 1), 10, seed=0)
    graphdef, params, batch_stats, frozen = SPLIT.split(loop.train_view(model, "batch_stats"))
    assert not jax.tree.leaves(batch_stats) and not jax.tree.leaves(frozen)  # LeNets: params only
    optimizer = optim.make_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True), params,
                                     total_steps=total_steps, steps_per_epoch=total_steps)
    return model, optimizer, graphdef, params


@pytest.fixture(scope="module")
def learning_run(compose):
    """LeNet-300-100 with sparse VD, 300 steps of batch 64 (about 37 epochs of the 512 synthetic
    images) in 3 jitted chunks of 100 steps, through the library's building blocks.

    The KL is scaled as for a 60,000-image training set (its weight per example on
    Fashion-MNIST): with the true N = 512 it outweighs the likelihood ~500-fold and prunes every
    weight, which is correct behaviour but not learning.

    Each call gets a different data array (the dataset permuted), different batch indices and
    key, a different KL weight (β = 0.5, 0.75, 1: a warm-up), and the previous call's outputs as
    its params and optimizer state; the jit cache size is recorded after every call.
    """
    steps, batch, chunk = 300, 64, 100
    model, optimizer, graphdef, params = _building_blocks(
        compose, "lenet300_svd", steps, "optimizer.schedule=constant")
    ds = data.load_dataset("synthetic", seed=0)
    pruned_graphdef, _ = nnx.split(nnx.view(model, deterministic=True, pruned=True))
    error = make_evaluate(pruned_graphdef, 256)
    train_chunk = step.make_chunk(graphdef, SPLIT, optimizer, n_train=60_000)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(0)
    losses, cache_sizes = [], []
    for c, beta in enumerate([0.5, 0.75, 1.0]):
        shuffled = rng.permutation(len(ds.y_train))
        x, y = jnp.asarray(ds.x_train[shuffled]), jnp.asarray(ds.y_train[shuffled])
        order = np.concatenate([rng.permutation(len(ds.y_train))
                                for _ in range(chunk * batch // len(ds.y_train) + 1)])
        index = jnp.asarray(order[: chunk * batch].reshape(chunk, batch), jnp.int32)
        params, _, opt_state, sums = train_chunk(params, EMPTY, EMPTY, opt_state, None, x, y,
                                                 index, jax.random.key(c), jnp.float32(beta))
        assert sums.shape == (4,)
        losses.append(float(sums[0]) / chunk)
        cache_sizes.append(train_chunk._cache_size())
    test_error = error(params, jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))
    return dict(losses=losses, cache_sizes=cache_sizes, test_error=test_error)


def test_train_chunk_compiles_once(learning_run):
    # Three calls with new data, indices, key and β: one trace, one compilation.
    assert learning_run["cache_sizes"] == [1, 1, 1]


def test_learns_the_synthetic_task(learning_run):
    losses = learning_run["losses"]
    assert all(math.isfinite(v) for v in losses), losses
    # The loss includes β·KL/N, and β rises; it still falls (measured: 2.61 -> 1.05 -> 0.61).
    assert losses[-1] < 0.5 * losses[0], losses
    # Chance is 90 % error; the classes are linearly separable (measured: 0 %).
    assert learning_run["test_error"] < 20.0


def _one_chunk(compose, loop, optimizer=None, steps=3, batch=32, beta=0.7, n_train=60_000):
    """One ``train_chunk`` call of LeNet-300-100 Sparse VD on synthetic data."""
    model, default_optimizer, graphdef, params = _building_blocks(
        compose, "lenet300_svd", steps, "optimizer.schedule=constant")
    optimizer = optimizer or default_optimizer
    ds = data.load_dataset("synthetic", seed=0)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    index = jnp.arange(steps * batch, dtype=jnp.int32).reshape(steps, batch)
    train_chunk = step.make_chunk(graphdef, SPLIT, optimizer, n_train=n_train, loop=loop)
    key = jax.random.key(3)
    new_params, _, _, sums = train_chunk(params, EMPTY, EMPTY, optimizer.init(params), None, x,
                                         y, index, key, jnp.float32(beta))
    return dict(graphdef=graphdef, params=params, new_params=new_params, sums=np.asarray(sums),
                x=x, y=y, index=index, key=key, steps=steps, beta=beta, n_train=n_train)


@pytest.mark.parametrize("loop", ["scan", "python"])
def test_chunk_sums_hold_the_kl_of_the_final_parameters(compose, loop):
    # The step does not compute the KL's value (it needs only its gradient); the chunk reports
    # steps · KL(final parameters) and a loss of Σ NLL + steps · β · KL / N.
    run = _one_chunk(compose, loop)
    kl = float(objectives.total_kl(nnx.merge(run["graphdef"], run["new_params"])))
    loss_sum, nll_sum, kl_sum, correct = run["sums"]
    steps = run["steps"]
    # float32 sums of ~266k terms: relative rounding ~1e-6.
    np.testing.assert_allclose(kl_sum, steps * kl, rtol=1e-5)
    np.testing.assert_allclose(loss_sum, nll_sum + steps * run["beta"] * kl / 60_000, rtol=1e-5)
    assert 0 < nll_sum and 0 <= correct <= steps * 32


def test_step_applies_the_gradient_of_nll_plus_weighted_kl(compose):
    """With SGD at learning rate 1 the first step subtracts the gradient: compare it with automatic
    differentiation of mean NLL + β·KL/N written out here, the KL by the plain Eq. 14 formula
    (not the library's hand-written VJP) and the same noise key as the step's. N = 2 so that
    the KL's share of the gradient (~β/N per weight) is far above the tolerance."""
    run = _one_chunk(compose, "scan", optimizer=optax.sgd(1.0), steps=1, n_train=2)
    graphdef, params, beta = run["graphdef"], run["params"], run["beta"]
    step_key = jax.random.split(run["key"], 1)[0]
    idx = run["index"][0]

    def reference_loss(p):
        model = nnx.merge(graphdef, p)
        logits = model(run["x"][idx], rngs=nnx.Rngs(noise=step_key))
        kl = 0.0
        for _, layer in objectives.variational_layers(model):
            log_alpha = layer.posterior.raw_log_alpha()
            kl -= jnp.sum(neg_kl_log_uniform_approx(jnp.clip(log_alpha, -8.0, 8.0)))
        return objectives.mean_nll(logits, run["y"][idx]) + beta * kl / run["n_train"]

    # Jitted: op by op, the reference took longer than the rest of the test together.
    grads = jax.jit(jax.grad(reference_loss))(params)
    expected = jax.tree.map(lambda p, g: p - g, params, grads)
    # Float32 rounding. With N = 2, θ's gradient holds KL terms ∂KL/∂log α · 2θ/(θ² + ε) up to
    # ~40 (θ ≈ 0.05), which the hand-written VJP and automatic differentiation sum in different
    # orders: measured up to 4.4e-5 relative, so rtol 2e-4. Dropping the KL term from the
    # reference makes 99.7 % of the first layer's θ differ by O(1).
    for got, want in zip(jax.tree.leaves(run["new_params"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("experiment, boundaries", [("lenet300_svd", 3), ("lenet300_dense", 0),
                                                    ("lenet300_gnj", 0)])
def test_posterior_gradients_are_materialized_unchanged(compose, experiment, boundaries):
    # Values pass through exactly (a multiplication by a run-time 1); only posteriors that ask
    # for it (the factorized Gaussian, one per Sparse VD layer) get a conditional boundary.
    _, _, graphdef, params = _building_blocks(compose, experiment, 10)
    leaves, treedef = jax.tree.flatten(params)
    grads = jax.tree.unflatten(treedef, [
        jax.random.normal(jax.random.key(i), leaf.shape, leaf.dtype)
        for i, leaf in enumerate(leaves)])
    one = jnp.float32(1.0)
    out = jax.jit(lambda g, u: step.materialize_posterior_gradients(
        lambda s: nnx.merge(graphdef, s), SPLIT, g, u))(grads, one)
    assert jax.tree.structure(out) == jax.tree.structure(grads)
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    jaxpr = jax.make_jaxpr(lambda g, u: step.materialize_posterior_gradients(
        lambda s: nnx.merge(graphdef, s), SPLIT, g, u))(grads, one)
    conds = [e for e in jaxpr.jaxpr.eqns if e.primitive is jax.lax.cond_p]
    assert len(conds) == (boundaries if jax.default_backend() == "cpu" else 0)


# ---------------------------------------------------------------------------------------------
# (e) schedules


@pytest.mark.parametrize(
    "epoch, want",
    [(0, 0.0), (4, 0.0), (5, 0.0), (6, 1 / 15), (12.5, 0.5), (19, 14 / 15), (20, 1.0),
     (199, 1.0)],
)
def test_kl_warmup_rw_linear(epoch, want):
    # The authors' rw_linear: 0 for epoch < 5, (epoch − 5)/15 for 5 ≤ epoch < 20, then 1.
    assert objectives.kl_weight(epoch, 5, 20) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("epoch, want", [(0, 0.0), (2, 0.0), (3, 1.0), (4, 1.0)])
def test_kl_warmup_step(epoch, want):
    assert objectives.kl_weight(epoch, 3, 3) == want


def test_kl_warmup_smoke_config_is_on_from_the_start():
    assert objectives.kl_weight(0, 0, 0) == 1.0


# ---------------------------------------------------------------------------------------------
# (f) pruned view


def test_everything_pruned_outputs_the_bias(compose, key):
    # log α is clipped to [-8, 8], so a threshold of -100 removes every weight.
    model, *_ = _building_blocks(compose, "lenet300_svd", 1, "method.prune.threshold=-100")
    last = None
    for _, layer in objectives.variational_layers(model):
        layer.bias[...] = jax.random.normal(key(), layer.bias[...].shape)
        last = layer
    x = jax.random.normal(key(), (4, 28, 28, 1))
    logits = nnx.view(model, deterministic=True, pruned=True)(x)
    np.testing.assert_array_equal(logits, jnp.broadcast_to(last.bias[...], logits.shape))
    # The unpruned posterior mean does depend on the input.
    mean_logits = nnx.view(model, deterministic=True, pruned=False)(x)
    assert not np.allclose(mean_logits[0], mean_logits[1])


def test_everything_pruned_conv_outputs_the_bias(key):
    # The same for a convolution (LeNet-5's layers), at layer level to keep the test cheap.
    from bayescomp.nn import VariationalConv
    from bayescomp.posteriors import FactorizedGaussian
    from bayescomp.priors import LogUniform

    layer = VariationalConv(2, 3, (3, 3), posterior_cls=FactorizedGaussian, prior=LogUniform(),
                            rngs=nnx.Rngs(params=0), prune_threshold=-100.0)
    layer.bias[...] = jax.random.normal(key(), (3,))
    x = jax.random.normal(key(), (2, 6, 6, 2))
    out = nnx.view(layer, deterministic=True, pruned=True)(x)
    assert out.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(out, jnp.broadcast_to(layer.bias[...], out.shape))


def test_nothing_pruned_is_the_posterior_mean(compose, key):
    model, *_ = _building_blocks(compose, "lenet300_svd", 1, "method.prune.threshold=100")
    x = jax.random.normal(key(), (4, 28, 28, 1))
    np.testing.assert_array_equal(nnx.view(model, deterministic=True, pruned=True)(x),
                                  nnx.view(model, deterministic=True, pruned=False)(x))


def test_metrics_file_is_json(one_epoch_run):
    workdir, metrics = one_epoch_run
    assert json.loads((workdir / "metrics.json").read_text())["epochs"] == metrics["epochs"] == 1


def test_all_finite_sees_nan_and_inf_in_any_leaf():
    # The end-of-epoch guard that keeps a non-finite state from being checkpointed.
    import jax.numpy as jnp

    good = {"a": jnp.ones((3,)), "b": [jnp.zeros((2, 2))]}
    assert loop.all_finite(good)
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        tree = {"a": jnp.ones((3,)), "b": [jnp.zeros((2, 2)).at[1, 0].set(bad)]}
        assert not loop.all_finite(tree)


def test_epoch_time_leaves_out_every_compiling_epoch():
    # A run resumed once: epochs 0 and 3 compiled (10 s), the others took 1-3 s.
    history = [{"seconds": s, "includes_compilation": float(c)}
               for s, c in ((10, 1), (1, 0), (2, 0), (10, 1), (3, 0))]
    assert metrics.median_epoch_seconds(history) == 2.0
    legacy = [{"seconds": s} for s in (10, 1, 2, 3)]  # no flag: only the first epoch compiled
    assert metrics.median_epoch_seconds(legacy) == 2.0
    assert metrics.median_epoch_seconds([{"seconds": 7.0, "includes_compilation": 1.0}]) == 7.0


def test_ctrl_c_is_a_request_to_stop_between_chunks():
    # The first SIGINT only records the request (the loop raises between chunks, where nothing
    # is half-written); a second one interrupts at once; the previous handler comes back.
    import os
    import signal

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # the recorded request, at the end
        with loop.stop_between_chunks() as requested:
            assert not requested()
            os.kill(os.getpid(), signal.SIGINT)
            assert requested()
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_after_the_last_check_is_not_lost():
    # A request that arrives after the loop's last check (during the last epoch's evaluation
    # or checkpoint) still stops the run when the training ends.
    import os
    import signal

    with pytest.raises(KeyboardInterrupt):
        with loop.stop_between_chunks():
            os.kill(os.getpid(), signal.SIGINT)
