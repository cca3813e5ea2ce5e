"""Running ``python -m bayescomp.run`` as a user would, for the command-line tests; loading a
``benchmarks/`` script as a module."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_cli(run_dir: pathlib.Path, *overrides: str, timeout: float = 300):
    """Run ``python -m bayescomp.run OVERRIDES hydra.run.dir=RUN_DIR`` in a subprocess.

    The working directory is ``run_dir``'s parent (never the repository), on the CPU, with
    Hydra's full tracebacks off so that errors look as users see them.

    Returns:
        The ``subprocess.CompletedProcess`` (text ``stdout`` / ``stderr``).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "bayescomp.run", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=timeout)


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module (the folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
