"""LeNet-5 in Dirichlet pruning's Table 1 terms (:mod:`bayescomp.lenet5_structured`): the paper's
LeNet counted layer by layer, and the section ``results/lenet.md`` gains."""

from __future__ import annotations

import math

from bayescomp import cifar_tables, lenet5_structured, tables
from table_runs import write_lenet_run


def test_paper_lenet_parameters_counts_each_layer():
    # Written out layer by layer, independently of the closed form: 5x5 valid convs and 2x2
    # pools take 28 -> 24 -> 12 -> 8 -> 4, so fc1 reads 8·4·4 = 128 inputs.
    layers = [(1 * 5 * 5, 5), (5 * 5 * 5, 8), (8 * 4 * 4, 45), (45, 15), (15, 10)]
    want = sum(fan_in * out + out for fan_in, out in layers)
    assert lenet5_structured.paper_lenet_parameters((5, 8, 45, 15)) == want == 7793
    # The unpruned 10-20-100-25 network, the same way.
    layers = [(25, 10), (250, 20), (320, 100), (100, 25), (25, 10)]
    assert lenet5_structured.paper_lenet_parameters((10, 20, 100, 25)) == sum(
        f * o + o for f, o in layers)


def _lenet5_run(root, seed, macs, params):
    """A finished BC-GNJ LeNet-5 run's ``metrics.json`` with the given pruned counts."""
    counting = {"dense": {"macs": 2_293_000, "params": 431_080},
                "pruned": {"macs": macs, "params": params},
                "macs_ratio": 2_293_000 / macs, "nonzero_macs": macs,
                "nonzero_macs_ratio": 2_293_000 / macs}
    write_lenet_run(root, seed, experiment="lenet5_gnj", model="lenet5", method="bc_gnj",
                    architecture=[8, 40, 300, 150], layers=["conv1", "conv2", "fc1", "fc2"],
                    bits_per_layer=None, counting=counting)


def test_section_lists_our_lenet5_runs_beside_table_1(tmp_path):
    _lenet5_run(tmp_path / "a", 0, macs=800_000, params=60_000)
    _lenet5_run(tmp_path / "b", 1, macs=900_000, params=70_000)
    write_lenet_run(tmp_path / "c")  # a LeNet-300-100 run: not in this section
    runs = tables.find_runs([tmp_path])
    paper = cifar_tables.load_published(cifar_tables.PUBLISHED_DIR
                                        / lenet5_structured.PAPER_FILE)
    text = "\n".join(lenet5_structured.render(runs, paper))
    ours = [line for line in text.splitlines() if line.startswith("| Fashion-MNIST")]
    assert len(ours) == 1, text
    cells = [c.strip() for c in ours[0].strip("|").split("|")]
    assert cells[1:3] == ["BC-GNJ", "2"]
    # mean ± sample std of the two runs, in thousands
    assert cells[5] == f"850.0 ± {math.sqrt(2 * 50.0 ** 2):.1f}"
    assert cells[6] == f"65.0 ± {math.sqrt(2 * 5.0 ** 2):.1f}"
    table_1 = next(t for t in paper["tables"] if t["table"] == 1)
    for row in table_1["rows"]:
        assert f"| {row['label']} |" in text
    assert "5-8-45-15 network (Dirichlet (mean)) has 7,793 weights and biases" in text
    assert "5.5K in the table" in text  # the row's printed count, read from the file


def test_tables_cli_adds_the_section_only_with_lenet5_runs(tmp_path):
    write_lenet_run(tmp_path / "runs")
    out = tmp_path / "lenet.md"
    assert tables.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert "Table 1 terms" not in out.read_text()
    _lenet5_run(tmp_path / "runs5", 0, macs=800_000, params=60_000)
    assert tables.main([str(tmp_path / "runs5"), "--out", str(out)]) == 0
    assert "## LeNet-5: structured pruning in Dirichlet pruning's Table 1 terms" in out.read_text()
