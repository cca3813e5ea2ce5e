"""``python -m bayescomp.tables``: our rows from metrics files, the published rows from the YAML."""

from __future__ import annotations

import json

import yaml

from bayescomp import tables


def _run(tmp_path, seed, architecture, bits, quantized_error, kept):
    run_dir = tmp_path / "fashion_mnist" / "lenet300_gnj" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    metrics = {
        "experiment": "lenet300_gnj", "model": "lenet300", "method": "bc_gnj",
        "dataset": "fashion_mnist", "seed": seed, "epochs": 200, "test_error": 9.9,
        "pruned_test_error": 10.3, "quantized_test_error": quantized_error,
        "percent_kept": kept, "architecture": architecture, "bits_per_layer": bits,
        "exponent_bits": 3, "compression": {"pruning": 4.0, "fast_prediction": 14.0,
                                            "max_compression": 25.0},
        "seconds_per_epoch": 2.0, "git_commit": "abc",
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_seeds_aggregate_and_published_rows_come_from_the_yaml(tmp_path):
    _run(tmp_path, 0, [447, 130, 19], [6, 3, 9], 10.4, 22.0)
    _run(tmp_path, 1, [450, 128, 19], [6, 3, 9], 10.6, 24.0)
    out = tmp_path / "lenet.md"
    assert tables.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    # Different architectures are listed per seed, equal bits once; errors as mean ± sample std.
    assert "447-130-19 / 450-128-19" in text
    assert "| 6-3-9 |" in text
    assert "10.50 ± 0.14" in text  # mean 10.5, std(ddof=1) of {10.4, 10.6} = 0.1414
    assert "23.00 ± 1.41" in text
    published = yaml.safe_load(tables.PUBLISHED.read_text())
    gnj = published["models"]["lenet_300_100"]["methods"]["BC-GNJ"]
    assert "-".join(map(str, gnj["pruned_architecture"])) in text


def test_no_runs_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert tables.main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.md")]) == 2
    assert "no LeNet metrics.json" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()
