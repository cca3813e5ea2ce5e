"""``python -m bayescomp.run`` when things go wrong around the run: Hydra's composition errors,
an output directory that cannot be one, a full disk during training, a refused rerun, a second
process in the same directory. Each ends in one line on stderr with exit status 2, and leaves
what was written before as it was (Hydra's ``.hydra/`` record included).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

from bayescomp import run, runs

from cli_helpers import REPO_ROOT, run_cli  # tests/ is on sys.path (pytest rootdir)

SMOKE = ["+debug=smoke", "trainer.batch_size=256", "trainer.chunk_steps=2",
         "trainer.eval_batch_size=256", "optimizer.schedule=constant"]


def _files(directory: pathlib.Path, exclude=("run.log",)) -> dict[str, str]:
    """{relative path: sha256} of the files under ``directory`` (``.hydra/`` included)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).parts[0] not in exclude}


def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Item 7: Hydra's composition errors and output directories, checked before Hydra runs


@pytest.mark.parametrize("argv, expected", [
    (["+experiment=nope"], "unknown experiment 'nope'; known experiments: lenet300_dc, "),
    (["+experiment=lenet300_dense", "model=nope"], "unknown model 'nope'; known models: "),
    (["+experiment=lenet300_dense", "method=nope"], "unknown method 'nope'; known methods: "),
    (["+experiment=lenet300_dense", "data=nope"], "unknown dataset 'nope'; known datasets: "),
    (["--multirun", "+experiment=lenet300_dense,nope"], "unknown experiment 'nope'"),
    # A typo: the nearest setting, never Hydra's "+trainer.epoch=3" (a key nothing reads).
    (["trainer.epoch=3"], "trainer.epoch is not a setting (did you mean trainer.epochs?)"),
    (["--multirun", "trainer.epoch=1,2"], "trainer.epoch is not a setting (did you mean "),
    (["+trainer.epoch=3"], "trainer.epoch is not a setting, and '+' would add it unread (did "
                           "you mean trainer.epochs?)"),
    (["seed=[1"], "cannot parse the override 'seed=[1' ("),
    (["seed=0,1"], "Ambiguous value for argument 'seed=0,1' "),
])
def test_composition_errors_are_one_line(argv, expected):
    problem = run.entry_check(argv)
    assert problem is not None and problem.startswith(expected), problem
    assert "\n" not in problem and "Available options" not in problem


@pytest.mark.parametrize("argv", [
    ["+experiment=lenet300_dense", "+debug=smoke"],
    ["--multirun", "+experiment=lenet300_dense,lenet5_dense", "seed=0,1"],
    ["+experiment=lenet300_svd", "+method.prune.per_layer.fc1=2.5"],  # '+' into an open map
    ["--help"], ["--cfg", "job"],
])
def test_commands_that_compose_go_ahead(argv, tmp_path):
    assert run.entry_check([*argv, f"hydra.run.dir={tmp_path}/run"]) is None


