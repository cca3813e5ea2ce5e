r"""The process's memory allocator: glibc malloc set up so XLA:CPU's step buffers are reused.

**Why.** XLA:CPU takes each execution's temporary buffer (every activation a train step keeps for
its backward pass: about 200 MB for ResNet-20 at batch 128) from ``malloc`` and frees it when
the step ends. With glibc's defaults a block that large is served by fresh ``mmap`` pages, or by
an arena heap that ``free`` shrinks again, so every step touches about 200 MB of pages the
kernel must fault in and zero-fill first: about 50,000 minor page faults per ResNet-20 step
(``resource.getrusage``), 70-120 ms of kernel CPU time, and the first write into each of the
step's activations (the forward convolutions, the bias adds) pays for them. Four glibc tunables
stop it:

* ``glibc.malloc.arena_max=1``: one arena for every thread, the main heap (grown with ``brk``),
  not per-thread heaps that are unmapped piecewise when freed;
* ``glibc.malloc.mmap_max=0``: no block is served by ``mmap``, whatever its size;
* ``glibc.malloc.trim_threshold`` = 64 GiB: ``free`` never hands the heap's top back, so the next
  step's buffer lands on pages that are already mapped (the process keeps its peak heap);
* ``glibc.malloc.hugetlb=1``: the heap is advised as transparent huge pages (``madvise``;
  2 MiB pages where the kernel allows them), fewer TLB misses on the large activations.

Measured on the 2-core development VM (``benchmarks/README.md``): page faults per ResNet-20 step
from ~50,000 to 0 after the first step, the step about a fifth shorter. The numbers of a run do
not change (allocation decides where buffers live, not what is computed).

**How.** glibc reads tunables once, when a process starts, from ``GLIBC_TUNABLES``; they cannot
be set from inside. So the command-line entries (``python -m bayescomp.run``,
``benchmarks/train_speed.py``, ``kernel_ab.py``, ``inference_speed.py``) call
:func:`reexec_with_tuned_allocator` first: on Linux with
glibc, where the settings are not yet in place, it replaces the process with the same command
and the tunables added (``os.execve``; once: the environment marks it). Tunables a user has set
in ``GLIBC_TUNABLES`` are kept and win over these. ``BAYESCOMP_ALLOCATOR=system`` turns it off
(in a process started with the tunables already set, e.g. a child of a tuned one, it cannot undo
them: unset ``GLIBC_TUNABLES`` there). Nothing happens elsewhere: macOS or musl; a process
whose command cannot be replayed (a script read from stdin, an interactive interpreter, a
Jupyter kernel, a debugger or profiler attached); or where a GPU plugin for JAX is installed and
``JAX_PLATFORMS`` does not name ``cpu`` first, since the settings were measured for CPU training
only (on the 2-core development VM; one arena serialises the threads' ``malloc`` calls, which a
host feeding accelerators may not want).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Mapping

#: The tunables (module docstring), in ``GLIBC_TUNABLES`` syntax.
TUNABLES = (
    "glibc.malloc.arena_max=1",
    "glibc.malloc.mmap_max=0",
    f"glibc.malloc.trim_threshold={64 * 2**30}",
    "glibc.malloc.hugetlb=1",
)

#: ``system`` leaves the allocator as glibc starts it; ``tuned`` (the default) applies
#: :data:`TUNABLES`.
SWITCH = "BAYESCOMP_ALLOCATOR"
CHOICES = ("tuned", "system")

#: Set in the environment of the re-executed process: the tunables are in place.
MARK = "BAYESCOMP_ALLOCATOR_TUNED"


def _is_glibc_linux() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


#: JAX's GPU plugins; with one installed JAX picks the GPU unless JAX_PLATFORMS says cpu.
_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")


def _may_use_an_accelerator(environ: Mapping[str, str]) -> bool:
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    return any(importlib.util.find_spec(name) is not None for name in _GPU_PLUGINS)


def _replayable() -> bool:
    """Whether this process's command can be run again as it was: not a script read from stdin
    (it has been read), an interactive session, a Jupyter kernel, or a traced process."""
    argv = getattr(sys, "orig_argv", None)
    if not argv or len(argv) < 2 or not sys.executable:
        return False
    if argv[1] == "-" or sys.flags.interactive or sys.gettrace() is not None:
        return False
    return not _inside_ipython()


def _inside_ipython() -> bool:
    """Whether an IPython shell or a Jupyter kernel runs this process.

    Asked of IPython's ``get_ipython()``, which returns the running shell (``None`` outside
    one). That IPython is merely imported says nothing: flax imports treescope, which imports
    IPython wherever it is installed, so every command that imports flax before re-executing
    (the benchmarks) would be taken for a notebook."""
    if "ipykernel" in sys.modules:
        return True
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or ``None`` when there is nothing to do.

    Nothing to do: ``BAYESCOMP_ALLOCATOR=system``, the settings already in place (:data:`MARK`),
    not Linux with glibc, or a GPU JAX may use (module docstring).

    Raises:
        ValueError: ``BAYESCOMP_ALLOCATOR`` is neither ``tuned`` nor ``system``.
    """
    choice = environ.get(SWITCH, "tuned").strip().lower() or "tuned"
    if choice not in CHOICES:
        raise ValueError(f"{SWITCH}={environ[SWITCH]!r} is not one of {', '.join(CHOICES)}; "
                         f"unset it or set {SWITCH}=system to keep glibc's defaults")
    if (choice == "system" or environ.get(MARK) == "1" or not _is_glibc_linux()
            or _may_use_an_accelerator(environ)):
        return None
    # The user's own tunables last: glibc keeps the last value of a tunable named twice.
    own = environ.get("GLIBC_TUNABLES", "")
    tunables = ":".join([*TUNABLES, *([own] if own else [])])
    return {**environ, "GLIBC_TUNABLES": tunables, MARK: "1"}


def reexec_with_tuned_allocator() -> None:
    """Replace this process by the same command with :data:`TUNABLES` set (module docstring).

    Returns without doing anything where :func:`tuned_environment` has nothing to do or the
    command line cannot be rebuilt. A bad ``BAYESCOMP_ALLOCATOR`` ends the command with one line
    and exit status 2.
    """
    try:
        env = tuned_environment(os.environ)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if env is None or not _replayable():
        return
    argv = sys.orig_argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def description(environ: Mapping[str, str] | None = None) -> str:
    """What this process runs with, for ``metrics.json``: ``glibc tuned`` where the process's
    ``GLIBC_TUNABLES`` set every one of :data:`TUNABLES` to its value (the last setting of a
    name counts, as in glibc), else ``default``."""
    environ = os.environ if environ is None else environ
    if not _is_glibc_linux():
        return "default"
    settings = {}
    for entry in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = entry.partition("=")
        settings[name] = value
    wanted = dict(entry.partition("=")[::2] for entry in TUNABLES)
    return "glibc tuned" if all(settings.get(k) == v for k, v in wanted.items()) else "default"
