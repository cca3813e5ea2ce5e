"""``python -m bayescomp.compress`` and ``python -m bayescomp.evaluate`` on a real (tiny) run.

A two-step LeNet-300 Sparse VD run on the synthetic dataset is compressed to a file; the decoded
network's error must equal the quantized network's error exactly (same weights, bit for bit),
and the file size in metrics.json must be the size on disk.
"""

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest

from bayescomp import compress, evaluate
from bayescomp.procedures import variational
from bayescomp.compression import codec
from bayescomp.errors import BayescompError, ConfigError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smoke_cfg):
    workdir = tmp_path_factory.mktemp("run")
    variational.run(smoke_cfg("lenet300_svd"), workdir)
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


def test_evaluate_uses_the_recorded_dataset_and_refuses_another(run_dir, capsys):
    compress.compress_run(run_dir, evaluate=False)
    path = str(run_dir / "model.bcz")
    _, decoded = codec.load(path)
    assert (decoded.dataset, decoded.preprocess) == ("synthetic", "reference")
    assert evaluate.main([path]) == 0  # no data=...: the file says synthetic
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "on synthetic" in (out := capsys.readouterr().out)
    assert f"{metrics['quantized_test_error']:.2f} %" in out
    # Refused before any dataset is looked for (mnist is not on this machine).
    for option, text in (("data=mnist", "data=synthetic, not mnist"),
                         ("data.preprocess=none", "data.preprocess=reference, not none")):
        assert evaluate.main([path, option]) == 2
        assert text in capsys.readouterr().err


def test_no_eval_drops_the_error_of_an_older_file(run_dir):
    compress.compress_run(run_dir)
    assert "compressed_test_error" in json.loads((run_dir / "metrics.json").read_text())
    compress.compress_run(run_dir, evaluate=False)
    assert "compressed_test_error" not in json.loads((run_dir / "metrics.json").read_text())


def test_a_failure_after_writing_keeps_the_previous_file_and_metrics(run_dir, monkeypatch):
    compress.compress_run(run_dir)
    before = {name: (run_dir / name).read_bytes() for name in ("model.bcz", "metrics.json")}

    def failing_evaluation(*args, **kwargs):
        raise BayescompError("the test set could not be read")

    monkeypatch.setattr(compress, "test_error", failing_evaluation)
    # The new file must differ from the old one, or keeping it could not be told apart.
    original_quantize = compress.quantize.quantize

    def shifted_biases(*args, **kwargs):
        network = original_quantize(*args, **kwargs)
        network.biases[0] = network.biases[0] + 1.0
        return network

    monkeypatch.setattr(compress.quantize, "quantize", shifted_biases)
    with pytest.raises(BayescompError, match="could not be read"):
        compress.compress_run(run_dir)
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in run_dir.iterdir() if "model.bcz" in p.name) == ["model.bcz"]


@pytest.fixture
def run_copy(run_dir, tmp_path):
    compress.compress_run(run_dir, evaluate=False)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_an_unreadable_metrics_file_is_refused_before_the_old_file_is_replaced(run_copy):
    (run_copy / "metrics.json").write_text('{"truncated": ')
    (run_copy / "model.bcz").write_bytes(b"the previous file")
    with pytest.raises(ConfigError, match="metrics.json cannot be read as JSON"):
        compress.compress_run(run_copy, evaluate=False)
    assert (run_copy / "model.bcz").read_bytes() == b"the previous file"
    assert (run_copy / "metrics.json").read_text() == '{"truncated": '


