"""``python -m bayescomp.compress`` and ``python -m bayescomp.evaluate`` on a real (tiny) run.

A two-step LeNet-300 Sparse VD run on the synthetic dataset is compressed to a file; the decoded
network's error must equal the quantized network's error exactly (same weights, bit for bit),
and the file size in metrics.json must be the size on disk.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from bayescomp import compress, evaluate, train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smoke_cfg):
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(smoke_cfg("lenet300_svd"), workdir)
    return workdir


def test_compress_writes_the_file_and_measures_it(run_dir):
    measured = compress.compress_run(run_dir)
    path = pathlib.Path(measured["compressed_file"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["compressed_bytes"] == path.stat().st_size == measured["compressed_bytes"]
    assert metrics["compressed_test_error"] == metrics["quantized_test_error"]
    weights = metrics["weights_total"]
    assert metrics["compression"]["max_compression_measured"] == pytest.approx(
        4 * weights / path.stat().st_size)
    info = metrics["compression_file"]
    assert info["gzip_bytes"] > 0 and info["zstd_bytes"] > 0
    assert info["entropy_bound_bytes"] <= info["file_bytes"]


def test_evaluate_cli_reports_the_same_error(run_dir, capsys):
    compress.compress_run(run_dir, evaluate=False)
    assert evaluate.main([str(run_dir / "model.bcz"), "data=synthetic"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{metrics['quantized_test_error']:.2f} %" in capsys.readouterr().out


def test_bad_paths_end_in_one_error_line(tmp_path):
    for args in (["-m", "bayescomp.compress", str(tmp_path / "missing")],
                 ["-m", "bayescomp.evaluate", str(tmp_path / "missing.bcz")]):
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                                cwd=REPO_ROOT)
        assert result.returncode == 2
        assert result.stderr.strip().startswith("error: ")
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_corrupt_file_is_refused_by_evaluate(run_dir, tmp_path, capsys):
    compress.compress_run(run_dir, evaluate=False)
    data = bytearray((run_dir / "model.bcz").read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.bcz"
    bad.write_bytes(bytes(data))
    assert evaluate.main([str(bad), "data=synthetic"]) == 2
    assert "error:" in capsys.readouterr().err
