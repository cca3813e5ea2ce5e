"""What a run prints: its directory first, no backend noise, each error once, and a Ctrl-C that
says how to resume (and the resume works)."""

import os
import signal
import subprocess
import sys
import time

from cli_helpers import REPO_ROOT, run_cli  # tests/ is on sys.path (pytest rootdir)

SMOKE = ["+debug=smoke", "trainer.batch_size=256", "trainer.chunk_steps=2",
         "trainer.eval_batch_size=256"]


def test_a_run_prints_its_directory_first_and_no_backend_noise(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(run_dir, "+experiment=lenet300_dense", *SMOKE)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "bayescomp" in line]
    assert f"run directory: {run_dir}" in lines[0], lines[:3]
    assert "tpu" not in output.lower()
    # run.log gets the line too, once (held back until the directory's lock was taken).
    log_lines = (run_dir / "run.log").read_text().splitlines()
    assert sum(f"run directory: {run_dir}" in line for line in log_lines) == 1, log_lines[:3]
    assert f"run directory: {run_dir}" in log_lines[0], log_lines[:3]


def test_a_user_error_is_printed_once(tmp_path):
    result = run_cli(tmp_path / "run", "+experiment=lenet300_dense", *SMOKE, "trainer.epochs=0")
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert output.count("trainer.epochs=0 must be a positive integer") == 1, output
    # ... and run.log keeps it.
    assert "trainer.epochs=0 must be a positive integer" in (
        tmp_path / "run" / "run.log").read_text()


def test_ctrl_c_says_how_to_resume_and_that_command_resumes(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    overrides = ["+experiment=lenet300_dense", *SMOKE, "trainer.epochs=2000"]
    process = subprocess.Popen(
        [sys.executable, "-m", "bayescomp.run", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = run_dir / "checkpoints" / "train"
    deadline = time.monotonic() + 240
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (stdout[-1000:], stderr[-2000:])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: {run_dir} "), stderr
    command = lines[0].split("resume with: ", 1)[1]
    assert command.startswith("python -m bayescomp.run ") and "trainer.epochs=2000" in command
    assert f"hydra.run.dir={run_dir}" in command
    # Its overrides resume the run (here shortened to 1 epoch, already trained, so the test is
    # short): nothing is refused, the finished epochs are not trained again.
    resumed = run_cli(run_dir, *overrides[:-1], "trainer.epochs=1", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_help_lists_every_experiment_and_the_other_commands():
    result = subprocess.run([sys.executable, "-m", "bayescomp.run", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    listed = {line.split()[0] for line in result.stdout.splitlines()
              if line.startswith("  ") and line.split() and "_" in line.split()[0]
              and not line.split()[0].startswith(("data", "python", "+", "hydra", "method",
                                                   "model", "seed", "trainer", "optimizer"))}
    experiments = {p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")}
    assert listed == experiments
    for command in ("compress", "evaluate", "tables", "diagnose", "tradeoff", "frontier",
                    "ranking_control"):
        assert f"python -m bayescomp.{command}" in result.stdout


def test_evaluate_help_is_help_not_a_file_name():
    result = subprocess.run([sys.executable, "-m", "bayescomp.evaluate", "--help"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "python -m bayescomp.evaluate PATH" in result.stdout
