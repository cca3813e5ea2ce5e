"""The random-ranking control of a Dirichlet run's channel ranking (bayescomp.ranking_control)."""

import json

import numpy as np
import pytest

from bayescomp import ranking_control
from bayescomp.errors import ConfigError

MEANS = {"a": np.array([0.4, 0.3, 0.2, 0.1]), "b": np.array([0.1, 0.1, 0.5, 0.2, 0.1])}


def test_random_and_reversed_rankings_keep_the_asked_widths():
    widths = {"a": 2, "b": 3}
    rng = np.random.default_rng(0)
    draws = [ranking_control.random_keep(MEANS, widths, rng) for _ in range(200)]
    for keep in draws:
        assert {g: int(k.sum()) for g, k in keep.items()} == widths
    # Uniform: each channel of "a" is kept in about half of the draws (binomial, n = 200,
    # p = 1/2: std 0.035, so 0.35-0.65 is more than 4 standard deviations either side).
    frequency = np.mean([keep["a"] for keep in draws], axis=0)
    assert np.all((frequency > 0.35) & (frequency < 0.65))
    reversed_keep = ranking_control.reversed_keep(MEANS, widths)
    np.testing.assert_array_equal(reversed_keep["a"], [False, False, True, True])
    assert reversed_keep["b"].sum() == 3 and not reversed_keep["b"][2]


def test_the_control_scores_each_ranking_with_its_own_channels():
    # A stand-in for the network's error: the switch mass removed, in %, so the switch
    # ranking must score lowest, the reversed one highest, random in between.
    def error(keep):
        return 100.0 * sum(float(MEANS[g][~k].sum()) for g, k in keep.items()) / 2.0

    rows = ranking_control.control(MEANS, [("half", {"a": 2, "b": 3})], error, draws=30, seed=1)
    (row,) = rows
    assert row["switches"] == pytest.approx(100 * (0.3 + 0.2) / 2)  # a drops .2 .1, b .1 .1
    assert row["reversed"] == pytest.approx(100 * (0.7 + 0.7) / 2)
    assert row["switches"] < row["random_mean"] < row["reversed"]
    assert len(row["random"]) == 30 and row["kept_fraction"] == pytest.approx(5 / 9)


def test_a_run_that_is_not_a_dirichlet_run_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(
        "seed: 0\nmodel: {name: lenet5}\nmethod: {name: dense}\ndata: {name: fashion_mnist}\n"
        "trainer: {eval_batch_size: 1000}\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"test_error": 8.0}))
    assert ranking_control.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no dirichlet.switch_means" in err
    assert ranking_control.main([str(tmp_path / "missing")]) == 2
    assert "not a bayescomp run directory" in capsys.readouterr().err


def test_an_out_file_that_is_not_json_is_refused_before_any_work(tmp_path, capsys):
    assert ranking_control.main([str(tmp_path), "--out", str(tmp_path / "control.md")]) == 2
    assert "name a .json file" in capsys.readouterr().err
    assert ranking_control.main([str(tmp_path), "--draws", "0"]) == 2
    assert "--draws must be at least 1" in capsys.readouterr().err
    for bad in ("-1", "10001"):
        assert ranking_control.main([str(tmp_path), "--recalibrate-bn", bad]) == 2
        assert "--recalibrate-bn must be 0 (off)" in capsys.readouterr().err


def test_fraction_widths_round_up_and_never_empty_a_group():
    from bayescomp.channel_selection import fraction_widths

    assert fraction_widths(MEANS, 0.5) == {"a": 2, "b": 3}
    assert fraction_widths(MEANS, 0.01) == {"a": 1, "b": 1}
    assert fraction_widths(MEANS, 1.0) == {"a": 4, "b": 5}
    # 0.55 · 100 is 55.00000000000001 in floats: still 55 channels, not 56.
    assert 0.55 * 100 > 55
    assert fraction_widths({"c": np.ones(100)}, 0.55) == {"c": 55}
    with pytest.raises(ConfigError, match="share of channels"):
        fraction_widths(MEANS, 0.0)


def test_the_results_tables_show_a_published_control_and_refuse_a_corrupt_one(tmp_path):
    run_dir = tmp_path / "seed0"
    run_dir.mkdir()
    assert ranking_control.section([{"_path": str(run_dir)}]) == []  # no control: no section
    rows = ranking_control.control(MEANS, [("half", {"a": 2, "b": 3})],
                                   lambda keep: 10.0 + sum(int(k.sum()) for k in keep.values()),
                                   draws=3, seed=0)
    (run_dir / ranking_control.CONTROL_FILE).write_text(json.dumps(
        {"run": "x", "git_commit": "0123456789abcdef", "dense_error": 8.05, "draws": 3,
         "seed": 0, "rows": rows}))
    lines = ranking_control.section([{"_path": str(run_dir), "dirichlet": {"mode": "point"}}])
    (row,) = [line for line in lines if line.startswith(f"| `{run_dir}`")]
    assert row == (f"| `{run_dir}` | point | pretrained | 8.05 | half | 55.6 % | 15.00 | "
                   "15.00 ± 0.00 (n = 3) | 15.00 | `0123456` |")
    (run_dir / ranking_control.CONTROL_FILE).write_text(json.dumps(
        {"run": "x", "git_commit": "0123456789abcdef-dirty", "dense_error": 8.05, "rows": rows}))
    lines = ranking_control.section([{"_path": str(run_dir)}])
    assert "`0123456789abcdef-dirty` — **code not identifiable**" in lines[-2]
    (run_dir / ranking_control.CONTROL_FILE).write_text("{\"rows\": [")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        ranking_control.section([{"_path": str(run_dir)}])


def test_a_control_of_another_network_or_another_run_is_refused(tmp_path):
    recorded = {"pretrained_test_error": 8.05, "dirichlet": {"error_after_pruning": 83.42}}
    ranking_control.check_same_network(recorded, 8.05, 83.43, "RUN")  # summation order
    with pytest.raises(ConfigError, match="pass --pretrained DIR"):
        ranking_control.check_same_network(recorded, 8.31, 83.42, "RUN")
    with pytest.raises(ConfigError, match="dirichlet.error_after_pruning"):
        ranking_control.check_same_network(recorded, 8.05, 80.0, "RUN")
    # A control file left from an earlier publish, at other widths than the run's.
    run_dir = tmp_path / "seed0"
    run_dir.mkdir()
    rows = ranking_control.control(MEANS, [("half", {"a": 2, "b": 3})], lambda keep: 1.0,
                                   draws=1, seed=0)
    (run_dir / ranking_control.CONTROL_FILE).write_text(json.dumps(
        {"git_commit": "0123456", "dense_error": 8.0, "rows": rows}))
    with pytest.raises(ConfigError, match="belongs to an earlier run"):
        ranking_control.section([{"_path": str(run_dir),
                                  "dirichlet": {"kept_widths": {"a": 1, "b": 3}}}])
    (run_dir / ranking_control.CONTROL_FILE).write_text(json.dumps({"rows": rows}))
    with pytest.raises(ConfigError, match="not a ranking control's file"):
        ranking_control.section([{"_path": str(run_dir)}])
