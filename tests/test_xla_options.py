"""Compile options of training steps (bayescomp/xla_options.py)."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bayescomp import loop, runs, step, xla_options

CPU = jax.default_backend() == "cpu"


def _matmul_chain(x, w):
    # A dot of the size of LeNet-300-100's first layer at batch 100, which XLA:CPU hands to a
    # YNNPACK library fusion by default.
    return jnp.tanh(x @ w).sum()


def _hlo(jitted, *args) -> str:
    return jitted.lower(*args).compile().as_text()


@pytest.fixture(scope="module")
def operands():
    x = jax.random.normal(jax.random.key(0), (100, 784), jnp.float32)
    # LeCun-normal scale, as the layers initialise: pre-activations ~ N(0, 1).
    w = jax.random.normal(jax.random.key(1), (784, 300), jnp.float32) / np.sqrt(784)
    return x, w


@pytest.mark.skipif(not CPU, reason="the option is XLA:CPU's")
def test_train_step_jit_compiles_without_library_fusions(operands):
    grad = jax.grad(_matmul_chain, argnums=1)
    # The premise: by default this XLA puts the dot into a YNNPACK fusion. If a new XLA stops
    # doing so, the option has become moot and should be re-measured, not kept blindly.
    assert "__ynn_fusion" in _hlo(jax.jit(grad), *operands)
    assert "__ynn_fusion" not in _hlo(xla_options.jit_train_step(grad), *operands)


def test_train_step_jit_computes_the_same_values(operands):
    # Eigen and YNNPACK sum the products in different orders: float32 rounding only. A
    # pre-activation (784 terms of size ~0.04) differs by ≲ √784 · 2⁻²⁴ · 0.04 ≈ 2e-8; through
    # |d sech²/dz| ≤ 0.77 and the backward dot's 100 terms that is ≲ 2e-6 in the gradient, whose
    # largest entries are ~30; the backward dot's own rounding adds ~√100 · 2⁻²⁴ · 30 ≈ 2e-5.
    # 1e-5 of the largest entry (3e-4) leaves a 10× margin and still fails on any real change.
    grad = jax.grad(_matmul_chain, argnums=1)
    want = np.asarray(jax.jit(grad)(*operands))
    got = np.asarray(xla_options.jit_train_step(grad)(*operands))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_an_option_this_xla_rejects_is_dropped(monkeypatch):
    monkeypatch.setattr(xla_options, "CPU_TRAIN_STEP_OPTIONS",
                        {"xla_cpu_option_that_does_not_exist": "1"})
    assert xla_options.train_step_compiler_options() == {}
    assert xla_options.jit_train_step(lambda v: v * 2)(jnp.float32(3.0)) == 6.0


def test_other_backends_get_no_options(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert xla_options.train_step_compiler_options() == {}


@pytest.mark.skipif(not CPU, reason="the option is XLA:CPU's")
@pytest.mark.parametrize("loop_kind", ["scan", "python"])
def test_training_chunks_use_the_options(compose, loop_kind):
    # Every procedure trains through step.make_chunk; both of its loops compile with the options
    # (a masked point-weight phase, as Deep Compression's, included).
    cfg = compose(["+experiment=lenet300_svd", "+debug=smoke"])
    model = runs.build_model(cfg, (28, 28, 1), 10, seed=0)
    optimizer = optax.adam(1e-3)
    split = step.StateSplit()
    graphdef, params, batch_stats, frozen = split.split(loop.train_view(model, "batch_stats"))
    x = jnp.zeros((64, 28, 28, 1), jnp.float32)
    y = jnp.zeros((64,), jnp.int32)
    index = jnp.zeros((2, 32), jnp.int32)
    chunk = step.make_chunk(graphdef, split, optimizer, n_train=64, loop=loop_kind)
    masks = [None] * len(jax.tree.leaves(params))
    masks[-1] = jnp.ones(jax.tree.leaves(params)[-1].shape, bool)
    args = (params, batch_stats, frozen, optimizer.init(params), masks, x, y)
    if loop_kind == "scan":
        hlo = _hlo(chunk, *args, index, jax.random.key(0), jnp.float32(1.0))
    else:
        hlo = _hlo(chunk.jitted_step, (params, batch_stats, optimizer.init(params)),
                   (index[0], jax.random.key(0)), frozen, masks, x, y, jnp.float32(1.0))
    assert " dot(" in hlo and "__ynn_fusion" not in hlo


def test_ab_benchmark_compiles_each_variant_with_its_options(monkeypatch, capsys):
    # benchmarks/compile_options_ab.py: one call per variant per round, and each variant's step
    # compiled with exactly its option set (the HLO of B has no library fusions, A's does).
    benchmarks = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    ab = importlib.import_module("compile_options_ab")
    ab.main(["lenet300_dense", "--steps", "2", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "A: " in out and "B: " in out and "2 rounds of 2 steps" in out
    timers = [ab.build("lenet300_dense", ab.option_set(s), 2, 1) for s in ("none", "default")]
    hlos = [t.train_chunk.lower(t.params, t.batch_stats, t.frozen, t.opt_state, None, t.x, t.y,
                                jnp.zeros((2, t.batch_size), jnp.int32), jax.random.key(0),
                                jnp.float32(1.0)).compile().as_text() for t in timers]
    if CPU:
        assert "__ynn_fusion" in hlos[0] and "__ynn_fusion" not in hlos[1]
    with pytest.raises(SystemExit, match="does not accept"):
        ab.build("lenet300_dense", {"xla_cpu_option_that_does_not_exist": 1}, 2, 1)
    with pytest.raises(SystemExit, match="JSON object"):
        ab.option_set("[1, 2]")
