"""bayescomp.optim against independent references.

The SGD and Adam references are NumPy (float64) transcriptions of the update rules documented
for ``torch.optim.SGD`` (dampening 0) and ``torch.optim.Adam`` (``weight_decay`` added to the
gradient), written from the formulas, not from any implementation. The default Adam path is
compared bit for bit with the optimiser used before ``bayescomp.optim`` existed
(``optax.adam`` on :func:`old_schedule`).
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from omegaconf import OmegaConf

from bayescomp import optim
from bayescomp.errors import ConfigError
from bayescomp.nn.norm import NormBias, NormScale
from bayescomp.posteriors.variables import (Bias, GlobalScaleParam, GroupLogVar, GroupMean,
                                            PointWeight, PosteriorLogVar, PosteriorMean)

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf" / "optimizer"

# float32 (JAX) against float64 (NumPy) over 5 steps, compared in absolute terms because some
# entries end near 0. The parameters are O(1) (|w| < 4, float32 spacing <= 4.8e-7) and each step
# rounds a few times. Adam adds a systematic part: β₂ = 0.999 is 0.99900001 in float32, so
# 1 − β₂ᵗ, and with it every update, is off by up to 6.6e-6 relative (√ of 1.3e-5):
# 5 steps × lr 0.01 × 6.6e-6 = 3.3e-7. Hence 1e-6. The formula errors the tests guard against
# (a missing or misplaced λw, the wrong Nesterov term, no bias correction, eps inside the square
# root with the eps used below) move the parameters by 1e-4 or more.
ATOL_F32 = 1e-6


def load(file: str, **overrides) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{file}.yaml"), resolve=True)
    cfg.update(overrides)
    return cfg


class Net(nnx.Module):
    """One Variable of every kind the optimiser must tell apart."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)

        def arr(*shape):
            return jnp.asarray(rng.normal(size=shape), jnp.float32)

        self.w = PointWeight(arr(3, 4))
        self.theta = PosteriorMean(arr(4, 2))
        self.log_var = PosteriorLogVar(arr(4, 2))
        self.b = Bias(arr(4))
        self.gamma = NormScale(arr(4))
        self.beta = NormBias(arr(4))
        self.z_mean = GroupMean(arr(4))
        self.z_log_var = GroupLogVar(arr(4))
        self.s = GlobalScaleParam(arr(1))
        self.running_mean = nnx.BatchStat(arr(4))


def params_of(model=None) -> nnx.State:
    return nnx.split(Net() if model is None else model, nnx.Param, ...)[1]


def leaves(state) -> dict:
    """``{name: (Variable type, float64 array)}`` of a flat State."""
    return {k: (type(v), np.asarray(v[...], np.float64)) for k, v in state.items()}


def random_grads(params, steps: int, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
            for _ in range(steps)]


def run(tx, params, grads_seq):
    state = tx.init(params)
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


# --------------------------------------------------------------------------------------------
# References


def old_schedule(lr, schedule, total_steps, decay_start=0.0):
    """Frozen copy of ``objectives.learning_rate_schedule`` as train.py and retrain.py used it
    before ``bayescomp.optim``: the published results ran on it, so it stays here, unchanged,
    when that function goes."""
    if schedule == "constant":
        return optax.constant_schedule(lr)
    assert schedule == "linear_decay"
    flat_steps = int(round(decay_start * total_steps))
    return optax.join_schedules(
        [optax.constant_schedule(lr),
         optax.linear_schedule(lr, 0.0, max(1, total_steps - flat_steps))],
        [flat_steps],
    )


# PyTorch's documented update rules.


def torch_sgd(w, grads, lrs, momentum, nesterov, wd):
    """torch.optim.SGD, dampening 0: g += λw; v = μv + g; step = g + μv (Nesterov) or v."""
    v = np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        g = g + wd * w
        v = momentum * v + g
        w = w - lr * ((g + momentum * v) if nesterov else v)
    return w


