"""``python -m bayescomp.tradeoff``: error against compression over pruning thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bayescomp import objectives, runs, tradeoff
from bayescomp.errors import ConfigError


@pytest.fixture(scope="module")
def svd_run(finished_smoke_run):
    """A finished 2-step LeNet-300-100 Sparse VD smoke run (threshold 3 on every layer)."""
    return finished_smoke_run("lenet300_svd")


def test_the_runs_own_threshold_reproduces_its_metrics_and_the_curve_is_monotone(svd_run):
    run_dir, metrics = svd_run
    assert set(metrics["prune_thresholds"].values()) == {3.0}  # the svd default, every layer
    cfg, model, _ = runs.load_trained_model(run_dir)
    dataset = runs.load_run_dataset(cfg)
    log_alphas = [np.asarray(layer.log_alpha())
                  for _, layer in objectives.variational_layers(model)]
    thresholds = [-6.0, 0.0, 3.0, 6.0]
    rows = tradeoff.sweep(cfg, model, dataset, tradeoff.operating_points(thresholds))

    # Threshold 3 is the run's own operating point: the sweep must score it as the run did.
    own = rows[2]
    for key in ("quantized_test_error", "pruned_test_error", "kept_per_layer", "bits_per_layer",
                "architecture_string"):
        assert own[key] == pytest.approx(metrics[key], abs=1e-9), key
    assert own["compression"] == pytest.approx(metrics["compression"], rel=1e-9)
    # Threshold −6 removes every weight of fc1 and fc2 after two steps (fc3 keeps some): the
    # point is recorded as emptying them, not scored as a network.
    assert rows[0]["empties"] == ["fc1", "fc2"] and "kept_per_layer" not in rows[0]
    assert all(int((log_alpha < -6.0).sum()) == 0 for log_alpha in log_alphas[:2])
    # A higher threshold removes fewer weights, in every layer. Each layer keeps at most the
    # weights whose own log α is below the threshold (propagation across layers can only remove
    # more), counted here directly from the posterior.
    kept = np.array([row["kept_per_layer"] for row in rows[1:]])
    assert np.all(np.diff(kept, axis=0) >= 0)
    assert kept[0].sum() < kept[-1].sum()  # the sweep spans a real range on this model
    for row, threshold in zip(rows, thresholds):
        assert row["prune_thresholds"] == {name: threshold for name in ("fc1", "fc2", "fc3")}
        for layer_kept, log_alpha in zip(row.get("kept_per_layer", ()), log_alphas):
            assert layer_kept <= int((log_alpha < threshold).sum())
    # Each point's counting: for LeNet-300-100, one position per weight, so the nonzero
    # multiply-adds are the kept weights (the dense count its 266,200), and the structural count
    # (kept input rows x kept output columns) is at least that.
    for row in rows[1:]:
        counted = row["counting"]
        assert counted["dense"]["macs"] == 784 * 300 + 300 * 100 + 100 * 10
        assert counted["nonzero_macs"] == sum(row["kept_per_layer"])
        assert counted["pruned"]["macs"] >= counted["nonzero_macs"]
    # The sweep leaves the model's own thresholds in place.
    assert {name: layer.prune_threshold
            for name, layer in objectives.variational_layers(model)} == \
        metrics["prune_thresholds"]


def test_cli_writes_json_markdown_and_plot_and_leaves_the_run_alone(svd_run, tmp_path, capsys):
    run_dir, metrics = svd_run
    before = (run_dir / "metrics.json").read_bytes()
    out = tmp_path / "curve"
    assert tradeoff.main([str(run_dir), "--thresholds", "3", "--tolerances", "0.5",
                          "--out", str(out)]) == 0
    assert (run_dir / "metrics.json").read_bytes() == before
    record = json.loads((out / "tradeoff.json").read_text())
    assert record["run_git_commit"] == metrics["git_commit"]
    assert [("threshold" in p, "tolerance" in p) for p in record["points"]] == \
        [(True, False), (False, True)]
    assert record["points"][0]["quantized_test_error"] == pytest.approx(
        metrics["quantized_test_error"], abs=1e-9)
    assert (out / "tradeoff.png").stat().st_size > 0
    table = (out / "tradeoff.md").read_text()
    assert "| threshold 3 |" in table and "| tolerance 0.5 |" in table
    assert "Fast Prediction" in capsys.readouterr().out
    # --replot redraws the figure from the recorded points alone.
    (out / "tradeoff.png").unlink()
    assert tradeoff.main(["--replot", str(out / "tradeoff.json")]) == 0
    assert (out / "tradeoff.png").stat().st_size > 0


def test_bad_input_ends_in_one_clear_error(pretrained_dense_run, svd_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match="nothing to sweep"):
        tradeoff.operating_points()
    with pytest.raises(ConfigError, match="non-negative"):
        tradeoff.operating_points(tolerances=[-1.0])
    assert tradeoff.main([str(tmp_path / "missing"), "--thresholds", "3"]) == 2
    assert "not a bayescomp run directory" in capsys.readouterr().err
    assert tradeoff.main([str(pretrained_dense_run("lenet300")), "--thresholds", "3"]) == 2
    assert "needs a variational run" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "curve"):
        assert tradeoff.main([str(svd_run[0]), "--thresholds", "3", "--out", str(out)]) == 2
        assert f"--out {out}: cannot create the directory" in capsys.readouterr().err
    assert tradeoff.main(["--thresholds", "3"]) == 2
    assert "give the RUN_DIR" in capsys.readouterr().err
    assert tradeoff.main([str(svd_run[0]), "--replot", "x.json"]) == 2
    assert "not both" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert tradeoff.main(["--replot", str(tmp_path / "bad.json")]) == 2
    assert "not a tradeoff.json" in capsys.readouterr().err


def test_a_point_that_empties_a_layer_is_recorded_and_the_sweep_goes_on(svd_run, tmp_path):
    cfg, model, _ = runs.load_trained_model(svd_run[0])
    dataset = runs.load_run_dataset(cfg)
    # Every fc3 weight noisy (log α = log σ² − log θ² ≥ 8 after the clip): threshold 3 empties
    # fc3 while fc1 and fc2 (log α ≈ −10 after two steps) keep everything.
    fc3 = model.fc3.posterior
    fc3.log_sigma2[...] = fc3.log_sigma2[...] * 0 + 20.0
    rows = tradeoff.sweep(cfg, model, dataset, tradeoff.operating_points([3.0, 20.0], [0.5]))
    assert rows[0]["empties"] == ["fc3"] and "compression" not in rows[0]
    assert rows[0]["prune_thresholds"] == {"fc1": 3.0, "fc2": 3.0, "fc3": 3.0}
    assert min(rows[1]["kept_per_layer"]) > 0 and "empties" not in rows[1]
    assert rows[1]["pruning_check"]["emptied"] == []
    assert min(rows[2]["kept_per_layer"]) > 0  # selection never empties a layer
    table = tradeoff.format_table(rows)
    assert "| threshold 3 | 3.00 / 3.00 / 3.00 | empties fc3 |" in table
    assert len({line.count("|") for line in table.splitlines()}) == 1  # one column count
    assert tradeoff.plot(rows[:1], "nothing", tmp_path / "none.png") is False
    assert tradeoff.plot(rows, "title", tmp_path / "some.png")


def test_out_and_its_parents_are_created(svd_run, tmp_path):
    out = tmp_path / "new" / "nested" / "curve"
    assert tradeoff.main([str(svd_run[0]), "--thresholds", "3", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"tradeoff.json", "tradeoff.md", "tradeoff.png"}


def test_an_unwritable_out_is_one_line_and_keeps_the_earlier_files(svd_run, tmp_path, capsys,
                                                                   monkeypatch):
    """Issue 20 item 7: a failure to write the results (a full disk, a read-only directory:
    root ignores permission bits, so the write itself is made to fail) ends in one line with
    exit 2, after the table was printed; files written before are kept whole."""
    import errno

    from bayescomp import atomic

    out = tmp_path / "sweep"
    assert tradeoff.main([str(svd_run[0]), "--thresholds", "3", "--out", str(out)]) == 0
    before = (out / "tradeoff.json").read_bytes()
    capsys.readouterr()

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_text", full_disk)
    assert tradeoff.main([str(svd_run[0]), "--thresholds", "2", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write the results into")
    assert "No space left on device" in lines[0]
    assert "threshold" in captured.out.lower() or captured.out.strip()  # the table was printed
    assert (out / "tradeoff.json").read_bytes() == before
