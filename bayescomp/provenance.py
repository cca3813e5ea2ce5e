"""Which code produced a run: the git commit, taken once per process, and per-epoch history.

A run's numbers are only reproducible if the code that made them is known. Two things make
that harder than ``git rev-parse HEAD`` at the end of a run:

* Python loads the package when the process starts; a commit checked out while a long run trains
  does not change the code that run executes. So the commit is read **once**, the first time
  :func:`git_commit` is called in a process (the runners call it before training), and cached.
* A run that resumes from its checkpoints may span several commits. Each epoch's history record
  carries the commit of the process that trained it, and :func:`code_history` summarises the
  record as ``[{"epochs": [first, last], "git_commit": ...}, ...]`` for ``metrics.json``.

``-dirty`` marks local changes to tracked files that can change what a run computes: the
package, its configs, the experiment scripts and ``pyproject.toml``. Generated results
(``results/``), documentation and tests do not: a run started right after ``publish.sh`` copied
a finished run into ``results/`` is not dirty. :func:`dirty_files` lists what was changed.

A copy of a checkout without its ``.git`` (a tree shipped to a remote GPU machine, say) has no
commit to read; whoever made the copy from a clean checkout may name it in the environment
variable :data:`COMMIT_ENV`, which is then reported as ``<sha>-copy`` so that the label shows it
was vouched for rather than read. :func:`runtime` records the software and device a run used.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
from typing import Any, Iterable, Mapping

#: Paths (relative to the repository root) whose local changes make a commit ``-dirty``.
CODE_PATHS = ("bayescomp", "conf", "experiments", "pyproject.toml")

#: Environment variable naming the commit of a copied tree that has no ``.git``.
COMMIT_ENV = "BAYESCOMP_GIT_COMMIT"

#: Recorded for epochs whose checkpoint predates per-epoch commits.
UNRECORDED = "unrecorded"

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True,
                          check=True).stdout


@functools.lru_cache(maxsize=1)
def _snapshot() -> tuple[str, tuple[str, ...]]:
    try:
        commit = _git("rev-parse", "HEAD").strip()
        status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. a wheel)
        vouched = os.environ.get(COMMIT_ENV, "").strip()
        return (vouched + "-copy" if vouched else "unknown"), ()
    # Porcelain lines are "XY path" (or "XY old -> new" for renames).
    files = tuple(line[3:].split(" -> ")[-1] for line in status.splitlines() if line.strip())
    return commit, files


def git_commit() -> str:
    """The commit of the bayescomp checkout this process runs, ``<sha>[-dirty]``.

    Read on the first call in the process and cached (see the module docstring). Outside a git
    checkout: ``"<sha>-copy"`` when :data:`COMMIT_ENV` names one, else ``"unknown"``.
    """
    commit, files = _snapshot()
    return commit + ("-dirty" if files else "")


def dirty_files() -> list[str]:
    """Tracked files under :data:`CODE_PATHS` with local changes, as of the first call."""
    return list(_snapshot()[1])


def code_history(history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Runs of consecutive epochs trained by the same commit.

    Args:
        history: Per-epoch records with an ``"epoch"`` number and, when recorded, a
            ``"git_commit"``.

    Returns:
        ``[{"epochs": [first, last], "git_commit": commit}, ...]`` in epoch order; epochs
        without a recorded commit appear as :data:`UNRECORDED`.

    Example:
        >>> code_history([{"epoch": 0}, {"epoch": 1, "git_commit": "a"},
        ...               {"epoch": 2, "git_commit": "a"}, {"epoch": 3, "git_commit": "b"}])
        [{'epochs': [0, 0], 'git_commit': 'unrecorded'}, {'epochs': [1, 2], 'git_commit': 'a'}, \
{'epochs': [3, 3], 'git_commit': 'b'}]
    """
    segments: list[dict[str, Any]] = []
    for record in history:
        epoch = int(record["epoch"])
        commit = str(record.get("git_commit", UNRECORDED))
        if segments and segments[-1]["git_commit"] == commit:
            segments[-1]["epochs"][1] = epoch
        else:
            segments.append({"epochs": [epoch, epoch], "git_commit": commit})
    return segments


def runtime() -> dict[str, Any]:
    """The software and device a run used, for ``metrics.json``.

    Results from a lent GPU machine sit beside CPU results in ``results/``; its JAX version and
    device are recorded so that a difference between them can be traced.

    Returns:
        ``{"jax_backend", "jax_version", "jaxlib_version", "flax_version", "device_kind",
        "device_count", "cpu_conv_kernel", "cpu_batch_norm", "allocator"}``;
        ``cpu_conv_kernel`` is ``"onednn"`` or ``"xla"`` on CPU
        (:func:`bayescomp.nn.onednn_conv.cpu_conv_kernel`: the two differ in float32 rounding),
        ``None`` elsewhere; ``cpu_batch_norm`` the same for batch-statistics BatchNorm (and its
        ReLU) in training (:mod:`bayescomp.nn.onednn_batch_norm`; ``"onednn"`` since it was
        added, absent before); ``allocator`` is
        :func:`bayescomp.allocator.description` (speed only: it changes no number).
    """
    import flax  # Imported here: provenance itself needs no JAX (tests use it without).
    import jax
    import jaxlib

    from bayescomp import allocator
    from bayescomp.nn import norm, onednn_conv

    devices = jax.devices()
    return {
        "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "flax_version": flax.__version__,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu_conv_kernel": (onednn_conv.cpu_conv_kernel() if jax.default_backend() == "cpu"
                            else None),
        "cpu_batch_norm": (("onednn" if norm.ONEDNN and onednn_conv.cpu_conv_kernel() == "onednn"
                            else "xla") if jax.default_backend() == "cpu" else None),
        "allocator": allocator.description(),
    }