def test_output_directories_that_cannot_be_written(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert run.output_dir_problem(afile, "hydra.run.dir").startswith(
        f"hydra.run.dir={afile} is a file, not a directory")
    assert run.output_dir_problem(afile / "sub", "hydra.run.dir").startswith(
        f"hydra.run.dir={afile / 'sub'} lies under the file {afile}")
    assert run.output_dir_problem(tmp_path / "new" / "run", "hydra.run.dir") is None
    # Read-only (simulated: the tests may run as root, whom permissions do not stop).
    monkeypatch.setattr(run.os, "access", lambda path, mode: pathlib.Path(path) != tmp_path)
    problem = run.output_dir_problem(tmp_path / "run", "hydra.run.dir")
    assert problem.startswith(f"{tmp_path} is not writable"), problem


def test_an_unknown_experiment_is_one_line_and_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    before = _files(run_dir)
    line = _one_line_error(run_cli(run_dir, "+experiment=no_such_experiment"))
    assert line.startswith("error: unknown experiment 'no_such_experiment'; known experiments: ")
    assert _files(run_dir) == before


def test_a_run_directory_that_is_a_file_is_one_line_and_exit_2(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    line = _one_line_error(run_cli(afile, "+experiment=lenet300_dense", *SMOKE))
    assert f"hydra.run.dir={afile} is a file" in line
    assert afile.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# Item 3: a full disk during training, then the resume it names


#: Runs bayescomp.run with the checkpoint of epoch 1 failing for lack of space (as Orbax's
#: JSON writer would on a full disk), after the arrays of that step were written.
FULL_AT_EPOCH_1 = """
import errno, os, sys
import orbax.checkpoint as ocp
original = ocp.JsonCheckpointHandler._save_fn
async def full(self, x, directory):
    if isinstance(x, dict) and x.get("phase_epoch") == 1:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return await original(self, x, directory)
ocp.JsonCheckpointHandler._save_fn = full
from bayescomp import run
sys.argv = ["bayescomp.run", *sys.argv[1:]]
run.main()
"""


@pytest.fixture(scope="module")
def full_disk_then_resumed(tmp_path_factory):
    """A 2-epoch run whose disk fills at the checkpoint of epoch 1, then the resume it printed.

    Returns ``(run_dir, failed, files_after_failure, resumed)``.
    """
    run_dir = tmp_path_factory.mktemp("full") / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    env.pop("HYDRA_FULL_ERROR", None)
    failed = subprocess.run(
        [sys.executable, "-c", FULL_AT_EPOCH_1, "+experiment=lenet300_dense", *SMOKE,
         "trainer.epochs=2", f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=300)
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    command = failed.stderr.rsplit("last complete checkpoint): ", 1)[-1].strip()
    overrides = [o for o in shlex.split(command)[3:] if not o.startswith("hydra.run.dir=")]
    resumed = run_cli(run_dir, *overrides)
    return run_dir, failed, files, resumed


def test_a_full_disk_is_one_line_naming_the_directory_the_kept_checkpoint_and_the_resume(
        full_disk_then_resumed):
    run_dir, failed, files, _ = full_disk_then_resumed
    line = _one_line_error(failed)
    checkpoints = run_dir / "checkpoints" / "train"
    assert f"cannot write the checkpoint of epoch 1 in {checkpoints}: " in line, line
    assert os.strerror(errno.ENOSPC) in line
    assert "the checkpoint of epoch 0, the last complete one, is kept" in line
    assert "python -m bayescomp.run +experiment=lenet300_dense " in line
    assert f"hydra.run.dir={run_dir}" in line
    # No partial step, no stale lock; the run's record is that of the failed command.
    assert not [f for f in files if "orbax-checkpoint-tmp" in f or f == runs.LOCK_FILE], files
    assert "checkpoints/train/0" in files and "checkpoints/train/1" not in files
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "config.yaml"} <= set(files)


def test_the_command_a_full_disk_names_resumes_the_run(full_disk_then_resumed):
    run_dir, _, _, resumed = full_disk_then_resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming phase train" in resumed.stdout + resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert [h["phase_epoch"] for h in metrics["history"]] == [0, 1]


# ---------------------------------------------------------------------------------------------
# Items 7 and 9: a refused rerun keeps the record of the run; one process per run directory


def test_a_refused_rerun_keeps_the_hydra_record_and_every_file(full_disk_then_resumed,
                                                                tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(full_disk_then_resumed[0], run_dir)
    before = _files(run_dir)
    assert ".hydra/overrides.yaml" in before
    line = _one_line_error(run_cli(run_dir, "+experiment=lenet300_dense", *SMOKE,
                                   "trainer.epochs=2", "optimizer.lr=0.5"))
    assert "different training settings" in line and "optimizer.lr" in line
    assert _files(run_dir) == before  # .hydra/ included


def test_compress_is_refused_and_writes_nothing_while_a_run_holds_the_directory(
        full_disk_then_resumed, tmp_path):
    """`compress` writes model.bcz and metrics.json into the run directory, so it takes the
    run's lock too: while a training process holds it, compress stops with one line naming it."""
    run_dir = tmp_path / "run"
    shutil.copytree(full_disk_then_resumed[0], run_dir)
    before = _files(run_dir, exclude=("run.log", runs.LOCK_FILE))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    with runs.lock_run_directory(run_dir):
        result = subprocess.run([sys.executable, "-m", "bayescomp.compress", str(run_dir)],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
    line = _one_line_error(result)
    assert f"is in use by another bayescomp run (process {os.getpid()})" in line
    assert _files(run_dir, exclude=("run.log", runs.LOCK_FILE)) == before


def test_a_second_process_in_a_run_directory_is_refused_naming_the_first(
        full_disk_then_resumed, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(full_disk_then_resumed[0], run_dir)
    before = _files(run_dir, exclude=(runs.LOCK_FILE,))
    assert "run.log" in before
    with runs.lock_run_directory(run_dir):  # this process trains there, say
        line = _one_line_error(run_cli(run_dir, "+experiment=lenet300_dense", *SMOKE,
                                       "trainer.epochs=2"))
        assert f"{run_dir} is in use by another bayescomp run (process {os.getpid()})" in line
        assert "hydra.run.dir" in line
        # run.log included: it belongs to the live process, the refused one writes nothing there.
        assert _files(run_dir, exclude=(runs.LOCK_FILE,)) == before
