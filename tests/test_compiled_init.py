"""A model's compiled initialisation (bayescomp/compiled_init.py, runs.build_model).

The reference is the model's eager construction, the code runs used before. Integer state (PRNG
keys and counts, indices) must be equal. Floating-point Variables may differ by float32 rounding
only: threefry is integer arithmetic and the transforms run without fast-math at -O2 as at -O3,
but one program lets XLA fold ``0.01 * √2 · erfinv(u)`` into one constant factor and contract
``c + 0.01 · n`` into a fused multiply-add, where eager construction rounds after each op. Each
such rewrite moves a value by at most one unit in the last place (ulp), and an initial value
passes through at most two (the scale, then the offset); the bound is 4 ulps, twice that.
Anything beyond it (another key, another draw order, a wrong scale) is off by many thousands.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from bayescomp import compiled_init, models, runs, xla_options
from bayescomp import nn as bnn
from bayescomp.procedures import channel_pruning

CIFAR = ("data=synthetic_cifar", "model=resnet8", "model.widths=[4,8,8]")

# One experiment per kind of layer: each posterior (Gaussian, group normal, group log-normal,
# point), the channel layers (VCNN's saliency BatchNorm, Dirichlet switches, slimming's scaled
# BatchNorm) and a VGG with plain BatchNorm.
CASES = {
    "lenet5_gnj": ((28, 28, 1), ()),
    "lenet5_ghs": ((28, 28, 1), ()),
    "lenet300_svd": ((28, 28, 1), ()),
    "resnet20_vcnn_cpu": ((32, 32, 3), CIFAR),
    "resnet20_dirichlet_cpu": ((32, 32, 3), CIFAR),
    "resnet20_slimming_cpu": ((32, 32, 3), CIFAR),
    "vgg16_dense": ((32, 32, 3), ("data=synthetic_cifar",
                                  "model.widths=[4,4,8,8,8,8,8,8,8,8,8,8,8,8]")),
}


def _eager(cfg, input_shape, seed):
    """The model as runs built it before compiled initialisation: constructed op by op."""
    batch_norm = cfg.trainer.get("batch_norm")
    factory = bnn.from_config(OmegaConf.to_container(cfg.method, resolve=True),
                              None if batch_norm is None else OmegaConf.to_container(batch_norm))
    widths = cfg.model.get("widths")
    extra = {} if widths is None else {"widths": tuple(OmegaConf.to_object(widths))}
    return models.get(cfg.model.name)(factory, rngs=nnx.Rngs(params=seed),
                                      input_shape=input_shape, num_classes=10, **extra)


def _leaves(model):
    """Every Variable's value as a NumPy array (PRNG keys as their key data), with its path."""
    flat = nnx.to_flat_state(nnx.state(model))
    out = {}
    for path, variable in flat:
        value = variable.get_value() if hasattr(variable, "get_value") else variable.value
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        out[path] = np.asarray(value)
    return out


@pytest.mark.parametrize("experiment", sorted(CASES))
def test_compiled_build_is_the_eager_one_to_float32_rounding(experiment, compose):
    input_shape, overrides = CASES[experiment]
    cfg = compose([f"+experiment={experiment}", *overrides])
    if experiment.startswith("resnet20_slimming"):  # the slimming procedure sets N (its L1)
        cfg = channel_pruning.with_n_train(cfg, 512)
    for seed in (0, 3, 2**32 - 1):  # the largest seed settings accept
        eager = _eager(cfg, input_shape, seed)
        want = _leaves(eager)
        got_model = runs.build_model(cfg, input_shape, 10, seed)
        # the static half too (thresholds, clips, prior settings): from the cached graph
        # definition, which must be this configuration's
        assert nnx.graphdef(got_model) == nnx.graphdef(eager)
        got = _leaves(got_model)
        assert got.keys() == want.keys()
        for path in want:
            assert got[path].dtype == want[path].dtype, path
            if np.issubdtype(want[path].dtype, np.floating):
                np.testing.assert_array_max_ulp(got[path], want[path], maxulp=4)
            else:
                np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))
        assert type(got_model) is models.get(cfg.model.name)


def test_settings_that_only_change_static_attributes_get_their_own_program(compose):
    # Same shapes, another fixed threshold and weight-variance clip: a key that left them out
    # would hand back the first configuration's graph definition.
    base = compose(["+experiment=lenet5_gnj"])
    other = compose(["+experiment=lenet5_gnj", "method.prune.threshold=-1.5",
                     "method.posterior_init.max_weight_var=0.5"])
    eager = {id(cfg): nnx.graphdef(_eager(cfg, (28, 28, 1), 0)) for cfg in (base, other)}
    assert eager[id(base)] != eager[id(other)]  # the premise: the two differ in static state
    for cfg in (base, other, base):
        assert nnx.graphdef(runs.build_model(cfg, (28, 28, 1), 10, 0)) == eager[id(cfg)]


def test_the_program_is_traced_once_per_key_and_run_per_seed(monkeypatch):
    monkeypatch.setattr(compiled_init, "_PROGRAMS", {})  # a fresh cache, however often run
    traces = []

    def construct(key):
        traces.append(key)
        return nnx.Linear(3, 2, rngs=nnx.Rngs(params=key))

    key = ("test", "linear-3-2")
    first = compiled_init.initialize(key, construct, 0)
    second = compiled_init.initialize(key, construct, 1)
    again = compiled_init.initialize(key, construct, 0)
    # one abstract trace for the graph definition, one for the compiled program; no more
    assert len(traces) == 2
    assert not np.array_equal(first.kernel[...], second.kernel[...])
    np.testing.assert_array_equal(again.kernel[...], first.kernel[...])
    np.testing.assert_array_equal(first.kernel[...],
                                  nnx.Linear(3, 2, rngs=nnx.Rngs(params=0)).kernel[...])


def test_the_initialisation_compiles_at_o2_on_cpu(monkeypatch):
    # the test run chooses its own level in XLA_FLAGS (conftest), which the options leave alone
    assert "xla_backend_optimization_level" in os.environ["XLA_FLAGS"]
    assert xla_options.init_compiler_options() == {}
    monkeypatch.setenv("XLA_FLAGS", "")
    if jax.default_backend() != "cpu":
        assert xla_options.init_compiler_options() == {}
        return
    assert xla_options.init_compiler_options() == {"xla_backend_optimization_level": 2}
    monkeypatch.setattr(xla_options, "CPU_INIT_OPTIONS", {"xla_cpu_option_that_does_not_exist": 1})
    assert xla_options.init_compiler_options() == {}
