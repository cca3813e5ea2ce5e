"""``python -m bayescomp.tables``: our rows from metrics files, the published rows from the YAML."""

from __future__ import annotations

import json

import pytest
import yaml

from bayescomp import tables


def _run(tmp_path, seed, architecture, bits, quantized_error, kept, config=None, sub="",
         **extra):
    run_dir = tmp_path / sub / "fashion_mnist" / "lenet300_gnj" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    metrics = {
        "experiment": "lenet300_gnj", "model": "lenet300", "method": "bc_gnj",
        "dataset": "fashion_mnist", "seed": seed, "epochs": 200, "test_error": 9.9,
        "pruned_test_error": 10.3, "quantized_test_error": quantized_error,
        "percent_kept": kept, "architecture": architecture, "bits_per_layer": bits,
        "exponent_bits": 3, "compression": {"pruning": 4.0, "fast_prediction": 14.0,
                                            "max_compression": 25.0},
        "seconds_per_epoch": 2.0, "git_commit": "abc",
        "config": config or {"seed": seed, "method": {"prior": {"tau0": 1e-5}}},
        **extra,
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


def test_runs_of_different_recipes_get_labelled_rows_and_studies_are_skipped(tmp_path):
    # Seeds 0 and 1 share a recipe although their data directories and seeds differ.
    _run(tmp_path, 0, [447, 130, 19], [6, 3, 9], 10.4, 22.0,
         config={"seed": 0, "data": {"dir": None}, "method": {"prior": {"tau0": 1e-5}}},
         train_seconds=9000.0)
    # Seed 1 also has an option, off (null), that did not exist when seed 0 ran.
    _run(tmp_path, 1, [450, 128, 19], [6, 3, 9], 10.6, 24.0,
         config={"seed": 1, "data": {"dir": "/x"},
                 "method": {"prior": {"tau0": 1e-5}, "prune": {"select": None}}},
         device_kind="NVIDIA H100", seconds_per_epoch=0.5, train_seconds=1800.0)
    _run(tmp_path, 2, [300, 100, 19], [6, 3, 9], 11.0, 15.0,
         config={"seed": 2, "method": {"prior": {"tau0": 1e-3}}})
    _run(tmp_path, 0, [1, 1, 1], [1, 1, 1], 50.0, 1.0, sub="studies",
         config={"seed": 0, "method": {"prior": {"tau0": 7.0}}})
    out = tmp_path / "lenet.md"
    assert tables.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    # Two rows for BC-GNJ, each labelled with the differing value; the seeds 0 and 1 averaged.
    assert "BC-GNJ (method.prior.tau0=1e-05) | 2 | 447-130-19 / 450-128-19" in text
    assert "BC-GNJ (method.prior.tau0=0.001) | 1 | 300-100-19" in text
    # Rows in numeric order of the differing value (1e-05 < 0.001), not string order.
    assert text.index("tau0=1e-05) | 2") < text.index("tau0=0.001) | 1")
    # Epoch times of different devices are not averaged together.
    assert "0.50 (NVIDIA H100) / 2.00 (cpu)" in text
    # ... nor their training times (1800 s and 9000 s, in minutes); a run without one shows –.
    assert "| 30.0 (NVIDIA H100) / 150.0 (cpu) |" in text
    assert "| 2.00 | – |" in text
    # The run under studies/ is not in the table scanned from its parent ...
    assert "tau0=7.0" not in text and "1-1-1" not in text
    # ... but is when its directory is named.
    assert tables.main([str(tmp_path / "studies"), str(tmp_path / "fashion_mnist"),
                        "--out", str(out)]) == 0
    assert "BC-GNJ (method.prior.tau0=7.0) | 1 | 1-1-1" in out.read_text()


def test_run_list_names_the_inputs_and_the_commits_that_trained_a_reevaluated_run(tmp_path):
    config = {"seed": 0, "data": {"preprocess": "signed"}}
    # Seed 0 was trained at commit `old` and re-evaluated (metrics rewritten) at `abc`.
    _run(tmp_path, 0, [447, 130, 19], [5, 4, 11], 10.9, 22.0, config=config,
         code_history=[{"epochs": [0, 199], "git_commit": "old"}])
    # Seed 1 was trained and evaluated by the same commit: nothing more to say.
    _run(tmp_path, 1, [450, 128, 19], [5, 4, 11], 10.7, 24.0, config={**config, "seed": 1},
         code_history=[{"epochs": [0, 199], "git_commit": "abc"}])
    out = tmp_path / "lenet.md"
    assert tables.main([str(tmp_path), "--out", str(out)]) == 0
    lines = {line.split("`")[1].split("/")[-1]: line for line in out.read_text().splitlines()
             if line.startswith("- `")}
    assert lines["seed0"].endswith(
        "commit `abc`, cpu, inputs `signed`; epochs trained by 0–199 `old`")
    assert lines["seed1"].endswith("commit `abc`, cpu, inputs `signed`")


def test_a_seed_given_twice_is_refused_and_a_path_given_twice_is_read_once(tmp_path):
    # mean ± std is over seeds: two run directories of one recipe and seed would count twice.
    import shutil

    from bayescomp.errors import ConfigError

    source = tables.REPO_ROOT / "results/fashion_mnist/lenet300_gnj/seed0/metrics.json"
    first = tmp_path / "runs" / "a" / "metrics.json"
    first.parent.mkdir(parents=True)
    shutil.copy(source, first)
    runs = tables.find_runs([tmp_path / "runs", tmp_path / "runs" / "a"])
    assert len(runs) == 1
    published = yaml.safe_load(tables.PUBLISHED.read_text())
    tables.render(runs, published, ["runs"])
    second = tmp_path / "runs" / "b" / "metrics.json"
    second.parent.mkdir(parents=True)
    shutil.copy(source, second)
    with pytest.raises(ConfigError, match="seed 0 .* appears in 2 runs"):
        tables.render(tables.find_runs([tmp_path / "runs"]), published, ["runs"])


def test_a_run_resumed_with_another_length_gets_its_own_row(tmp_path):
    # Same final config, but seed 1 trained its first epochs for a 100-epoch schedule.
    _run(tmp_path, 0, [447, 130, 19], [6, 3, 9], 10.4, 22.0, planned_epochs=[200])
    _run(tmp_path, 1, [450, 128, 19], [6, 3, 9], 10.6, 24.0, planned_epochs=[100, 200])
    runs = tables.find_runs([tmp_path])
    assert tables.recipe(runs[0]) != tables.recipe(runs[1])
    text = tables.render(runs, yaml.safe_load(tables.PUBLISHED.read_text()), ["x"])
    assert "planned_epochs=[100, 200]" in text


def test_unidentifiable_code_and_recalled_published_cells_are_marked(tmp_path):
    _run(tmp_path, 0, [447, 130, 19], [6, 3, 9], 10.4, 22.0, git_commit="abc-dirty")
    runs = tables.find_runs([tmp_path])
    published = yaml.safe_load(tables.PUBLISHED.read_text())
    published_dc = yaml.safe_load(tables.PUBLISHED_DC.read_text())
    text = tables.render(runs, published, ["x"], published_dc)
    assert "commit `abc-dirty`, cpu" in text and "**code not identifiable**" in text
    # Deep Compression: the slides give LeNet-300-100's CR 40, Han et al. Table 2 (recalled) its bits (6-6-6).
    row = next(line for line in text.splitlines() if line.startswith("| LeNet-300-100 | 1.64"))
    assert "6-6-6†" in row and "(40×)" in row


def test_settings_added_later_at_their_neutral_value_keep_the_recipe():
    # A run made before optimizer.weight_decay / warmup_epochs / trainer.batch_norm existed, and
    # one made after with those settings at the values that train alike: one recipe. A run that
    # decays its weights is another recipe, and then the decayed types matter.
    before = {"config": {"seed": 0, "optimizer": {"name": "adam", "lr": 1e-3}}}
    after = {"config": {"seed": 1, "optimizer": {
        "name": "adam", "lr": 1e-3, "weight_decay": 0.0, "decay": ["weights"],
        "warmup_epochs": 0}, "trainer": {"batch_norm": {"momentum": 0.1, "epsilon": 1e-5}}}}
    assert tables.recipe(before) == tables.recipe(after)
    decayed = json.loads(json.dumps(after))
    decayed["config"]["optimizer"]["weight_decay"] = 5e-4
    other_types = json.loads(json.dumps(decayed))
    other_types["config"]["optimizer"]["decay"] = ["weights", "norm"]
    assert len({tables.recipe(r) for r in (before, decayed, other_types)}) == 3
    # method.budget (added later): its allocation is no recipe without a budget; with one, the
    # budget and the allocation both are.
    unbudgeted = json.loads(json.dumps(before))
    unbudgeted["config"]["method"] = {"budget": {"macs": None, "allocate": "global"}}
    assert tables.recipe(unbudgeted) == tables.recipe(before)
    budgets = []
    for allocate in ("global", "uniform"):
        run = json.loads(json.dumps(unbudgeted))
        run["config"]["method"]["budget"] = {"macs": 600000, "allocate": allocate}
        budgets.append(tables.recipe(run))
    assert len({tables.recipe(before), *budgets}) == 3


def test_a_kl_warm_up_nothing_reads_is_no_recipe():
    # The warm-up is set in fractions of the run, so a 40- and a 100-epoch run differ in it; it
    # weighs a KL term a dense run does not have, so only their lengths tell them apart. A
    # variational (or VCNN) run's warm-up stays part of its recipe.
    def run(method, epochs, start, end, procedure=None):
        return {"config": {"seed": 0, "method": {"name": method, "procedure": procedure},
                           "trainer": {"epochs": epochs,
                                       "kl_warmup": {"start_epoch": start, "end_epoch": end}}}}

    dense = [run("dense", 40, 0.025, 0.1), run("dense", 100, 0.025, 0.1)]
    labels = [label for label, _ in tables._recipe_labels([tables.recipe(r) for r in dense])]
    assert labels == ["trainer.epochs=40", "trainer.epochs=100"]
    assert tables.recipe(run("dense", 40, 0.025, 0.1)) == tables.recipe(run("dense", 40, 5, 20))
    assert tables.recipe(run("gnj", 200, 0.025, 0.1)) != tables.recipe(run("gnj", 200, 0, 0.1))
    # Dirichlet pruning anneals its switches per epoch of their phase, never by the warm-up.
    dirichlet = [run("dirichlet", 10, 0.025, 0.1, "dirichlet"),
                 run("dirichlet", 10, 0.1, 0.4, "dirichlet")]
    assert tables.recipe(dirichlet[0]) == tables.recipe(dirichlet[1])
    assert tables.recipe(run("vcnn", 40, 0.025, 0.1, "vcnn")) != tables.recipe(
        run("vcnn", 40, 0.1, 0.4, "vcnn"))


def test_multiply_adds_come_from_counting_or_from_the_runs_model_bcz(tmp_path):
    """Seed 0 has ``counting`` in its metrics.json; seed 1, written before it, only a model.bcz
    (LeNet-300-100 keeping 100 inputs → 30 units → 10 → 10 classes)."""
    import numpy as np

    from bayescomp.compression import codec
    from bayescomp.compression.quantize import BitPrecision, QuantizedNetwork

    dense = 784 * 300 + 300 * 100 + 100 * 10
    pruned = 100 * 30 + 30 * 10 + 10 * 10
    counted = {"dense": {"macs": dense}, "pruned": {"macs": 2 * pruned},
               "macs_ratio": dense / (2 * pruned), "nonzero_macs": pruned,
               "nonzero_macs_ratio": dense / pruned}
    _run(tmp_path, 0, [100, 30, 10], [6, 3, 9], 10.4, 1.0, counting=counted)
    _run(tmp_path, 1, [100, 30, 10], [6, 3, 9], 10.6, 1.0)
    masks = [np.zeros((784, 300), bool), np.zeros((300, 100), bool), np.zeros((100, 10), bool)]
    masks[0][:100, :30] = masks[1][:30, :10] = masks[2][:10] = True
    kernels = [np.where(m, 0.25, 0).astype(np.float32) for m in masks]
    biases = [np.zeros(m.shape[1], np.float32) for m in masks]
    codec.save(tmp_path / "fashion_mnist" / "lenet300_gnj" / "seed1" / "model.bcz",
               QuantizedNetwork(["fc1", "fc2", "fc3"], kernels, biases, masks,
                                BitPrecision([6] * 3, 3, [10] * 3, 0.75)),
               model_name="lenet300", input_shape=(28, 28, 1), num_classes=10)
    out = tmp_path / "lenet.md"
    assert tables.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    # Structural: seed 0's 6.8K (39.1×, its own count) and seed 1's 3.4K (78.3×, from its file).
    assert (f"| 5.1 ± 2.4K / {dense / 1e3:,.1f}K (58.7 ± 27.7×) | 3.4K "
            f"({dense / pruned:.1f}×) |") in text


def test_a_setting_that_predates_a_run_is_labelled_with_the_value_it_ran_as():
    # The published-recipe BC-GHS runs predate scale_init (they ran as "global"); the later
    # runs set it to "local". Their labels say so, not "–" (runs that do not record it).
    old = {"config": {"method": {"name": "bc_ghs", "prune": {"select": {"tolerance": 0.5}}}}}
    new = {"config": {"method": {"name": "bc_ghs", "posterior_init": {"scale_init": "local"},
                                 "prune": {"select": {"tolerance": 0.1}}}}}
    labels = [label for label, _ in tables._recipe_labels([tables.recipe(old),
                                                             tables.recipe(new)])]
    assert labels == [
        "method.posterior_init.scale_init=global, method.prune.select.tolerance=0.5",
        "method.posterior_init.scale_init=local, method.prune.select.tolerance=0.1"]
