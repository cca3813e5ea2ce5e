"""Sweeps through Hydra's launcher plugins (the ``launchers`` extra, part of ``dev``).

``conf/hydra/launcher/`` holds bayescomp's settings over the plugins' configs: ``parallel``
(joblib), ``submitit`` (submitit_local) and ``slurm`` (submitit_slurm). The plugins are
optional dependencies; without them these tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
from cli_helpers import REPO_ROOT  # tests/ is on sys.path (pytest rootdir)

joblib_plugin = pytest.importorskip(
    "hydra_plugins.hydra_joblib_launcher",
    reason="hydra-joblib-launcher not installed (pip install -e '.[launchers]')")
submitit_plugin = pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher",
    reason="hydra-submitit-launcher not installed (pip install -e '.[launchers]')")

# Exactly 2 optimisation steps on the synthetic data (512 images / batch 256), as in conftest.
SMOKE = ["+debug=smoke", "trainer.batch_size=256", "trainer.chunk_steps=2",
         "trainer.eval_batch_size=256"]


@pytest.mark.parametrize("name, target, settings", [
    ("parallel", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher", {"n_jobs": 2}),
    ("submitit", "hydra_submitit_launcher.submitit_launcher.LocalLauncher",
     {"timeout_min": 4320}),
    ("slurm", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
     {"timeout_min": 360, "cpus_per_task": 4, "max_num_timeout": 0}),
])
def test_launcher_configs_extend_the_plugins(name, target, settings):
    # Ours must extend the plugin's config (its every key, our values on top), not replace it:
    # the submitit launcher reads keys that a config of our own would have to repeat.
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={name}"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == f"hydra_plugins.{target}"
    for key, value in settings.items():
        assert launcher[key] == value, key
    if name != "parallel":
        assert "submitit_folder" in launcher and "gpus_per_node" in launcher


def test_a_two_seed_sweep_through_submitit_local_runs_both_jobs(tmp_path):
    # The README's command, on the smoke config: each job is its own submitit process.
    sweep_dir = tmp_path / "sweep"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    # Its own process group, which submitit's job processes (plain Popen children) join: when
    # the test ends in any way but SIGKILL (a timeout, a failure, Ctrl-C), the whole group is
    # killed, so no job process outlives it (they ignore SIGTERM, forwarding it to their task).
    sweep = subprocess.Popen(
        [sys.executable, "-m", "bayescomp.run", "--multirun", "hydra/launcher=submitit",
         "+experiment=lenet300_dense", *SMOKE, "seed=0,1", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = sweep.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    assert sweep.returncode == 0, stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in stdout + stderr

    job_dirs = {seed: sweep_dir / f"{seed}_synthetic_seed{seed}" for seed in (0, 1)}
    metrics = {seed: json.loads((d / "metrics.json").read_text())
               for seed, d in job_dirs.items()}
    for seed, m in metrics.items():
        # metrics.json is written once a run has finished; the last log line says so too.
        assert m["seed"] == seed and m["config"]["seed"] == seed
        assert m["experiment"] == "lenet300_dense" and m["dataset"] == "synthetic"
        assert m["epochs"] == m["planned_epochs"][-1] == 1
        assert m["test_error"] is not None and m["quantized_test_error"] is not None
        assert "metrics in" in (job_dirs[seed] / "run.log").read_text()
    # The seeds took effect: different initialisations give different trained networks.
    digests = {hashlib.sha256((d / "quantized_network.npz").read_bytes()).hexdigest()
               for d in job_dirs.values()}
    assert len(digests) == 2
    # Each job ran under submitit: its own folder with a result and logs.
    results = sorted(sweep_dir.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2, sorted(p.name for p in sweep_dir.rglob("*"))
