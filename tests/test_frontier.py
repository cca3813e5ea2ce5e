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


def test_a_study_runs_sweep_is_labelled_with_its_study(results):
    # Same experiment, seed and commit as the experiment's own run: only the directory's
    # <study>/<variant>/seed<s> tells the sweeps apart, and the label must say which is which.
    out = results / "tradeoff" / "fashion_mnist" / "studies" / "tau0" / "t1" / "seed0"
    out.mkdir(parents=True)
    (out / "tradeoff.json").write_text(json.dumps({
        "run_dir": "/home/u/runs/fashion_mnist/studies/tau0/t1/seed0",
        "experiment": "lenet5_bc_ghs", "dataset": "fashion_mnist", "seed": 0,
        "run_git_commit": "c0", "points": [
            {"tolerance": 0.5, "architecture_string": "4-9-144-20", "quantized_test_error": 9.5,
             "compression": {"pruning": 60.0}}]}))
    points, _ = frontier.collect([results], "lenet5", "fashion_mnist")
    sweeps = {p["variant"]: p["pruning"] for p in points if p["source"] == "sweep"}
    assert sweeps == {"threshold -3": pytest.approx(40.0),
                      "tau0/t1 tolerance 0.5": pytest.approx(60.0)}


def test_a_sweep_finds_its_run_published_under_another_directory(tmp_path):
    # The run was swept as .../lenet5_bc_ghs/seed1 and published (renamed recipe), with its
    # sweep, under lenet5_bc_ghs_published/seed1: the sweep's own place names the run. A study
    # run of the same experiment, seed and commit must not take it.
    root = tmp_path / "results"
    _run(root, ("fashion_mnist", "lenet5_dense", "seed0"), method="dense", seed=0,
         weights_total=FULL, pruning=1.0, error=8.0)
    _run(root, ("fashion_mnist", "lenet5_bc_ghs_published", "seed1"), method="bc_ghs", seed=1,
         weights_total=FULL, pruning=5.0, error=9.0, commit="c1", experiment="lenet5_bc_ghs")
    _run(root, ("studies", "fashion_mnist", "s", "a", "seed1"), method="bc_ghs", seed=1,
         weights_total=FULL, pruning=5.0, error=9.0, commit="c1", experiment="lenet5_bc_ghs")
    _sweep(root, "/home/u/runs/fashion_mnist/lenet5_bc_ghs/seed1", [
        {"threshold": -3.0, "architecture_string": "5-30-346-119",
         "quantized_test_error": 8.9, "compression": {"pruning": 40.0}}],
        commit="c1", seed=1, experiment="lenet5_bc_ghs_published")
    # Published elsewhere than either run: attached to neither.
    _sweep(root, "/home/u/runs/fashion_mnist/lenet5_bc_ghs/seed1", [
        {"threshold": -2.0, "architecture_string": "5-30-346-119",
         "quantized_test_error": 8.9, "compression": {"pruning": 30.0}}],
        commit="c1", seed=1, experiment="elsewhere")
    points, _ = frontier.collect([root], "lenet5", "fashion_mnist")
    sweeps = [p for p in points if p["source"] == "sweep"]
    assert [(p["variant"], p["pruning"]) for p in sweeps] == [("threshold -3", 40.0)]


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


# ---------------------------------------------------------------------------------------------
# Multiply-adds: from metrics.json's counting, or from a run's model.bcz


def _lenet5_masks(drop_one=False):
    """Full-width LeNet-5 masks keeping conv1 channels 0-4, conv2 0-9 (from those), fc1's rows
    of conv2 channels 0-9 at all 16 positions into units 0-19, fc2 from those."""
    import numpy as np

    masks = {"conv1": np.zeros((5, 5, 1, 20), bool), "conv2": np.zeros((5, 5, 20, 50), bool),
             "fc1": np.zeros((800, 500), bool), "fc2": np.zeros((500, 10), bool)}
    masks["conv1"][..., :5] = True
    masks["conv2"][:, :, :5, :10] = True
    rows = [p * 50 + c for p in range(16) for c in range(10)]
    masks["fc1"][np.ix_(rows, range(20))] = True
    masks["fc2"][:20] = True
    if drop_one:
        masks["conv2"][0, 0, 0, 0] = False  # inside a kept filter: not a structural change
    return masks


