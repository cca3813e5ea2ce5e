"""``benchmarks/inference_speed.py --record``: what it writes beside a ``model.bcz`` is what
``cifar.md`` reads back, and a checkout with local changes records nothing."""

import argparse
import json

import pytest
from cli_helpers import load_benchmark  # tests/ is on sys.path (pytest rootdir)

from bayescomp import cifar_tables


@pytest.fixture(scope="module")
def inference_speed():
    return load_benchmark("inference_speed")


def test_the_record_is_what_the_table_reads(inference_speed, tmp_path):
    rows = [dict(batch=1000, multiple=1, full_ips=3017.4, pruned_ips=3698.2, speedup=1.2149,
                 speedup_range=(0.781, 2.1), max_rel_diff=0.0),
            dict(batch=1000, multiple=8, full_ips=3017.4, pruned_ips=2500.0, speedup=0.83,
                 speedup_range=(0.8, 0.9), max_rel_diff=0.0)]
    args = argparse.Namespace(repeats=7, calls=5)
    written = inference_speed.record(tmp_path / "model.bcz", rows, args, "0123456789ab",
                                     (2.5, 2.0, 1.5))
    assert written == tmp_path / cifar_tables.SPEED_RECORD
    record = json.loads(written.read_text())
    assert record["git_commit"] == "0123456789ab" and record["load_average_before"] == [
        2.5, 2.0, 1.5]
    assert record["rows"][0] == {"batch": 1000, "channel_multiple": 1,
                                 "full_images_per_second": 3017.4,
                                 "exported_images_per_second": 3698.2, "speedup": 1.2149,
                                 "speedup_min": 0.781, "speedup_max": 2.1, "max_rel_diff": 0.0}
    device = record["runtime"]["device_kind"]
    assert cifar_tables._speedup({"_path": str(tmp_path)}) == (
        f"1.21× (0.78–2.10) at batch 1000 ({device}, `0123456`)")  # the padded row left out


def test_a_dirty_checkout_records_nothing(inference_speed, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inference_speed.provenance, "git_commit", lambda: "abc-dirty")
    monkeypatch.setattr(inference_speed.provenance, "dirty_files", lambda: ["bayescomp/x.py"])
    (tmp_path / "model.bcz").write_bytes(b"")
    assert inference_speed.main([str(tmp_path / "model.bcz"), "--record"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --record needs a clean checkout (local changes: bayescomp/x.py); commit or "
        "stash them")
    assert not (tmp_path / cifar_tables.SPEED_RECORD).exists()