def torch_adam(w, grads, lrs, b1, b2, eps, wd):
    """torch.optim.Adam: g += λw; bias-corrected moments; eps outside the square root."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


# --------------------------------------------------------------------------------------------
# Update rules


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_and_l2_match_pytorch(nesterov):
    params = params_of()
    grads = random_grads(params, 5)
    # multistep at epoch 3 of 5 (one step an epoch): the rate drops inside the run.
    cfg = load("sgd", nesterov=nesterov, weight_decay=0.1, decay=["weights"],
               milestones=[3], factor=0.1)
    tx = optim.make_optimizer(cfg, params, total_steps=5, steps_per_epoch=1)
    got = leaves(run(tx, params, grads))
    lrs = [0.1 if t < 3 else 0.1 * 0.1 for t in range(5)]
    for name, (kind, w0) in leaves(params).items():
        wd = 0.1 if kind in (PointWeight, PosteriorMean) else 0.0
        want = torch_sgd(w0, [np.asarray(g[name][...], np.float64) for g in grads], lrs,
                         0.9, nesterov, wd)
        np.testing.assert_allclose(got[name][1], want, rtol=0, atol=ATOL_F32,
                                   err_msg=name)


def test_adam_l2_matches_pytorch():
    params = params_of()
    grads = random_grads(params, 5)
    # eps = 1e-3 so that its place (outside the square root) shows in the result.
    cfg = load("adam", lr=0.01, eps=1e-3, schedule="constant", weight_decay=0.3,
               decay=["weights", "biases", "norm"])
    tx = optim.make_optimizer(cfg, params, total_steps=5, steps_per_epoch=1)
    got = leaves(run(tx, params, grads))
    decayed = (PointWeight, PosteriorMean, Bias, NormScale, NormBias)
    for name, (kind, w0) in leaves(params).items():
        want = torch_adam(w0, [np.asarray(g[name][...], np.float64) for g in grads],
                          [0.01] * 5, 0.9, 0.999, 1e-3, 0.3 if kind in decayed else 0.0)
        np.testing.assert_allclose(got[name][1], want, rtol=0, atol=ATOL_F32,
                                   err_msg=name)


@pytest.mark.parametrize("schedule", ["linear_decay", "constant"])
def test_default_adam_is_bit_identical_to_the_old_optimizer(schedule):
    params = params_of()
    grads = random_grads(params, 12)
    cfg = load("adam", schedule=schedule)  # the shipped file: wd 0, no warm-up
    tx = optim.make_optimizer(cfg, params, total_steps=12, steps_per_epoch=3)
    old = optax.adam(old_schedule(cfg["lr"], schedule, 12, decay_start=cfg["decay_start"]),
                     b1=cfg["b1"], b2=cfg["b2"])
    # Not wrapped: the same optimiser state, so old checkpoints restore into it.
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(old.init(params))
    for step in (run, jax.jit(run, static_argnums=0)):
        got, want = step(tx, params, grads), step(old, params, grads)
        for name, (_, value) in leaves(got).items():
            np.testing.assert_array_equal(value, leaves(want)[name][1], err_msg=name)


def test_grouped_adam_matches_the_retraining_optimizer_bit_for_bit():
    params = params_of()
    grads = random_grads(params, 6)
    cfg = load("adam", decay_start=0.0)
    rates = [(PosteriorLogVar, 3e-3), ((PointWeight, Bias), 1e-3), (nnx.Param, 0.0)]
    tx = optim.make_optimizer(cfg, params, total_steps=6, steps_per_epoch=2,
                              learning_rates=rates)
    # What retrain.build_optimizer builds: a multi_transform of Adams on the old schedule.
    labels = jax.tree.map(
        lambda v: ("lv" if isinstance(v, PosteriorLogVar) else
                   "wb" if isinstance(v, (PointWeight, Bias)) else "frozen"),
        params, is_leaf=lambda x: isinstance(x, nnx.Variable))

    def adam(lr):
        return optax.adam(old_schedule(lr, "linear_decay", 6, 0.0),
                          b1=0.9, b2=0.999)

    old = optax.multi_transform({"lv": adam(3e-3), "wb": adam(1e-3),
                                 "frozen": optax.set_to_zero()}, labels)
    got, want = leaves(run(tx, params, grads)), leaves(run(old, params, grads))
    for name in got:
        np.testing.assert_array_equal(got[name][1], want[name][1], err_msg=name)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_group_learning_rates_scale_the_first_update(name):
    params = params_of()
    # The same gradient for every leaf of a shape, so the groups differ by their rate alone.
    grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 1.0, p.size).reshape(p.shape), params)
    rates = [(PointWeight, 4e-3), (PosteriorMean, 1e-3), ((NormScale, NormBias), 0.0),
             (nnx.Param, 2e-3)]
    cfg = load(name, schedule="constant", weight_decay=0.0)
    tx = optim.make_optimizer(cfg, params, total_steps=10, steps_per_epoch=5,
                              learning_rates=rates)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    u = {k: np.asarray(v[...], np.float64) for k, v in updates.items()}
    # theta (4, 2) and log_var (4, 2) see the same gradient: the ratio of their updates is the
    # ratio of their rates, up to the float32 rounding of one product (rtol 1e-6).
    np.testing.assert_allclose(u["theta"] * 2e-3, u["log_var"] * 1e-3, rtol=1e-6)
    g = np.asarray(grads["w"][...], np.float64)
    if name == "adam":  # first step: m̂ = g, v̂ = g², so −lr·g/(|g| + eps)
        # 1 − β₂ is 0.00099998713 in float32, not 0.001: v̂ is off by 1.3e-5 relative and the
        # update by half that, 6.6e-6; rtol 1e-5.
        np.testing.assert_allclose(u["w"], -4e-3 * g / (np.abs(g) + 1e-8), rtol=1e-5)
    else:  # first step: v = g, so −lr·g
        np.testing.assert_allclose(u["w"], -4e-3 * g, rtol=1e-6)
    np.testing.assert_array_equal(u["gamma"], 0.0)
    np.testing.assert_array_equal(u["beta"], 0.0)


def test_unmatched_parameter_raises():
    with pytest.raises(ConfigError, match="learning_rates.*log_var"):
        optim.make_optimizer(load("adam"), params_of(), total_steps=4, steps_per_epoch=2,
                             learning_rates=[((PointWeight, PosteriorMean, Bias, NormScale,
                                               NormBias, GroupMean, GroupLogVar,
                                               GlobalScaleParam), 1e-3)])


# --------------------------------------------------------------------------------------------
# Weight decay by Variable type


@pytest.mark.parametrize("groups", [["weights"], ["biases"], ["norm"],
                                    ["weights", "biases", "norm"]])
def test_weight_decay_touches_exactly_the_selected_types(groups):
    model = Net()
    state = nnx.state(model)  # the whole state, batch statistics included, as train.py splits
    zero_grads = jax.grad(lambda s: 0.0 * sum(jnp.sum(x) for x in jax.tree.leaves(s)))(state)
    cfg = load("sgd", weight_decay=0.5, decay=groups, momentum=0.0, schedule="constant",
               lr=0.1)
    tx = optim.make_optimizer(cfg, state, total_steps=3, steps_per_epoch=1)
    after = leaves(run(tx, state, [zero_grads]))
    selected = tuple(t for g in groups for t in optim.DECAY_GROUPS[g])
    for name, (kind, w0) in leaves(state).items():
        if issubclass(kind, selected):
            # w − lr·λ·w = 0.95 w (float32: one rounding of each of two products)
            np.testing.assert_allclose(after[name][1], 0.95 * w0, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(after[name][1], w0, err_msg=name)
    assert not issubclass(nnx.BatchStat, selected)


def test_weight_decay_that_selects_nothing_raises():
    class NoNorm(nnx.Module):
        def __init__(self):
            self.w = PointWeight(jnp.ones((2, 2)))

    with pytest.raises(ConfigError, match="optimizer.weight_decay"):
        optim.make_optimizer(load("sgd", decay=["norm"]), params_of(NoNorm()),
                             total_steps=4, steps_per_epoch=2)


# --------------------------------------------------------------------------------------------
# Schedules


def values(schedule, steps):
    return np.asarray([schedule(jnp.asarray(s, jnp.int32)) for s in range(steps)])


@pytest.mark.parametrize("total,decay_start", [(200, 0.5), (37, 0.3), (10, 0.0), (1, 0.0)])
def test_linear_decay_equals_the_old_schedule(total, decay_start):
    new = optim.learning_rate_schedule(1e-3, {"schedule": "linear_decay",
                                              "decay_start": decay_start}, total, 7)
    old = old_schedule(1e-3, "linear_decay", total, decay_start)
    np.testing.assert_array_equal(values(new, total + 3), values(old, total + 3))


def test_multistep_fractions_and_epochs_give_the_same_boundaries():
    spe, epochs = 10, 16
    by_fraction = optim.learning_rate_schedule(
        0.1, {"schedule": "multistep", "milestones": [0.5, 0.75]}, spe * epochs, spe)
    by_epoch = optim.learning_rate_schedule(
        0.1, {"schedule": "multistep", "milestones": [8, 12], "factor": 0.1}, spe * epochs, spe)
    got = values(by_fraction, spe * epochs)
    np.testing.assert_array_equal(got, values(by_epoch, spe * epochs))
    steps = np.arange(spe * epochs)
    want = 0.1 * 0.1 ** ((steps >= 80).astype(int) + (steps >= 120))
    # float32 roundings of lr·factor^k: within half an ulp, 2^-24 relative.
    np.testing.assert_allclose(got, want, rtol=2 ** -24)


def test_cosine_equals_the_closed_form():
    total, lr, final = 50, 0.2, 0.1
    got = values(optim.learning_rate_schedule(
        lr, {"schedule": "cosine", "final_lr_fraction": final}, total, 5), total + 5)
    t = np.minimum(np.arange(total + 5), total) / total
    want = lr * (final + (1 - final) * 0.5 * (1 + np.cos(np.pi * t)))
    # float32 cos and three products: a few ulp of lr (1e-7 · 0.2); 1e-6 · lr is ample.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * lr)


def test_warmup_is_linear_then_the_schedule_continues():
    lr, spe, total = 0.1, 4, 40
    cfg = {"schedule": "linear_decay", "decay_start": 0.5, "warmup_epochs": 1.5}
    got = values(optim.learning_rate_schedule(lr, cfg, total, spe), total + 2)
    warmup = 6  # round(1.5 · 4)
    # Step s < W runs at lr·(s+1)/W (float32 product and quotient: rtol 1e-6).
    np.testing.assert_allclose(got[:warmup], lr * np.arange(1, warmup + 1) / warmup, rtol=1e-6)
    # From step W on: the schedule over the remaining steps, starting at its own step 0.
    rest = old_schedule(lr, "linear_decay", total - warmup, 0.5)
    np.testing.assert_array_equal(got[warmup:], values(rest, total + 2 - warmup))


def test_multistep_milestones_count_from_the_start_of_the_run_with_warmup():
    cfg = {"schedule": "multistep", "milestones": [5, 8], "warmup_epochs": 2}
    got = values(optim.learning_rate_schedule(1.0, cfg, 10, 1), 10)
    np.testing.assert_allclose(got, [0.5, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01],
                               rtol=2 ** -24)


def test_shipped_configs_build():
    params = params_of()
    for name in ("adam", "sgd"):
        tx = optim.make_optimizer(load(name), params, total_steps=100, steps_per_epoch=10)
        run(tx, params, random_grads(params, 1))


# --------------------------------------------------------------------------------------------
# Bad values: one-line ConfigError naming the key


@pytest.mark.parametrize("name,overrides,key", [
    ("adam", {"name": "rmsprop"}, "optimizer.name"),
    ("adam", {"lr": -1e-3}, "optimizer.lr"),
    ("adam", {"lr": math.nan}, "optimizer.lr"),
    ("adam", {"lr": "fast"}, "optimizer.lr"),
    ("adam", {"b1": 1.0}, "optimizer.b1"),
    ("adam", {"b2": -0.1}, "optimizer.b2"),
    ("adam", {"eps": 0.0}, "optimizer.eps"),
    ("sgd", {"momentum": 1.0}, "optimizer.momentum"),
    ("sgd", {"momentum": -0.5}, "optimizer.momentum"),
    ("sgd", {"momentum": True}, "optimizer.momentum"),
    ("sgd", {"momentum": 0.0, "nesterov": True}, "optimizer.nesterov"),
    ("sgd", {"nesterov": "yes"}, "optimizer.nesterov"),
    ("sgd", {"weight_decay": -5e-4}, "optimizer.weight_decay"),
    ("sgd", {"decay": ["weights", "gammas"]}, "optimizer.decay"),
    ("sgd", {"decay": "weights"}, "optimizer.decay"),
    ("adam", {"schedule": "exponential"}, "optimizer.schedule"),
    ("adam", {"decay_start": 1.0}, "optimizer.decay_start"),
    ("adam", {"decay_start": -0.1}, "optimizer.decay_start"),
    ("sgd", {"milestones": [0.75, 0.5]}, "optimizer.milestones"),
    ("sgd", {"milestones": [0.5, 0.5]}, "optimizer.milestones"),
    ("sgd", {"milestones": [2.5]}, "optimizer.milestones"),
    ("sgd", {"milestones": [0]}, "optimizer.milestones"),
    ("sgd", {"milestones": [5, 10]}, "optimizer.milestones"),  # epoch 10 is the end of the run
    ("sgd", {"milestones": []}, "optimizer.milestones"),
    ("sgd", {"milestones": None}, "optimizer.milestones"),
    ("sgd", {"milestones": [0.5], "warmup_epochs": 6}, "optimizer.milestones"),
    ("sgd", {"factor": 0.0}, "optimizer.factor"),
    ("sgd", {"warmup_epochs": 10}, "optimizer.warmup_epochs"),
    ("sgd", {"warmup_epochs": -1}, "optimizer.warmup_epochs"),
    ("sgd", {"schedule": "cosine", "final_lr_fraction": 1.5}, "optimizer.final_lr_fraction"),
])
def test_bad_values_raise_config_errors_naming_the_key(name, overrides, key):
    # 10 epochs of 10 steps.
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        optim.make_optimizer(load(name, **overrides), params_of(), total_steps=100,
                             steps_per_epoch=10)
    assert "\n" not in str(info.value)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="adam, sgd"):
        optim.make_optimizer(load("adam", name="lamb"), params_of(), total_steps=4,
                             steps_per_epoch=1)
    with pytest.raises(ConfigError, match="biases, norm, weights|weights, biases, norm"):
        optim.make_optimizer(load("sgd", decay=["all"]), params_of(), total_steps=4,
                             steps_per_epoch=1)


def test_bad_group_learning_rate_raises():
    with pytest.raises(ConfigError, match="learning_rates"):
        optim.make_optimizer(load("adam"), params_of(), total_steps=4, steps_per_epoch=1,
                             learning_rates=[(nnx.Param, -1.0)])
    with pytest.raises(ConfigError, match="learning_rates"):
        optim.make_optimizer(load("adam"), params_of(), total_steps=4, steps_per_epoch=1,
                             learning_rates=[])
