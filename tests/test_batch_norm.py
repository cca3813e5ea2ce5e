"""BatchNorm in the training loop: statistics carried through the step, updated with batch
statistics, frozen in running-average phases, used in evaluation, never optimised or decayed.

The references are numpy: the normalisation and the PyTorch-convention running update
(``running = (1 − m)·running + m·batch``, unbiased variance), and a forward pass of the small
conv → BN → ReLU → pool → dense network below recomputed from its stored weights and running
statistics.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp import loop, runs
from bayescomp.nn import LayerFactory
from bayescomp.nn.norm import BatchNorm, NormBias, NormScale
from bayescomp.posteriors.variables import Bias, PointWeight


class SmallBatchNormNet(nnx.Module):
    """conv 3x3 (1→4, VALID) → BatchNorm → ReLU → 2x2 max-pool → flatten → dense (676→10)."""

    layer_names = ("conv", "fc")

    def __init__(self, layers: LayerFactory, *, rngs: nnx.Rngs):
        self.conv = layers.conv("conv", 1, 4, (3, 3), rngs=rngs)
        self.bn = layers.norm("bn", 4)
        self.fc = layers.dense("fc", 13 * 13 * 4, 10, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        h = jax.nn.relu(self.bn(self.conv(x, rngs=rngs)))
        n, height, width, c = h.shape
        h = h.reshape(n, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))
        return self.fc(h.reshape(n, -1), rngs=rngs)


def numpy_logits(model: SmallBatchNormNet, x: np.ndarray) -> np.ndarray:
    """The evaluation forward pass in float64 numpy, from the stored weights and statistics."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(model.conv.posterior.weight[...], np.float64)  # (3, 3, 1, 4)
    h = np.zeros((x.shape[0], 26, 26, 4))
    for a in range(3):
        for b in range(3):
            h += x[:, a:a + 26, b:b + 26, :] @ kernel[a, b]
    h += np.asarray(model.conv.bias[...], np.float64)
    bn = model.bn
    h = ((h - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...], np.float64)
                                                  + bn.epsilon)
         * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...]))
    h = np.maximum(h, 0.0).reshape(-1, 13, 2, 13, 2, 4).max(axis=(2, 4)).reshape(len(x), -1)
    return h @ np.asarray(model.fc.posterior.weight[...], np.float64) + np.asarray(
        model.fc.bias[...])


def test_batch_statistics_and_the_running_update_match_numpy(key):
    bn = BatchNorm(3, momentum=0.1, epsilon=1e-5)
    bn.scale[...] = jnp.asarray([1.0, 2.0, 0.5])
    bn.bias[...] = jnp.asarray([0.0, -1.0, 3.0])
    x = np.asarray(jax.random.normal(key(), (8, 5, 5, 3)) * 2.0 + 1.0)
    y = np.asarray(bn(jnp.asarray(x)))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased, as in training
    want = (x - mean) / np.sqrt(var + 1e-5) * [1.0, 2.0, 0.5] + [0.0, -1.0, 3.0]
    # float32 normalisation of O(1) values: a few ulps of the outputs (|y| < 10).
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    n = x.size // 3
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    # The running-average view normalises by the stored statistics and updates nothing.
    stored = (np.asarray(bn.mean[...]), np.asarray(bn.var[...]))
    frozen = nnx.view(bn, use_running_average=True)
    y_running = np.asarray(frozen(jnp.asarray(x)))
    want = (x - stored[0]) / np.sqrt(stored[1] + 1e-5) * [1.0, 2.0, 0.5] + [0.0, -1.0, 3.0]
    np.testing.assert_allclose(y_running, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(bn.mean[...]), stored[0])
    np.testing.assert_array_equal(np.asarray(bn.var[...]), stored[1])


