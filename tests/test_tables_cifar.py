"""``python -m bayescomp.tables`` on CIFAR runs: ``cifar.md`` beside ``lenet.md``, our rows from
synthetic metrics files, the published channel-pruning rows from ``experiments/published/``."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from table_runs import write_lenet_run  # tests/ is on sys.path (pytest rootdir)

from bayescomp import cifar_tables, lenet5_structured, tables


def _counting(dense_params, pruned_params, dense_macs, pruned_macs):
    """A ``counting`` entry as the channel procedures write it (channel_pruning.finish)."""
    return {"dense": {"params": dense_params, "macs": dense_macs},
            "pruned": {"params": pruned_params, "macs": pruned_macs},
            "params_ratio": dense_params / pruned_params, "macs_ratio": dense_macs / pruned_macs,
            "nonzero_macs": pruned_macs, "nonzero_macs_ratio": dense_macs / pruned_macs}


def _cifar_run(root, seed=0, dataset="cifar10_jpeg", model="resnet20", method="vcnn",
               experiment="resnet20_vcnn_cpu", errors=(8.0, 9.0, None), removed=0.25,
               pruned_params=200_000, **changes):
    """A finished channel-pruning run's metrics.json, with the keys the procedures write."""
    run_dir = root / dataset / experiment / f"seed{seed}"
    run_dir.mkdir(parents=True)
    trained, pruned, finetuned = errors
    metrics = {
        "experiment": experiment, "model": model, "method": method, "dataset": dataset,
        "seed": seed, "epochs": 40, "test_error": trained, "pruned_test_error":
            pruned if finetuned is None else finetuned,
        "quantized_test_error": pruned if finetuned is None else finetuned,
        "seconds_per_epoch": 100.0, "train_seconds": 4000.0, "git_commit": "abc",
        "counting": _counting(269_722, pruned_params, 40_551_040, 30_000_000),
        "config": {"seed": seed, "model": {"name": model}, "data": {"name": dataset}},
    }
    if method != "dense":
        metrics[method] = {"prunable_channels": 336, "pruned_fraction": removed,
                           "error_before_pruning": trained, "error_after_pruning": pruned,
                           "error_after_finetuning": finetuned}
    metrics.update(changes)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def _lenet_run(root, seed=0):
    write_lenet_run(root, seed, epochs=200)


def _render(root) -> str:
    runs = [r for r in tables.find_runs([root]) if cifar_tables.is_cifar(r)]
    return cifar_tables.render(runs, cifar_tables.published_papers(),
                               yaml.safe_load(tables.PUBLISHED.read_text()), ["x"])


