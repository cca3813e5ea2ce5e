"""``python -m bayescomp.frontier`` on hand-made runs: Pruning against the full-width model."""

import json

import pytest

from bayescomp import frontier
from bayescomp.errors import ConfigError

FULL = 430_500  # LeNet-5-Caffe: 500 + 25,000 + 400,000 + 5,000


def _run(root, parts, *, method, seed, weights_total, pruning, error, widths=None,
         architecture=(20, 50, 800, 500), commit="c0", experiment=None):
    run_dir = root.joinpath(*parts)
    run_dir.mkdir(parents=True)
    config = {"model": {"name": "lenet5", **({"widths": widths} if widths else {})}}
    (run_dir / "metrics.json").write_text(json.dumps({
        "experiment": experiment or f"lenet5_{method}", "model": "lenet5", "method": method,
        "dataset": "fashion_mnist", "seed": seed, "weights_total": weights_total,
        "compression": {"pruning": pruning}, "quantized_test_error": error,
        "architecture": list(architecture), "git_commit": commit, "config": config}))
    return run_dir


def _sweep(root, run_dir_name, points, commit="c0", seed=0, experiment="lenet5_bc_ghs"):
    out = root / "tradeoff" / "fashion_mnist" / experiment / f"seed{seed}"
    out.mkdir(parents=True)
    (out / "tradeoff.json").write_text(json.dumps({
        "run_dir": run_dir_name, "experiment": experiment, "dataset": "fashion_mnist",
        "seed": seed, "run_git_commit": commit, "points": points}))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for seed, error in ((0, 8.0), (1, 8.2)):
        _run(root, ("fashion_mnist", "lenet5_dense", f"seed{seed}"), method="dense", seed=seed,
             weights_total=FULL, pruning=1.0, error=error)
    # 8-16-40 from scratch: 200 + 3,200 + 10,240 + 400 = 14,040 weights, Pruning vs its own
    # size 1.0, vs the full model 430,500 / 14,040 = 30.66.
    _run(root, ("studies", "fashion_mnist", "widths", "w8", "seed0"), method="dense", seed=0,
         weights_total=14_040, pruning=1.0, error=10.4, widths=[8, 16, 40],
         architecture=(8, 16, 256, 40))
    _run(root, ("fashion_mnist", "lenet5_bc_ghs", "seed0"), method="bc_ghs", seed=0,
         weights_total=FULL, pruning=5.0, error=9.0)
    # A study run of the same experiment, seed and commit: the sweep is not its.
    _run(root, ("studies", "fashion_mnist", "tau0", "t1", "seed0"), method="bc_ghs", seed=0,
         weights_total=FULL, pruning=50.0, error=30.0, experiment="lenet5_bc_ghs")
    _run(root, ("fashion_mnist", "lenet5_dc", "seed0"), method="dc", seed=0,
         weights_total=FULL, pruning=6.0, error=9.4)  # unstructured: left out
    _sweep(root, "/home/u/runs/fashion_mnist/lenet5_bc_ghs/seed0", [
        {"threshold": -3.0, "architecture_string": "5-30-346-119", "quantized_test_error": 8.9,
         "compression": {"pruning": 40.0}}])
    return root


def test_points_are_on_the_full_model_scale_and_sweeps_find_their_run(results):
    points, full = frontier.collect([results], "lenet5", "fashion_mnist")
    assert full == FULL
    assert {p["method"] for p in points} == {"dense", "bc_ghs"}  # DC's Pruning is another one
    narrow = next(p for p in points if not p["full_width"])
    assert narrow["pruning"] == pytest.approx(30.6624, abs=1e-4)
    sweep = [p for p in points if p["source"] == "sweep"]
    assert len(sweep) == 1 and sweep[0]["pruning"] == pytest.approx(40.0)
    study = next(p for p in points if p["variant"] == "tau0/t1")
    assert study["pruning"] == pytest.approx(50.0)


def test_report_names_the_target_and_the_best_point_past_it(results):
    points, full = frontier.collect([results], "lenet5", "fashion_mnist")
    text = frontier.render(points, "lenet5", "fashion_mnist", full, 1.0, 30.0, "cmd")
    # Dense mean 8.1 + 1 point = 9.10; past 30×: 10.4 (narrow), 8.9 (sweep), 30.0 (study).
    assert "Pruning ≥ 30× at ≤ 9.10 %" in text
    assert "Best error at Pruning ≥ 30×: 8.90 % (BC-GHS threshold -3, seed 0" in text
    assert "1 of 3 points there meet the target" in text


def test_without_a_full_width_run_the_scale_is_unknown(tmp_path):
    _run(tmp_path, ("a", "seed0"), method="dense", seed=0, weights_total=14_040, pruning=1.0,
         error=10.0, widths=[8, 16, 40])
    with pytest.raises(ConfigError, match="no full-width lenet5 run"):
        frontier.collect([tmp_path], "lenet5", "fashion_mnist")


def test_cli_writes_the_report_and_the_figure(results, tmp_path):
    out = tmp_path / "out"
    assert frontier.main([str(results), "--out", str(out)]) == 0
    assert (out / "frontier.md").read_text().startswith("# Error against Pruning")
    assert (out / "frontier.png").stat().st_size > 0
    assert frontier.main([str(tmp_path / "missing")]) == 2
