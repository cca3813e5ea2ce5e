"""``benchmarks/train_speed.py``: the self-time accounting of ``--profile`` on a hand-made trace,
and the within-round step-time ratio."""

import gzip
import json

import pytest
from cli_helpers import load_benchmark  # tests/ is on sys.path (pytest rootdir)


@pytest.fixture(scope="module")
def train_speed():
    return load_benchmark("train_speed")


def test_self_time_subtracts_nested_events(train_speed, tmp_path):
    # Thread 1: a Python frame spans a `while` thunk (100 us) holding two fusions (30 + 20 us)
    # and one dot after it; thread 2 runs another piece of fusion.1. Times in microseconds.
    events = [
        {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 200, "name": "$train.py:10 step"},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 10, "dur": 100, "name": "while.3"},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 20, "dur": 30, "name": "fusion.1"},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 60, "dur": 20, "name": "fusion.2"},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 120, "dur": 40, "name": "dot.4"},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 20, "dur": 25, "name": "fusion.1"},
        {"ph": "i", "pid": 1, "tid": 1, "ts": 5, "name": "an instant event, not timed"},
    ]
    trace_dir = tmp_path / "trace" / "plugins"
    trace_dir.mkdir(parents=True)
    with gzip.open(trace_dir / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    steps = 5
    ops = train_speed.xla_op_times(tmp_path / "trace", steps)
    # Self times by hand: while.3 = 100 - 30 - 20 = 50; fusion.1 = 30 + 25; dot.4 = 40.
    expected_us = {"fusion.1": 55, "while.3": 50, "dot.4": 40, "fusion.2": 20}
    assert ops == pytest.approx({k: v / 1e3 / steps for k, v in expected_us.items()})
    assert list(ops) == ["fusion.1", "while.3", "dot.4", "fusion.2"]  # costliest first


def test_ratio_is_taken_within_rounds(train_speed):
    # Round 2 is a slow spell for both experiments (machine load): a ratio of medians would mix
    # rounds (median 30 / median 10 = 3.0), the within-round ratios are 2.5, 2.5 and 3.0.
    svd = [25.0, 50.0, 30.0]
    dense = [10.0, 20.0, 10.0]
    assert train_speed.ratio_within_rounds(svd, dense) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        train_speed.ratio_within_rounds(svd, dense[:2])


@pytest.mark.slow  # compiles three experiments' steps (~10 s idle); the benchmark's own check
def test_each_experiment_is_timed_at_its_own_batch_size(train_speed):
    # Soft weight-sharing retrains at batch 256 (its recipe), dense at 100: each is timed at its
    # own batch, and their steps are not compared (no vs-dense ratio across batch sizes).
    rows = {r["experiment"]: r for r in train_speed.time_experiments(
        ["lenet300_dense", "lenet300_sws"], steps=2, batch_size=None, repeats=1)}
    assert rows["lenet300_dense"]["batch_size"] == 100
    assert rows["lenet300_sws"]["batch_size"] == 256
    assert rows["lenet300_dense"]["vs_dense"] == pytest.approx(1.0)
    assert rows["lenet300_sws"]["vs_dense"] is None
    # An explicit --batch-size applies to every experiment, and then the ratio is taken.
    rows = {r["experiment"]: r for r in train_speed.time_experiments(
        ["lenet300_dense", "lenet300_sws"], steps=2, batch_size=64, repeats=1)}
    assert {r["batch_size"] for r in rows.values()} == {64}
    assert rows["lenet300_sws"]["vs_dense"] is not None
