"""``benchmarks/same_numbers.py``: the metrics comparison (no runs) and its command-line refusals."""

import importlib.util
import math
import pathlib
import sys

import pytest

from bayescomp import provenance

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "same_numbers.py"


@pytest.fixture(scope="module")
def same_numbers():
    spec = importlib.util.spec_from_file_location("same_numbers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _metrics(**changes):
    metrics = {
        "experiment": "lenet300_svd", "test_error": 2.5, "weights_kept": 1000,
        "compression": {"pruning": 12.0, "max_compression": 40.0},
        "kept_per_layer": [800, 150, 50],
        "prune_thresholds": {"fc1": None},
        "history": [{"epoch": 0, "loss": 1.5, "seconds": 3.0, "includes_compilation": 1.0,
                     "git_commit": "aaa"},
                    {"epoch": 1, "loss": 1.25, "seconds": 1.0, "git_commit": "aaa"}],
        "seconds_per_epoch": 2.0, "images_per_second": 30000.0, "peak_memory_mib": 600.0,
        "train_seconds": 4.0, "git_commit": "aaa", "git_dirty_files": [],
        "code_history": [{"epochs": [0, 1], "git_commit": "aaa"}],
        "jax_version": "0.10.2", "device_kind": "cpu",
        "data_source": "/usr/share/datasets/fashion-mnist",
        "pretrained_run": "/tmp/a/runs_base/lenet300_dense",
        "config": {"trainer": {"epochs": 2}, "data": {"dir": "/tmp/a/data"},
                   "method": {"pretrained_run": "/tmp/a/runs_base/lenet300_dense",
                              "schedule": "linear_decay"}},
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = metrics
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return metrics


def test_identical_metrics_are_the_same(same_numbers):
    report = same_numbers.compare_metrics(_metrics(), _metrics())
    assert report.same and report.max_rel == 0
    assert not (report.beyond or report.other or report.only_old or report.only_new)
    # test_error, weights_kept, 2 compression ratios, 3 kept_per_layer, 2 x (epoch, loss),
    # config.trainer.epochs: 12 numbers.
    assert report.compared == 12


def test_timing_provenance_and_paths_are_ignored(same_numbers):
    other = _metrics(
        seconds_per_epoch=9.0, images_per_second=1.0, peak_memory_mib=1.0, train_seconds=9.0,
        git_commit="bbb-dirty", git_dirty_files=["x.py"], code_history=[], jax_version="0.9",
        device_kind="NVIDIA H100", data_source="/elsewhere", pretrained_run="/tmp/b/dense",
        history__0__seconds=7.0, history__0__includes_compilation=0.0,
        history__1__git_commit="bbb", config__data__dir="/tmp/b/data",
        config__method__pretrained_run="/tmp/b/runs_new/lenet300_dense")
    report = same_numbers.compare_metrics(_metrics(), other)
    assert report.same, (report.beyond, report.other)
    assert "history[0].seconds" in report.ignored and "git_dirty_files" in report.ignored
    assert "config.data.dir" in report.ignored


def test_runtime_keys_are_all_ignored(same_numbers):
    assert set(provenance.runtime()) <= same_numbers.IGNORED_KEYS


def test_numbers_in_nested_lists_and_history_records(same_numbers):
    report = same_numbers.compare_metrics(
        _metrics(), _metrics(kept_per_layer=[800, 151, 50], history__1__loss=1.5))
    assert not report.same
    assert [(d.path, d.old, d.new) for d in report.beyond] == [
        ("kept_per_layer[1]", 150, 151), ("history[1].loss", 1.25, 1.5)]
    assert report.max_rel == pytest.approx(0.25 / 1.5)
    assert report.max_rel_path == "history[1].loss"


def test_nan_equals_nan_but_not_a_number(same_numbers):
    nan = math.nan
    both = same_numbers.compare_metrics(_metrics(test_error=nan), _metrics(test_error=nan))
    assert both.same and both.compared == 12
    one = same_numbers.compare_metrics(_metrics(test_error=nan), _metrics())
    assert [d.path for d in one.beyond] == ["test_error"] and one.max_rel == math.inf
    inf = same_numbers.compare_metrics(_metrics(test_error=math.inf),
                                       _metrics(test_error=math.inf))
    assert inf.same


def test_one_sided_keys_are_listed_but_not_a_failure(same_numbers):
    new = _metrics(history=_metrics()["history"] + [{"epoch": 2, "loss": 1.0}])
    new["compression"]["fast_prediction"] = 3.0
    old = _metrics()
    del old["weights_kept"]
    report = same_numbers.compare_metrics(old, new)
    assert report.only_old == []
    assert report.only_new == ["compression.fast_prediction", "history[2]", "weights_kept"]
    assert report.same
    assert sorted(same_numbers.compare_metrics(new, old).only_old) == sorted(report.only_new)


def test_rtol_boundary_is_inclusive(same_numbers):
    # 4 against 3: relative difference exactly 1/4 in binary floating point.
    old, new = _metrics(test_error=4.0), _metrics(test_error=3.0)
    assert same_numbers.compare_metrics(old, new, rtol=0.25).same
    beyond = same_numbers.compare_metrics(old, new, rtol=0.2499)
    assert [(d.path, d.rel) for d in beyond.beyond] == [("test_error", 0.25)]
    # The default 1e-6: a float32-rounding-sized change passes, a real one does not.
    assert same_numbers.compare_metrics(_metrics(), _metrics(test_error=2.5 * (1 + 5e-7))).same
    assert not same_numbers.compare_metrics(_metrics(), _metrics(test_error=2.5 * (1 + 2e-6))).same
    # Zero against a tiny number is a full relative difference, not a division by zero.
    zero = same_numbers.compare_metrics(_metrics(test_error=0.0), _metrics(test_error=1e-30))
    assert zero.beyond[0].rel == 1.0


def test_changed_strings_bools_and_types_are_other_differences(same_numbers):
    report = same_numbers.compare_metrics(
        _metrics(prune_thresholds={"fc1": None}),
        _metrics(experiment="lenet300_gnj", prune_thresholds={"fc1": -3.0},
                 config__method__schedule="cosine", weights_kept=True))
    assert not report.same and not report.beyond
    assert [d.path for d in report.other] == [
        "experiment", "weights_kept", "prune_thresholds.fc1", "config.method.schedule"]


def test_bad_input_exits_2_with_one_line(same_numbers, capsys, tmp_path):
    assert same_numbers.main(["--base", "no-such-commit-xyz", "--workdir",
                              str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: git cannot resolve 'no-such-commit-xyz'") and "\n" not in err
    assert same_numbers.main(["--base", "HEAD", "--experiments", "lenet300_nope",
                              "--workdir", str(tmp_path / "w2")]) == 2
    assert "unknown experiment 'lenet300_nope'" in capsys.readouterr().err
    assert not (tmp_path / "w2").exists()  # refused before anything was made
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("")
    assert same_numbers.main(["--base", "HEAD", "--workdir", str(occupied)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_run_order_puts_dense_runs_first(same_numbers):
    root = SCRIPT.parent.parent
    assert same_numbers.pretrained_experiment(root, "lenet5_sws") == "lenet5_dense"
    assert same_numbers.pretrained_experiment(root, "lenet300_svd") is None
    assert same_numbers.run_order(root, ["lenet300_svd", "lenet300_dc", "lenet5_sws",
                                         "lenet300_dense"]) == [
        "lenet300_svd", "lenet300_dense", "lenet300_dc", "lenet5_dense", "lenet5_sws"]