def _write_bcz(run_dir, masks):
    import numpy as np

    from bayescomp.compression import codec
    from bayescomp.compression.quantize import BitPrecision, QuantizedNetwork

    rng = np.random.default_rng(0)
    names = list(masks)
    kernels = [np.where(m, rng.integers(1, 40, m.shape) * 2.0**-6, 0).astype(np.float32)
               for m in masks.values()]
    biases = [np.zeros(m.shape[-1], np.float32) for m in masks.values()]
    precision = BitPrecision([6] * 4, 3, [10] * 4, 0.75)
    codec.save(run_dir / "model.bcz", QuantizedNetwork(names, kernels, biases, list(masks.values()),
                                                       precision),
               model_name="lenet5", input_shape=(28, 28, 1), num_classes=10)


@pytest.fixture
def counted_results(tmp_path):
    import numpy as np
    from flax import nnx

    from bayescomp import counting
    from bayescomp.models import LeNet5
    from bayescomp.nn import LayerFactory

    root = tmp_path / "results"
    dense = _run(root, ("fashion_mnist", "lenet5_dense", "seed0"), method="dense", seed=0,
                 weights_total=FULL, pruning=1.0, error=8.0)
    model = nnx.eval_shape(lambda: LeNet5(LayerFactory(), rngs=nnx.Rngs(0)))
    ones = {name: np.ones(m.shape, bool) for name, m in _lenet5_masks().items()}
    metrics = json.loads((dense / "metrics.json").read_text())
    metrics["counting"] = counting.summary(model, (28, 28, 1), ones)  # a run that has it
    (dense / "metrics.json").write_text(json.dumps(metrics))
    # Published runs written before counting: only their model.bcz knows.
    _write_bcz(_run(root, ("fashion_mnist", "lenet5_bc_ghs", "seed0"), method="bc_ghs", seed=0,
                    weights_total=FULL, pruning=100.0, error=8.5), _lenet5_masks())
    _write_bcz(_run(root, ("fashion_mnist", "lenet5_dc", "seed0"), method="dc", seed=0,
                    weights_total=FULL, pruning=6.0, error=9.4), _lenet5_masks(drop_one=True))
    return root


def test_multiply_adds_from_model_bcz_without_counting(counted_results):
    points, full = frontier.collect([counted_results], "lenet5", "fashion_mnist", "macs")
    assert full == 2_293_000
    by_method = {p["method"]: p for p in points}
    assert set(by_method) == {"dense", "bc_ghs", "dc"}  # DC is on the multiply-add axes
    structural = 576 * 25 * 5 + 64 * 25 * 5 * 10 + 160 * 20 + 20 * 10
    assert by_method["bc_ghs"]["macs"] == by_method["bc_ghs"]["nonzero_macs"] == structural
    assert by_method["dc"]["macs"] == structural
    assert by_method["dc"]["nonzero_macs"] == structural - 64  # one conv2 weight, 8·8 positions
    assert by_method["bc_ghs"]["macs_reduction"] == pytest.approx(2_293_000 / structural)
    assert by_method["dense"]["macs"] == 2_293_000