def test_dot_sum_batch_norm_gradients_match_float64_autodiff(key):
    """The hand-written backward of :func:`batch_norm_with_dot_sums` (the CPU training path)
    against autodiff of the textbook formula in float64 numpy-precision JAX, including
    cotangents on the returned batch statistics."""
    from bayescomp.nn.norm import batch_norm_with_dot_sums, channel_sum

    keys = jax.random.split(key(), 4)
    x = jax.random.normal(keys[0], (6, 5, 4, 3)) * 2.0 + 1.0
    scale, bias = jax.random.normal(keys[1], (3,)), jax.random.normal(keys[2], (3,))
    weights = jax.random.normal(keys[3], x.shape)

    def loss(fn, dtype):
        def value(x, scale, bias):
            y, mean, var = fn(x.astype(dtype), scale.astype(dtype), bias.astype(dtype))
            return (jnp.sum(y * weights.astype(dtype)) + 0.3 * jnp.sum(mean)
                    + 0.7 * jnp.sum(var ** 2))
        return value

    def textbook(x, scale, bias):
        mean = x.mean(axis=(0, 1, 2))
        var = jnp.square(x - mean).mean(axis=(0, 1, 2))
        return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias, mean, var

    with jax.enable_x64():
        want = jax.grad(loss(textbook, jnp.float64), argnums=(0, 1, 2))(
            *(a.astype(jnp.float64) for a in (x, scale, bias)))
        got = jax.grad(loss(lambda *a: batch_norm_with_dot_sums(*a, 1e-5), jnp.float32),
                       argnums=(0, 1, 2))(x, scale, bias)
        for g, w in zip(got, want):
            # float32 sums of 120 terms of O(10) with cancellation (Σ of BN's x-gradient is 0):
            # a few 1e-6 of the largest gradient.
            assert float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w))) < 2e-5
        np.testing.assert_allclose(np.asarray(channel_sum(x)),
                                   np.asarray(x, np.float64).sum(axis=(0, 1, 2)), rtol=1e-6)


def test_momentum_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="PyTorch convention"):
        BatchNorm(3, momentum=0.9 + 0.2)


SGD_WITH_DECAY = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
                  "weight_decay": 0.1, "decay": ["weights", "biases", "norm"],
                  "schedule": "constant"}


@pytest.fixture(scope="module")
def trained(smoke_cfg, tmp_path_factory):
    """The small BN network after one batch-statistics epoch (SGD with weight decay on every
    parameter type), then a running-average phase that trains only γ and β."""
    cfg = smoke_cfg("lenet300_dense", "trainer.tensorboard=false")
    dataset = runs.load_run_dataset(cfg)
    model = SmallBatchNormNet(LayerFactory(), rngs=nnx.Rngs(params=0))
    training = loop.TrainingRun(cfg, tmp_path_factory.mktemp("bn"), dataset)
    training.fit(model, loop.Phase("batch_stats", 1, SGD_WITH_DECAY, key=jax.random.key(0)))
    after_first = {"mean": np.asarray(model.bn.mean[...]), "var": np.asarray(model.bn.var[...]),
                   "scale": np.asarray(model.bn.scale[...]),
                   "kernel": np.asarray(model.fc.posterior.weight[...])}
    second = loop.Phase("running", 1, SGD_WITH_DECAY, key=jax.random.key(1),
                        trains=(NormScale, NormBias), batch_norm="running")
    training.fit(model, second)
    return dict(model=model, training=training, dataset=dataset, after_first=after_first,
                second=second)


def test_batch_statistics_phase_updates_the_running_averages(trained):
    # From the initial 0 / 1, a batch-statistics epoch moves every channel's running averages.
    first = trained["after_first"]
    assert np.all(first["mean"] != 0.0) and np.all(first["var"] != 1.0)
    assert np.all(first["var"] > 0.0)


def test_running_average_phase_freezes_statistics_and_other_types(trained):
    model, first = trained["model"], trained["after_first"]
    # Statistics bit for bit unchanged, although weight decay (which would shrink them) and
    # SGD ran on the phase's parameters.
    np.testing.assert_array_equal(np.asarray(model.bn.mean[...]), first["mean"])
    np.testing.assert_array_equal(np.asarray(model.bn.var[...]), first["var"])
    # Types outside the phase's `trains` are frozen; γ trained.
    np.testing.assert_array_equal(np.asarray(model.fc.posterior.weight[...]), first["kernel"])
    assert np.any(np.asarray(model.bn.scale[...]) != first["scale"])


def test_frozen_types_have_no_optimizer_state(trained):
    # The optimiser of the running-average phase holds state for γ and β only (SGD momentum:
    # one trace per parameter), nothing for the kernels, biases or statistics.
    training, second = trained["training"], trained["second"]
    split = loop.step.StateSplit(second.trains)
    (optimizer, _), = [v for k, v in training._compiled.items() if k[1] == split]
    graphdef, trainable, batch_stats, frozen = split.split(
        loop.train_view(trained["model"], "running"))
    state_leaves = jax.tree.leaves(optimizer.init(trainable))
    shapes = sorted(leaf.shape for leaf in state_leaves if leaf.ndim)
    assert shapes == [(4,), (4,)]
    assert {type(v) for _, v in nnx.to_flat_state(trainable)} == {NormScale, NormBias}
    assert {type(v) for _, v in nnx.to_flat_state(batch_stats)} == {nnx.BatchStat}
    assert {type(v) for _, v in nnx.to_flat_state(frozen)} >= {PointWeight, Bias}


