"""Shared test set-up: CPU only, fresh PRNG keys, and Hydra compose helpers.

Every test runs on the CPU (``JAX_PLATFORMS=cpu`` is set before JAX is imported), so results do
not depend on which accelerator a machine happens to have. Test outputs go to ``tmp_path``
only, so the suite is safe under ``pytest -n`` (xdist).

One persistent JAX compilation cache serves the whole test run: the xdist workers and every
``python -m bayescomp.…`` subprocess a test starts. Many tests train the same tiny networks, in
process and through the CLI, and compile identical programs; with the cache each is compiled
once per test run (with it, the default run took 0.82 of its time without it on an idle
2-core CPU: 9 min 3-20 s against 11 min 5 s). Compiled programs are
looked up by a hash of the program, the options and the JAX version, so a hit is the same
executable; the numbers do not change. The directory is made fresh for each ``pytest``
invocation and removed at its end; a ``JAX_COMPILATION_CACHE_DIR`` set by the user is used as is.
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' programs compile with LLVM at -O1 (XLA's default is -O3): most of the suite's time
# is compiling hundreds of small programs, each run a few times, and -O1 compiles them in a
# fraction of the time. tests/test_configs.py, tests/compression and tests/test_start_from.py
# (309 tests, -n 2, nothing else running, alternated runs on the 2-core development CPU) took
# 256-280 s against 389-392 s at -O3 (0.66-0.72). No option here turns on fast-math, so the
# level changes which LLVM passes run, not the floating-point semantics the tests check. Not -O0,
# which compiles faster still: with two forced host devices this XLA:CPU computes NaN gradients
# at -O0 for a program that is finite at -O1 to -O3 (tests/test_sharding.py's network; op by op
# it is finite too), an XLA fault, not ours. Users' runs and the benchmarks keep XLA's default.
# A level in the caller's XLA_FLAGS wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=1").strip()
# The CLI subprocesses keep glibc's default allocator: re-executing each of them with the tuned
# one (bayescomp/allocator.py) adds a Python start to every command and changes no number; the
# re-execution itself is tested with this unset (tests/test_allocator.py).
os.environ.setdefault("BAYESCOMP_ALLOCATOR", "system")
# The controller process makes the directory; the xdist workers and the subprocesses inherit
# the variables (so they find them already set). Thresholds at 0: the tests' programs are
# small and compile in well under JAX's default 1 s minimum, yet there are hundreds of them.
# No size limit: a limit turns on JAX's eviction, which lists and reads the whole directory at
# every write and made the run twice as slow. Without it an entry is written in place, so a
# process could read one that another is still writing (a window of microseconds, for the same
# program compiled by two processes at once); JAX then warns and compiles it itself.
_OWN_COMPILATION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_COMPILATION_CACHE = tempfile.mkdtemp(prefix="bayescomp-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_COMPILATION_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import itertools  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platform_name", "cpu")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"


def pytest_unconfigure(config):
    """Remove the test run's compilation cache (the process that made it: the controller)."""
    if _OWN_COMPILATION_CACHE is not None:
        shutil.rmtree(_OWN_COMPILATION_CACHE, ignore_errors=True)


@pytest.fixture
def xla_convolutions(monkeypatch):
    """CPU convolutions by XLA's own kernels for the test (``BAYESCOMP_CPU_CONV=xla``): for
    comparisons bit for bit against ``lax.conv_general_dilated``, from which oneDNN's
    (:mod:`bayescomp.nn.onednn_conv`, the default where installed) differ in float32 rounding."""
    from bayescomp.nn import onednn_conv

    monkeypatch.setenv(onednn_conv.KERNEL_ENV, "xla")
    onednn_conv.cpu_conv_kernel.cache_clear()
    yield
    monkeypatch.undo()
    onednn_conv.cpu_conv_kernel.cache_clear()


@pytest.fixture
def key():
    """A function handing out fresh, distinct PRNG keys (equinox's ``getkey``).

    Example::

        def test_something(key):
            x = jax.random.normal(key(), (3,))
    """
    counter = itertools.count()
    base = jax.random.key(0)
    return lambda: jax.random.fold_in(base, next(counter))