def test_sweep_points_structural_counts_theirs_or_from_whole_groups(counted_results):
    # The masks of _lenet5_masks(): conv1 5 filters of 25, conv2 10 of 5·25, fc1 160 rows x 20,
    # fc2 20 x 10 kept weights.
    kept = [5 * 25, 10 * 5 * 25, 160 * 20, 20 * 10]
    nonzero = 576 * 125 + 64 * 1250 + 3200 + 200  # output positions x kept weights, per layer
    assert nonzero == 576 * 25 * 5 + 64 * 25 * 5 * 10 + 160 * 20 + 20 * 10  # the structural
    for experiment in ("lenet5_bc_ghs", "lenet5_dc"):
        # The layer order a sweep's kept weights follow is the run's metrics.json "layers".
        metrics_path = counted_results / "fashion_mnist" / experiment / "seed0" / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics_path.write_text(json.dumps({**metrics,
                                            "layers": ["conv1", "conv2", "fc1", "fc2"]}))
        old_point = {"tolerance": 0.5, "architecture_string": "5-10-160-20",
                     "kept_per_layer": kept, "quantized_test_error": 9.0,
                     "compression": {"pruning": 100.0}}
        # A point written with its own counting (a BatchNorm net's structural count can exceed
        # the nonzero one: a removed channel's rows stay where a BatchNorm keeps its shift).
        new_point = {**old_point, "tolerance": 1.0,
                     "counting": {"pruned": {"macs": 200_000}, "nonzero_macs": 150_000}}
        _sweep(counted_results, f"/runs/fashion_mnist/{experiment}/seed0",
               [old_point, new_point], experiment=experiment)
    points, _ = frontier.collect([counted_results], "lenet5", "fashion_mnist", "macs")
    sweeps = {(p["method"], p["variant"]): p for p in points if p["source"] == "sweep"}
    # Old points: a group method (whose run's structural and nonzero counts agree, as a LeNet's
    # do) keeps whole blocks, so the structural count is the nonzero one; DC's kept weights say
    # nothing about which filters are whole.
    ghs_old, dc_old = sweeps["bc_ghs", "tolerance 0.5"], sweeps["dc", "tolerance 0.5"]
    assert ghs_old["macs"] == ghs_old["nonzero_macs"] == nonzero
    assert dc_old["macs"] is None and dc_old["nonzero_macs"] == nonzero
    for method in ("bc_ghs", "dc"):  # new points: their own counts, whatever the method
        assert sweeps[method, "tolerance 1"]["macs"] == 200_000
        assert sweeps[method, "tolerance 1"]["nonzero_macs"] == 150_000


def test_an_old_group_sweep_gets_no_structural_count_where_its_runs_counts_differ(
        counted_results):
    metrics_path = counted_results / "fashion_mnist" / "lenet5_bc_ghs" / "seed0" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["layers"] = ["conv1", "conv2", "fc1", "fc2"]
    # As a BatchNorm net's run: its structural count above its nonzero one.
    metrics["counting"] = {"dense": {"macs": 2_293_000, "params": 430_500,
                                     "layers": {"conv1": {"macs": 288_000, "weights": 500},
                                                "conv2": {"macs": 1_600_000, "weights": 25_000},
                                                "fc1": {"macs": 400_000, "weights": 400_000},
                                                "fc2": {"macs": 5_000, "weights": 5_000}}},
                           "pruned": {"macs": 160_000, "params": 4_000}, "nonzero_macs": 155_400}
    metrics_path.write_text(json.dumps(metrics))
    _sweep(counted_results, "/runs/fashion_mnist/lenet5_bc_ghs/seed0", [
        {"tolerance": 0.5, "architecture_string": "5-10-160-20",
         "kept_per_layer": [125, 1250, 3200, 200], "quantized_test_error": 9.0,
         "compression": {"pruning": 100.0}}])
    points, _ = frontier.collect([counted_results], "lenet5", "fashion_mnist", "macs")
    sweep = next(p for p in points if p["source"] == "sweep")
    assert sweep["macs"] is None and sweep["nonzero_macs"] == 155_400


def test_cli_writes_the_multiply_add_report_beside_the_pruning_one(counted_results, tmp_path):
    out = tmp_path / "out"
    assert frontier.main([str(counted_results), "--measure", "nonzero_macs", "--out",
                          str(out)]) == 0
    text = (out / "frontier_nonzero_macs.md").read_text()
    assert text.startswith("# Error against multiply-adds")
    # Dense 8.0 + 1 point: BC-GHS (8.5 %) is within the bar, DC (9.4 %) is not.
    assert "Fewest nonzero multiply-adds within the bar: 155,400 (14.8× fewer than dense), " \
           "BC-GHS" in text
    assert (out / "frontier_nonzero_macs.png").stat().st_size > 0
    assert not (out / "frontier.md").exists()