def test_evaluation_uses_the_stored_running_statistics(trained):
    model, training, dataset = trained["model"], trained["training"], trained["dataset"]
    x, y = dataset.x_test, dataset.y_test
    want = numpy_logits(model, x)
    got = np.asarray(nnx.view(model, deterministic=True, use_running_average=True,
                              raise_if_not_found=False)(jnp.asarray(x)))
    # float32 forward pass (sums of up to 676 terms of O(1)) against float64: ~1e-5 relative.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    error = 100.0 * np.mean(np.argmax(want, -1) != y)
    assert training.error(model) == pytest.approx(error, abs=1e-9)
    # Evaluation with batch statistics would differ: the running averages are what is used.
    batch_view = nnx.view(nnx.clone(model), deterministic=True, use_running_average=False,
                          raise_if_not_found=False)
    assert not np.allclose(np.asarray(batch_view(jnp.asarray(x[:16]))), want[:16], atol=1e-3)


def test_resume_restores_the_running_statistics(smoke_cfg, tmp_path):
    # Two epochs in one go, and one epoch then a resume for the second (a new process would
    # rebuild the model from scratch): statistics and parameters bit for bit equal, so the
    # running averages travel through the checkpoint like the parameters.
    cfg = smoke_cfg("lenet300_dense", "trainer.tensorboard=false")
    dataset = runs.load_run_dataset(cfg)
    adam = {"name": "adam", "lr": 1e-3, "b1": 0.9, "b2": 0.999, "schedule": "constant"}

    def trained(workdir, epochs):
        model = SmallBatchNormNet(LayerFactory(), rngs=nnx.Rngs(params=0))
        loop.TrainingRun(cfg, workdir, dataset).fit(
            model, loop.Phase("p", epochs, adam, key=jax.random.key(0)))
        return model

    straight = trained(tmp_path / "straight", 2)
    trained(tmp_path / "resumed", 1)
    resumed = trained(tmp_path / "resumed", 2)
    assert np.any(np.asarray(straight.bn.mean[...]) != 0.0)
    for want, got in zip(jax.tree.leaves(nnx.state(straight)), jax.tree.leaves(nnx.state(resumed))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_reestimated_statistics_are_the_batch_mean_and_unbiased_variance_layer_by_layer():
    """Adaptive BatchNorm: after re-estimation on x, each BatchNorm holds the mean and the
    unbiased variance (numpy, ddof=1) of what reaches it, the second one seeing the first's
    output normalised with the re-estimated statistics; momentum and view are restored.

    Tolerances: float32 sums over 200 positions (relative error below 200 · 2⁻²⁴ ≈ 1.2e-5,
    pairwise in practice far less), and 1e-4 where the first layer's rounding feeds the second.
    """
    from bayescomp.nn.norm import reestimate_statistics

    class TwoNorms(nnx.Module):
        def __init__(self):
            self.first = BatchNorm(3, momentum=0.1)
            self.second = BatchNorm(3, momentum=0.1)
            self.first.scale[...] = jnp.asarray([2.0, 0.5, 1.0])
            self.first.bias[...] = jnp.asarray([1.0, -1.0, 0.0])

        def __call__(self, x):
            return self.second(jnp.square(self.first(x)))

    model = TwoNorms()
    x = jax.random.normal(jax.random.key(0), (40, 5, 3)) * 3.0 + 2.0
    assert reestimate_statistics(model, x) == 2
    flat = np.asarray(x, np.float64).reshape(-1, 3)
    np.testing.assert_allclose(model.first.mean[...], flat.mean(0), rtol=2e-5)
    np.testing.assert_allclose(model.first.var[...], flat.var(0, ddof=1), rtol=2e-5)
    normalised = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * [2.0, 0.5, 1.0] + \
        [1.0, -1.0, 0.0]
    np.testing.assert_allclose(model.second.mean[...], np.square(normalised).mean(0), rtol=1e-4)
    np.testing.assert_allclose(model.second.var[...], np.square(normalised).var(0, ddof=1),
                               rtol=1e-4)
    assert model.first.momentum == model.second.momentum == 0.1
    assert not model.first.use_running_average
    assert reestimate_statistics(nnx.Linear(3, 3, rngs=nnx.Rngs(0)), x) == 0
