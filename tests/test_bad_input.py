"""Mistakes on the command line end with one clear message and touch nothing already written.

Runs ``python -m bayescomp.run`` in a subprocess, as a user would, with ``hydra.run.dir`` in
``tmp_path``. User errors (``BayescompError``) exit with status 2 and print one line
``error: ...`` on stderr without a traceback; so do Hydra's composition errors (an unknown
config group option lists the available ones), caught by ``bayescomp.run.entry_check``.
"""

import hashlib
import json
import pathlib
import shutil

import pytest

from bayescomp import data, priors

from cli_helpers import REPO_ROOT, run_cli  # tests/ is on sys.path (pytest rootdir)
EXPERIMENTS = sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml"))
# Exactly 2 steps on the synthetic data (512 images / batch 256), no progress bar.
SMOKE = ["+debug=smoke", "trainer.batch_size=256", "trainer.chunk_steps=2",
         "trainer.eval_batch_size=256"]


def _snapshot(directory: pathlib.Path, exclude=(".hydra", "run.log")) -> dict[str, str]:
    """{relative path: sha256} of the files under ``directory``, except Hydra's own records
    (``.hydra/`` and ``run.log`` are rewritten by Hydra on every launch)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if p.is_file() and rel.parts[0] not in exclude:
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _existing_run_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A run directory that already holds a metrics.json, which a failing run must not touch."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"sentinel": True}) + "\n")
    return run_dir


def _assert_one_line_error(result, starts_with: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(starts_with), lines[0]
    return lines[0]


def test_unknown_experiment_lists_the_available_ones(tmp_path):
    run_dir = _existing_run_dir(tmp_path)
    before = _snapshot(run_dir)
    result = run_cli(run_dir, "+experiment=no_such_experiment")
    line = _assert_one_line_error(
        result, "error: unknown experiment 'no_such_experiment'; known experiments: ")
    assert line.endswith(", ".join(EXPERIMENTS)), line
    assert _snapshot(run_dir) == before


def test_unknown_model_lists_the_available_ones(tmp_path):
    result = run_cli(tmp_path / "run", "+experiment=lenet300_dense", "model=no_such_model")
    line = _assert_one_line_error(result, "error: unknown model 'no_such_model'; known models: ")
    assert "lenet300" in line and "lenet5" in line


def test_unknown_dataset(tmp_path):
    run_dir = _existing_run_dir(tmp_path)
    before = _snapshot(run_dir)
    result = run_cli(run_dir, "+experiment=lenet300_dense", *SMOKE, "data.name=foo")
    line = _assert_one_line_error(result, "error: unknown dataset 'foo'; known datasets: ")
    assert line.endswith(", ".join(data.names())), line
    assert _snapshot(run_dir) == before


def test_unknown_prior(tmp_path):
    run_dir = _existing_run_dir(tmp_path)
    before = _snapshot(run_dir)
    result = run_cli(run_dir, "+experiment=lenet300_svd", *SMOKE, "method.prior.name=foo")
    line = _assert_one_line_error(result, "error: unknown prior 'foo'; known priors: ")
    assert line.endswith(", ".join(priors.names())), line
    assert _snapshot(run_dir) == before


def test_missing_data_dir_names_the_path(tmp_path):
    run_dir = _existing_run_dir(tmp_path)
    before = _snapshot(run_dir)
    missing = tmp_path / "nonexistent"
    result = run_cli(run_dir, "+experiment=lenet300_dense", "data=fashion_mnist",
                     f"data.dir={missing}")
    line = _assert_one_line_error(result, "error: ")
    assert str(missing) in line
    assert _snapshot(run_dir) == before


# Slow set (two CLI runs, over a minute on 2 cores): the default run checks the same refusal
# and message in tests/test_robustness_cli.py
# (test_a_refused_rerun_keeps_the_hydra_record_and_every_file).
@pytest.mark.slow
def test_checkpoint_of_another_configuration(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(run_dir, "+experiment=lenet300_dense", *SMOKE)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "lenet300" and metrics["epochs"] == 1
    before = _snapshot(run_dir)
    assert any(name.startswith("checkpoints/") for name in before)

    result = run_cli(run_dir, "+experiment=lenet300_dense", *SMOKE, "optimizer.lr=0.5")
    line = _assert_one_line_error(result, "error: ")
    # Named by the settings stored with the checkpoint.
    assert "different training settings" in line and "optimizer.lr: " in line and "-> 0.5" in line
    assert "hydra.run.dir" in line  # says what to do
    assert _snapshot(run_dir) == before

    # Another model: another run, refused before any array shape is compared.
    result = run_cli(run_dir, "+experiment=lenet300_dense", *SMOKE, "model=lenet5")
    line = _assert_one_line_error(result, "error: ")
    assert "holds another run" in line and "model.name: 'lenet300' -> 'lenet5'" in line, line
    assert _snapshot(run_dir) == before

    # Another method in the same directory: a retraining procedure keeps its checkpoints in
    # another folder, so only the directory's record of its run can refuse it.
    result = run_cli(run_dir, "+experiment=lenet300_dc", *SMOKE, f"method.pretrained_run={run_dir}")
    line = _assert_one_line_error(result, "error: ")
    assert "holds another run" in line and "method.name: 'dense' -> 'dc'" in line, line
    assert "hydra.run.dir" in line
    assert _snapshot(run_dir) == before

    # A checkpoint damaged on disk: one error naming the step and what to do.
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    step = max(int(p.name) for p in (damaged / "checkpoints" / "train").iterdir()
               if p.name.isdigit())
    (damaged / "checkpoints" / "train" / str(step) / "meta" / "metadata").write_text("{not json")
    before_damaged = _snapshot(damaged)
    result = run_cli(damaged, "+experiment=lenet300_dense", *SMOKE)
    line = _assert_one_line_error(result, "error: the checkpoint ")
    assert f"checkpoints/train/{step} cannot be read" in line and "delete that step" in line, line
    assert _snapshot(damaged) == before_damaged


def test_non_positive_trainer_settings(tmp_path):
    run_dir = _existing_run_dir(tmp_path)
    before = _snapshot(run_dir)
    result = run_cli(run_dir, "+experiment=lenet300_dense", *SMOKE, "trainer.epochs=0")
    _assert_one_line_error(result, "error: trainer.epochs=0 must be a positive integer")
    assert _snapshot(run_dir) == before


def test_a_failed_reevaluation_leaves_the_plots_of_the_metrics_it_keeps(tmp_path,
                                                                        finished_smoke_run):
    # Rerunning a finished run at thresholds that remove every weight is refused (an emptied
    # layer, bayescomp.threshold_selection.ruin); the log α histograms must still describe the
    # metrics left behind. The finished run is the shared two-step run of these SMOKE settings
    # (trained in process; test_diagnose.py reads it too), copied.
    run_dir = tmp_path / "run"
    shutil.copytree(finished_smoke_run("lenet300_gnj")[0], run_dir)
    before = _snapshot(run_dir)
    assert any(name.startswith("plots/log_alpha_") for name in before)
    result = run_cli(run_dir, "+experiment=lenet300_gnj", *SMOKE,
                     "method.prune.per_layer={fc1:-1000,fc2:-1000,fc3:-1000}")
    line = _assert_one_line_error(result, "error: ")
    assert "fc1 keeps 0 of 784 input units (log α < -1000)" in line, line
    assert "raise method.prune.per_layer.fc1 or" in line, line
    assert _snapshot(run_dir) == before


def test_a_failing_job_of_a_sweep_does_not_stop_the_others(tmp_path):
    # In --multirun a user error is raised, not exited on: Hydra runs the remaining jobs, then
    # reports the failure with a non-zero exit status.
    sweep_dir = tmp_path / "sweep"
    result = run_cli(tmp_path / "unused", "--multirun", "+experiment=lenet300_dense", *SMOKE,
                     "trainer.epochs=0,1", f"hydra.sweep.dir={sweep_dir}",
                     "hydra.sweep.subdir=job${hydra.job.num}")
    assert result.returncode != 0
    assert "trainer.epochs=0 must be a positive integer" in result.stderr
    assert not (sweep_dir / "job0" / "metrics.json").exists()
    assert json.loads((sweep_dir / "job1" / "metrics.json").read_text())["epochs"] == 1
