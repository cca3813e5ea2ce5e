r"""XLA compile options: for training steps on CPU, leave dots and convolutions to XLA's own
emitters instead of YNNPACK library fusions; for a model's initialisation on CPU, LLVM at -O2.

Recent XLA:CPU hands dots, convolutions, reductions and max-pools to YNNPACK (the successor of
XNNPACK) as "library fusions" (``xla_cpu_experimental_ynn_fusion_type``). For the small
matrices of a LeNet training step at batch 100 — a (100 × 784) · (784 × 300) product, conv
gradients over 100 × 24 × 24 × 20 activations — those fusions are slower than the Eigen
kernels XLA uses otherwise. Turning them off for the training step, measured on the 2-core
development CPU as the median within-round ratio of one-process A/B runs
(``benchmarks/compile_options_ab.py EXPERIMENT``: both variants of the step compiled in one
process and called alternately, 5–21 rounds, several runs):

* LeNet-5 Sparse VD step 0.74–0.78× (e.g. 86 → 69 ms), LeNet-5 dense 0.71–0.83×;
* LeNet-300-100 dense 0.92–0.96×, LeNet-300-100 Sparse VD 0.92–0.99×.

Evaluation is left as XLA chooses: the forward pass of the posterior-mean LeNet-5 over 10,000
test images at batch 1,000 is faster with YNNPACK (0.65 against 0.77 s).

A model's initialisation (:mod:`bayescomp.compiled_init`) is compiled with
``xla_backend_optimization_level=2`` instead of XLA's default 3. Its programs are threefry
hashes and the normal and truncated-normal transforms, whose LLVM -O3 compilation is slow (the
unrolled hash rounds); at -O2 it is several times faster and computes the same numbers (no
option here turns on fast-math; -O2 and -O3 differ in which passes run, not in floating-point
semantics). A training step keeps -O3: its compile time hardly changes at -O2 (ResNet-20) and
its run time may.

The options are debug options of XLA and may disappear; :func:`train_step_compiler_options`
and :func:`init_compiler_options` check once that the running XLA accepts them and otherwise
return no options. Other backends get none, and so does an initialisation where ``XLA_FLAGS``
set the optimisation level.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp

#: Options of :func:`jit_train_step` on XLA:CPU. An empty list of YNNPACK fusion kinds turns the
#: library fusions off; dots and convolutions then use XLA's Eigen-backed kernels.
CPU_TRAIN_STEP_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}

#: Options of a model's compiled initialisation on XLA:CPU (see the module).
CPU_INIT_OPTIONS: dict[str, int] = {"xla_backend_optimization_level": 2}


@functools.cache
def _cpu_accepts(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this XLA:CPU compiles a trivial function with ``options`` (checked once)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
            jnp.zeros((), jnp.float32)).compile()
    except Exception:  # an unknown or malformed option: XLA raises at compile time
        return False
    return True


def _cpu_options(options: dict) -> dict:
    """``options`` on XLA:CPU where it accepts them, else none."""
    if jax.default_backend() != "cpu":
        return {}
    if not _cpu_accepts(tuple(sorted(options.items()))):
        return {}
    return dict(options)


def train_step_compiler_options() -> dict[str, str]:
    """The compile options of a training step on the default backend (see the module)."""
    return _cpu_options(CPU_TRAIN_STEP_OPTIONS)


def init_compiler_options() -> dict[str, int]:
    """The compile options of a model's initialisation on the default backend (see the module).

    No options where the process's ``XLA_FLAGS`` choose an optimisation level themselves
    (``--xla_backend_optimization_level``, as the test suite does): the caller's level wins.
    """
    if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return _cpu_options(CPU_INIT_OPTIONS)


def jit_train_step(fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` with :func:`train_step_compiler_options`.

    Args:
        fn: A training step or chunk of steps.
        **jit_kwargs: Further ``jax.jit`` arguments (``static_argnums``, ``donate_argnums``, …).

    Returns:
        The jitted function.
    """
    return jax.jit(fn, compiler_options=train_step_compiler_options(), **jit_kwargs)