def _section(text: str, heading: str) -> str:
    """The text from ``heading`` to the next ``## `` heading."""
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def _row(text: str, first_cell: str, after: str = "") -> list[str]:
    """The cells of the first table row starting with ``first_cell`` (after ``after``)."""
    line = next(line for line in text[text.index(after):].splitlines()
                if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_cifar_md_is_written_only_for_cifar_runs_and_beside_the_lenet_file(tmp_path, capsys):
    lenet_only, cifar_only, both = tmp_path / "lenet", tmp_path / "cifar", tmp_path / "both"
    _lenet_run(lenet_only)
    _cifar_run(cifar_only)
    _lenet_run(both)
    _cifar_run(both)
    # A LeNet-only scan writes no cifar.md; a CIFAR-only one no lenet.md.
    assert tables.main([str(lenet_only)]) == 0
    assert (lenet_only / "lenet.md").is_file() and not (lenet_only / "cifar.md").exists()
    assert tables.main([str(cifar_only)]) == 0
    assert (cifar_only / "cifar.md").is_file() and not (cifar_only / "lenet.md").exists()
    assert "# CIFAR results" in (cifar_only / "cifar.md").read_text()
    # With both kinds, --out names the LeNet file and cifar.md goes into its directory.
    out = tmp_path / "tables" / "lenet.md"
    out.parent.mkdir()
    capsys.readouterr()
    assert tables.main([str(both), "--out", str(out)]) == 0
    assert "# LeNet results" in out.read_text()
    assert "# CIFAR results" in (out.parent / "cifar.md").read_text()
    said = capsys.readouterr().out
    assert f"wrote {out} (1 runs)" in said and f"wrote {out.parent / 'cifar.md'}" in said
    # ... and the CIFAR runs change nothing in lenet.md.
    lenet_alone = (lenet_only / "lenet.md").read_text().replace(str(lenet_only), "X")
    assert out.read_text().replace(str(both), "X") == lenet_alone
    # --out naming cifar.md while both kinds are found: one line, nothing written.
    clash = tmp_path / "clash" / "cifar.md"
    clash.parent.mkdir()
    assert tables.main([str(both), "--out", str(clash)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LeNet and CIFAR runs" in err and "--out" in err
    assert not list(clash.parent.iterdir())
    # With the CIFAR runs alone, --out names the CIFAR file.
    alone = tmp_path / "alone.md"
    assert tables.main([str(cifar_only), "--out", str(alone)]) == 0
    assert "# CIFAR results" in alone.read_text()


def test_our_rows_aggregate_seeds_with_counts_from_the_metrics(tmp_path):
    _cifar_run(tmp_path, 0, errors=(8.0, 9.0, None), removed=0.25, pruned_params=200_000)
    _cifar_run(tmp_path, 1, errors=(8.2, 9.4, None), removed=0.35, pruned_params=180_000,
               device_kind="NVIDIA H100", seconds_per_epoch=5.0, train_seconds=600.0,
               compressed_bytes=1000, compressed_test_error=9.4)
    text = _render(tmp_path)
    section = _section(text, "## CIFAR-10 re-encoded as JPEG (cifar10_jpeg)")
    cells = _row(section, "ResNet-20")
    assert cells[1:4] == ["VCNN", "2", "40"]
    # Errors as mean ± sample std (std of {9.0, 9.4} = 0.28); no fine-tuning phase: –.
    assert cells[4] == "8.10 ± 0.14 / 9.20 ± 0.28 / –"
    assert cells[5] == "30.0 ± 7.1"  # 25 % and 35 % of the prunable channels
    # Parameters 0.27M → mean 0.19M (ratio 269,722 / 200,000 = 1.35 and / 180,000 = 1.50).
    assert cells[6] == "0.27M → 0.19 ± 0.01M (1.4 ± 0.1×)"
    assert cells[7] == "40.55M → 30.00M (1.4×)"
    # The file of the one seed that has one; CPU and GPU times kept apart.
    assert cells[9:11] == ["1000", "9.40"]
    assert cells[11] == "–"  # no export speed recorded (next test)
    assert cells[12] == "5.00 (NVIDIA H100) / 100.00 (cpu)"
    assert cells[13] == "10.0 (NVIDIA H100) / 66.7 (cpu)"
    runs = [line for line in section.splitlines() if line.startswith("- `")]
    assert len(runs) == 2 and all("resnet20_vcnn_cpu, seed" in line for line in runs)
    # A fine-tuned slimming run: its three errors; a dense run: nothing pruned.
    _cifar_run(tmp_path, 0, method="slimming", experiment="resnet20_slimming_cpu",
               errors=(8.0, 30.0, 8.5), removed=0.4)
    _cifar_run(tmp_path, 0, method="dense", experiment="resnet20_dense_cpu",
               errors=(7.5, None, None), counting=None)
    # Dirichlet pruning: the pretrained network's error first, the retrained one's last, the
    # channels removed counted from its switches.
    _cifar_run(tmp_path, 0, method="dirichlet", experiment="resnet20_dirichlet",
               errors=(8.0, None, None), dirichlet={
                   "switch_means": {"a": [0.25] * 4, "b": [0.25] * 4},
                   "kept_widths": {"a": 2, "b": 3}, "error_with_switches": 8.1,
                   "error_after_pruning": 40.0, "error_after_retraining": 8.6})
    text = _render(tmp_path)
    assert _row(text, "ResNet-20", "| ResNet-20 | Network slimming")[4] == "8.00 / 30.00 / 8.50"
    assert _row(text, "ResNet-20", "| ResNet-20 | Dirichlet")[4:6] == ["8.00 / 40.00 / 8.60",
                                                                        "37.5"]
    dense = _row(text, "ResNet-20")
    assert dense[1] == "Original (dense)" and dense[4:8] == ["7.50 / – / –", "–", "–", "–"]


def test_cifar10_jpeg_is_never_called_cifar10(tmp_path):
    _cifar_run(tmp_path, 0)
    _cifar_run(tmp_path, 1)
    text = _render(tmp_path)
    assert "## CIFAR-10: ours" not in text
    ours = _section(text, "## CIFAR-10 re-encoded as JPEG (cifar10_jpeg), not the original "
                          "CIFAR-10: ours")
    assert "CIFAR-10" not in ours.replace("CIFAR-10 re-encoded as JPEG", "").replace(
        "not the original CIFAR-10", "")
    # A published row it covers says where it ran, and that this is not CIFAR-10.
    vcnn = _section(text, "## Published: Variational Convolutional")
    assert _row(vcnn, "ResNet-20 Pruned")[-1] == (
        "run here on cifar10_jpeg (2 runs; not the original CIFAR-10)")
    # The same runs on the original CIFAR-10 get its title.
    _cifar_run(tmp_path, 0, dataset="cifar10")
    text = _render(tmp_path)
    assert "## CIFAR-10: ours" in text
    assert _row(text, "ResNet-20 Pruned", "## Published: Variational")[-1] == (
        "run here on cifar10 (1 run), cifar10_jpeg (2 runs; not the original CIFAR-10)")


def test_published_rows_come_from_the_yaml_files(tmp_path):
    _cifar_run(tmp_path)
    text = _render(tmp_path)
    published = tables.REPO_ROOT / "experiments" / "published"
    vcnn = yaml.safe_load((published / "zhao2019_vcnn.yaml").read_text())
    table1 = vcnn["tables"][0]
    row = next(r for r in table1["rows"] if r["network"] == "ResNet-56" and r["label"] == "Pruned")
    cells = _row(text, "ResNet-56 Pruned", "## Published: Variational")
    assert [float(c) for c in cells[1:-1]] == [row[c["key"]] for c in table1["columns"]]
    # Numbers keep their printed digits (a trailing zero, e.g. 39.10, is not dropped).
    raw = (published / "zhao2019_vcnn.yaml").read_text()
    trailing_zero = re.search(r"flops_pruned_percent: (\d+\.\d*0)\b", raw).group(1)
    assert f"| {trailing_zero} |" in text
    dirichlet = yaml.safe_load((published / "adamczewski2021_dirichlet.yaml").read_text())
    vgg = next(t for t in dirichlet["tables"] if t["network"] == "VGG-16")
    ours = vgg["rows"][0]
    cells = _row(text, ours["label"], "## Published: Dirichlet")
    assert cells[1:4] == [str(ours["error_percent"]), str(ours["flops_m"]), str(ours["params_m"])]
    # Its MNIST table is not a CIFAR table.
    mnist = next(t for t in dirichlet["tables"] if t["dataset"] == "MNIST")
    assert f"| {mnist['rows'][0]['label']} |" not in text
    slimming = yaml.safe_load((published / "liu2017_slimming.yaml").read_text())
    readme = slimming["tables"][0]["rows"][0]
    cells = _row(text, readme["network"], "## Published: Learning Efficient")
    assert float(cells[3]) == readme["accuracy_baseline_percent"]
    assert float(cells[7]) == readme["params_baseline_m"]
    # Unverified rows carry a dagger and the footnote; verified ones none.
    unverified = [r for t in slimming["tables"] for r in t["rows"] if r["verified"] is False]
    assert unverified
    for r in unverified:
        assert f"| {r['network']} {r['label']}† |" in text
    assert "†: recalled from the paper, not read from a printed table: unverified" in text
    assert "| ResNet-56 Pruned |" in text and "| ResNet-56 Pruned† |" not in text
    # Louizos et al.'s VGG rows from louizos2017.yaml, each table under its full citation.
    ghs = yaml.safe_load(tables.PUBLISHED.read_text())["models"]["vgg"]["methods"]["BC-GHS"]
    cells = _row(text, "VGG (8.4 %)", "| VGG (8.4 %) | BC-GHS")
    assert cells[2] == "-".join(map(str, ghs["pruned_architecture"]))
    best = ghs["max_compression"]
    assert cells[7] == f"{best['value']} ({best['error_percent']})"
    for paper in (vcnn, dirichlet, slimming):
        cite = paper["citation"]
        line = f"{', '.join(cite['authors'])} ({cite['year']}), *{cite['title']}*"
        assert text.count(line) == len([t for t in paper["tables"] if t["dataset"] != "MNIST"])
    assert "(the original CIFAR-10, not cifar10_jpeg)" in text


def test_settings_no_run_covers_say_not_run_here_and_what_they_need(tmp_path):
    _cifar_run(tmp_path)  # ResNet-20 VCNN on cifar10_jpeg covers one row of VCNN's Table 1
    text = _render(tmp_path)
    vcnn = _section(text, "## Published: Variational")
    assert _row(vcnn, "VGG-16 Pruned")[-1].startswith(
        "not run here: VGG-16 VCNN on cifar10 or cifar10_jpeg, 160 epochs: needs a GPU")
    assert _row(vcnn, "ResNet-20 Base")[-1].startswith("not run here: ResNet-20 dense")
    assert _row(vcnn, "DenseNet-40 Pruned")[-1] == "not run here: bayescomp has no DenseNet-40"
    # CIFAR-10 runs do not cover CIFAR-100 rows.
    _cifar_run(tmp_path, model="vgg16", experiment="vgg16_vcnn", dataset="cifar10")
    vcnn = _section(_render(tmp_path), "## Published: Variational")
    assert _row(vcnn, "VGG-16 Pruned")[-1] == "run here on cifar10 (1 run)"
    table2 = vcnn[vcnn.index("Table 2: CIFAR-100"):]
    assert _row(table2, "VGG-16 Pruned")[-1].startswith("not run here: VGG-16 VCNN on cifar100,")
    # Dirichlet pruning needs a dense run to prune; other papers' methods are not ours.
    dirichlet = _section(text, "## Published: Dirichlet")
    assert "prunes a finished dense run" in _row(dirichlet, "Dirichlet (ours)")[-1]
    assert _row(dirichlet, "Hrank [25]")[-1] == "– (method not in bayescomp)"


def test_a_lenet_only_scan_of_the_repository_is_unchanged():
    """The repository's LeNet tables, rendered again from its runs, are what results/lenet.md
    holds but for the date and the figures (drawn by table_plots; PNGs not compared here)."""
    reference = (tables.REPO_ROOT / "results" / tables.TABLES_FILE).read_text()
    runs = tables.find_runs([tables.REPO_ROOT / "results"])
    lenet = [r for r in runs if r.get("model") in tables.MODEL_KEYS
             and not cifar_tables.is_cifar(r)]
    if f"from {len(lenet)} run(s)" not in reference:  # runs added since the tables were made
        pytest.skip("results/lenet.md predates some of the runs in results/")
    dirichlet = cifar_tables.load_published(cifar_tables.PUBLISHED_DIR
                                            / lenet5_structured.PAPER_FILE)
    text = tables.render(lenet, yaml.safe_load(tables.PUBLISHED.read_text()), ["results/"],
                         yaml.safe_load(tables.PUBLISHED_DC.read_text()), dirichlet)
    figures = _section(reference, "## Figures")

    def undated(markdown):
        return re.sub(r" on \d{4}-\d{2}-\d{2} from ", " on DATE from ", markdown)

    assert undated(text) == undated(reference.replace(figures + "\n", ""))


def test_vcnn_statistics_section_lists_both_errors_only_where_recorded(tmp_path):
    _cifar_run(tmp_path, seed=0, errors=(8.0, 9.0, None))  # written before the diagnostic
    assert "BatchNorm statistics as trained and re-estimated" not in _render(tmp_path)
    run_dir = _cifar_run(tmp_path, seed=1, errors=(8.5, 12.25, None))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["vcnn"].update(restat_examples=2000,
                           error_before_pruning_statistics_reestimated=8.125,
                           error_after_pruning_statistics_reestimated=10.5)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    section = _section(_render(tmp_path), "## VCNN: BatchNorm statistics")
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == 1 and "seed1" in rows[0]
    assert rows[0].endswith("| 1 | 2,000 | 8.50 / 8.12 | 12.25 / 10.50 |")


def _speed_record(run_dir, rows, **changes) -> None:
    record = {"benchmark": "benchmarks/inference_speed.py", "git_commit": "0123456789abcdef",
              "runtime": {"device_kind": "cpu"}, "rows": rows}
    record.update(changes)
    (run_dir / cifar_tables.SPEED_RECORD).write_text(json.dumps(record))


def test_a_recorded_export_speed_up_sits_beside_the_multiply_add_ratio(tmp_path):
    """benchmarks/inference_speed.py --record writes it beside model.bcz; the row shows each
    batch size's median (range) of the unpadded export, the device and the commit."""
    first = _cifar_run(tmp_path, 0)
    _cifar_run(tmp_path, 1)
    row = {"batch": 1000, "channel_multiple": 1, "speedup": 1.2149, "speedup_min": 0.78,
           "speedup_max": 2.1, "full_images_per_second": 3000.0,
           "exported_images_per_second": 3700.0, "max_rel_diff": 0.0}
    padded = dict(row, channel_multiple=8, speedup=9.0)
    _speed_record(first, [row, dict(row, batch=100, speedup=1.25, speedup_min=1.09,
                                    speedup_max=1.32), padded])
    cells = _row(_render(tmp_path), "ResNet-20")
    assert cells[7] == "40.55M → 30.00M (1.4×)"
    assert cells[11] == ("1.21× (0.78–2.10) at batch 1000; 1.25× (1.09–1.32) at batch 100 "
                         "(cpu, `0123456`) / –")  # seed 1 has none
    # A record that is not the benchmark's: one line naming the file and what to rerun.
    (first / cifar_tables.SPEED_RECORD).write_text("{not json")
    with pytest.raises(tables.ConfigError, match=r"inference_speed.json is not a benchmark "
                                                 r"record .*--record"):
        _render(tmp_path)
    _speed_record(first, [{"batch": 1000}])
    with pytest.raises(tables.ConfigError, match="not a benchmark record"):
        _render(tmp_path)
