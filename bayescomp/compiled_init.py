r"""A model's initial state computed in one compiled program, reused across seeds.

Constructing an NNX module eagerly runs each initializer as its own small XLA program:
``jax.random.normal`` and ``jax.random.truncated_normal`` are compiled once per weight shape,
and on XLA:CPU each compilation (a threefry hash and the inverse-error-function transform, at
LLVM -O3) takes seconds: most of a short run's start goes to building its model.
:func:`initialize` instead traces the constructor once, under ``jax.jit``, with
the seed as an argument (made a key inside the program), and compiles the whole initialisation
as one program with :func:`bayescomp.xla_options.init_compiler_options` (-O2 on CPU). The
program is kept per ``key`` for the life of the process, so building the same model again
(another seed, a fresh start of a phase) only runs it. Measured in fresh processes, the build
takes 0.38-0.83 of the eager one's time, least gained where many draws share a shape (eager code
compiles each shape once; one program compiles every draw) (``benchmarks/model_init_speed.py``,
``benchmarks/README.md``).

The result is the module the constructor builds eagerly up to float32 rounding: the same
threefry keys drawn in the same order (:class:`flax.nnx.Rngs` counts its draws in traced state
as in eager code), the same transforms, no fast-math. Only the rounding of the scale and offset
arithmetic after a draw may differ, by an ulp or two (in one program XLA folds constant factors
and fuses multiply-adds, where eager code rounds after each op); integer state is equal
(``tests/test_compiled_init.py`` compares every Variable of eagerly and compiled built models).
Runs of commits before this module drew the same initial networks to that rounding.
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable, TypeVar

import jax
import numpy as np
from flax import nnx

from bayescomp import xla_options

M = TypeVar("M", bound=nnx.Module)

#: key -> (graph definition, compiled ``seed -> state``). A handful of models per process.
_PROGRAMS: dict[Hashable, tuple[nnx.GraphDef, Callable]] = {}
_LOCK = threading.Lock()


def initialize(key: Hashable, construct: Callable[[jax.Array], M], seed: int) -> M:
    """``construct(seed)``, with its initialisation compiled once per ``key``.

    Args:
        key: Identifies what ``construct`` builds (model, layers, shapes, widths): equal keys
            must mean constructors that build the same module from the same seed. Hashable.
        construct: Builds the module from a PRNG key (``jax.random.key(seed)``, traced: pass
            it on to :class:`flax.nnx.Rngs`, never to Python control flow).
        seed: The seed, ``0 <= seed < 2**32`` (the range ``settings`` accepts), passed as a
            uint32: ``jax.random.key`` of it is the eager key of the Python int.

    Returns:
        The module ``construct(seed)`` would build eagerly, its Variables on the default device.
    """
    with _LOCK:
        entry = _PROGRAMS.get(key)
        if entry is None:
            graphdef = nnx.graphdef(nnx.eval_shape(lambda: construct(jax.random.key(0))))
            # the lock stays held while tracing: constructors must not call initialize
            program = jax.jit(lambda s: nnx.state(construct(jax.random.key(s))),
                              compiler_options=xla_options.init_compiler_options())
            entry = _PROGRAMS[key] = (graphdef, program)
    graphdef, program = entry
    return nnx.merge(graphdef, program(np.uint32(seed)))