def _compose(overrides=()):
    """Compose ``conf/config.yaml`` with Hydra's compose API (no output directory, no chdir).

    Args:
        overrides: Hydra override strings, e.g. ``["+experiment=lenet300_svd", "+debug=smoke"]``.

    Returns:
        The composed ``DictConfig`` (without the ``hydra`` node).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


# Shrinks a smoke run to exactly 2 optimisation steps: the synthetic train set has 512 images,
# so batch 256 gives 2 steps per epoch; chunk 2 makes them one jitted call.
TWO_STEPS = ("+debug=smoke", "trainer.batch_size=256", "trainer.chunk_steps=2",
             "trainer.eval_batch_size=256")


@pytest.fixture(scope="session")
def compose():
    """``compose(overrides)``: the composed config, see :func:`_compose`."""
    return _compose


@pytest.fixture(scope="session")
def smoke_cfg():
    """``smoke_cfg(experiment, *overrides)``: a 2-step synthetic config of ``experiment``."""

    def make(experiment: str, *overrides: str):
        return _compose([f"+experiment={experiment}", *TWO_STEPS, *overrides])

    return make


@pytest.fixture(scope="session")
def finished_smoke_run(tmp_path_factory):
    """``finished_smoke_run(experiment)``: ``(run_dir, metrics)`` of a finished 2-step smoke run.

    Trained on first use per experiment and shared by the whole session (per xdist worker), so
    tests that read a finished run (diagnose, tradeoff) do not each train one. Read-only.
    """
    from bayescomp.procedures import variational

    runs = {}

    def get(experiment: str):
        if experiment not in runs:
            workdir = tmp_path_factory.mktemp(experiment)
            metrics = variational.run(_compose([f"+experiment={experiment}", *TWO_STEPS]),
                                         workdir)
            runs[experiment] = (workdir, metrics)
        return runs[experiment]

    return get


@pytest.fixture(scope="session")
def pretrained_dense_run(tmp_path_factory):
    """``pretrained_dense_run(model, *overrides)``: the directory of a finished 2-step smoke
    dense run of ``+experiment=<model>_dense`` with ``overrides`` (e.g. a narrow CIFAR model:
    ``"data=synthetic_cifar", "model=resnet8", "model.widths=[4,8,8]"``).

    The retraining methods (Deep Compression, soft weight-sharing, Dirichlet pruning) start from
    a finished dense run (``method.pretrained_run``); one is trained per model and overrides on
    first use and shared by the whole session (per xdist worker). Do not modify it: copy it.
    """
    from bayescomp.procedures import variational

    runs = {}

    def get(model: str, *overrides: str) -> pathlib.Path:
        if (model, overrides) not in runs:
            workdir = tmp_path_factory.mktemp(f"{model}_dense")
            variational.run(_compose([f"+experiment={model}_dense", *TWO_STEPS, *overrides]),
                            workdir)
            runs[model, overrides] = workdir
        return runs[model, overrides]

    return get


#: z log-variances that keep / drop a group of a group-normal (BC-GNJ) posterior with z mean 1:
#: log α = ∓10 against the threshold −3 of the networks below.
GROUP_KEEP, GROUP_DROP = -10.0, 10.0


def _group_pruned(model_cls, drops=None):
    """A BC-GNJ model (threshold −3) that keeps every group except ``drops``.

    Args:
        model_cls: ``LeNet300`` or ``LeNet5``.
        drops: ``{layer name: group indices}`` to remove (input units of dense layers, output
            channels of conv layers).
    """
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from bayescomp.nn import LayerFactory

    model = model_cls(LayerFactory(posterior="group_normal", prior="group_nj", threshold=-3.0),
                      rngs=nnx.Rngs(0))
    for _, layer in nnx.iter_modules(model):
        if hasattr(layer, "posterior"):
            layer.posterior.z_mean_param[...] = jnp.ones_like(layer.posterior.z_mean_param[...])
            layer.posterior.z_log_var[...] = jnp.full_like(layer.posterior.z_log_var[...],
                                                           GROUP_KEEP)
    for name, groups in (drops or {}).items():
        layer = getattr(model, name)
        log_var = np.asarray(layer.posterior.z_log_var[...]).copy()
        log_var[list(groups)] = GROUP_DROP
        layer.posterior.z_log_var[...] = jnp.asarray(log_var)
    return model


@pytest.fixture(scope="session")
def group_pruned():
    """``group_pruned(model_cls, {layer: groups})``: a BC-GNJ model with those groups removed."""
    return _group_pruned