def test_bad_output_paths_end_in_one_error_line(run_copy, capsys):
    blocker = run_copy / "a_file"
    blocker.write_text("not a directory")
    for out in (run_copy, blocker / "model.bcz"):
        assert compress.main([str(run_copy), "--out", str(out), "--no-eval"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert str(out) in err


def test_written_files_get_the_mode_of_a_normally_created_file(run_copy):
    # tempfile.mkstemp creates 0600 files; shared results must stay readable by others.
    umask = os.umask(0o022)
    try:
        compress.compress_run(run_copy, evaluate=False)
    finally:
        os.umask(umask)
    for name in ("model.bcz", "metrics.json"):
        assert stat.S_IMODE((run_copy / name).stat().st_mode) == 0o644, name


def test_the_gap_to_the_entropy_bound_is_exactly_the_coded_streams_excess(run_copy):
    # Byte accounting of the file, independent of how the bound is summed: every byte outside
    # the coded value and position streams is counted in the bound at its size, so
    # file - bound = Σ over coded streams of (payload bytes - Σ -log2 p̂ / 8).
    info = compress.compress_run(run_copy, evaluate=False)["compression_file"]
    excess = sum(layer["value_bytes"] - layer["value_entropy_bytes"]
                 + layer["position_bytes"] - layer["position_model_bytes"]
                 - layer["position_entropy_bytes"] for layer in info["layers"])
    assert info["file_bytes"] - info["entropy_bound_bytes"] == pytest.approx(excess, abs=1e-6)
    assert any(layer["positions"] != "full" for layer in info["layers"])  # positions are tested


def test_summary_marks_fixed_width_layers_instead_of_an_overhead(capsys):
    from bayescomp import compress

    def layer(name, coding, value_bytes, entropy_bytes):
        return {"name": name, "positions": "full", "num_values": 1000, "values_coding": coding,
                "value_bytes": value_bytes, "value_entropy_bytes": entropy_bytes,
                "value_overhead_percent": 100.0 * (value_bytes / entropy_bytes - 1),
                "value_model_bytes": 0, "position_bytes": 0}

    compress._print_summary({
        "max_compression_measured": 2.0,
        "compression_file": {"file_bytes": 10, "header_bytes": 1, "entropy_bound_bytes": 9,
                             "gzip_bytes": 11, "zstd_bytes": 12, "float32_bytes": 20,
                             "layers": [layer("fc1", "fixed", 3000, 2000),
                                        layer("fc2", "ans", 1005, 1000)]}})
    lines = capsys.readouterr().out.splitlines()
    fc1, fc2 = (next(l for l in lines if l.startswith(n)) for n in ("fc1", "fc2"))
    assert "fixed" in fc1 and "50.00%" not in fc1
    assert "0.50%" in fc2


def test_the_staging_file_has_its_own_name_and_is_removed(run_copy):
    # The file is staged beside its destination under a fresh name: a file that merely looks
    # like a staging file (another compress writing to the same place, or a leftover) is
    # neither overwritten nor removed, and nothing of this compress is left behind.
    others = {run_copy / ".model.bcz.staging": b"someone else's",
              run_copy / ".model.bcz.abc123.staging": b"another compress"}
    for path, content in others.items():
        path.write_bytes(content)
    before = {p.name for p in run_copy.iterdir()}
    compress.compress_run(run_copy, evaluate=False)
    assert {p.name for p in run_copy.iterdir()} == before
    for path, content in others.items():
        assert path.read_bytes() == content


def test_compress_prints_what_was_gained(run_copy, capsys):
    assert compress.main([str(run_copy)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert f"pruned architecture  {metrics['architecture_string']}" in out
    assert f"weights kept         {metrics['weights_kept']:,} of {metrics['weights_total']:,}" in out
    assert f"{metrics['compressed_test_error']:.2f} % decoded file" in out
    assert (f"measured file {metrics['compression']['max_compression_measured']:.1f}x"
            in out)


def test_staging_files_a_killed_compress_left_in_the_run_directory_are_removed(run_copy):
    # compress holds the run directory's lock, so a staging file of its destination there
    # (mkstemp's name: eight random characters) was left by a compress that was killed.
    leftover = run_copy / ".model.bcz.k1ll3d_x.staging"
    leftover.write_bytes(b"half a file")
    before = {p.name for p in run_copy.iterdir()} - {leftover.name}
    compress.compress_run(run_copy, evaluate=False)
    assert not leftover.exists()
    assert {p.name for p in run_copy.iterdir()} - before <= {"model.bcz"}
