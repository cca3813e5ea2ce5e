r"""LeNet-5 in the structured terms of Dirichlet pruning's Table 1: error, multiply-adds and
parameters of the pruned network, ours beside the published rows.

Adamczewski & Park ("Dirichlet Pruning for Convolutional Neural Networks", AISTATS 2021,
Table 1) compare structured pruning of LeNet-5 on MNIST by the test error and the FLOPs and
parameters of the pruned network. This section of ``results/lenet.md`` puts every LeNet-5 run of
ours (every method, structured or not) in the same three terms, from the run's ``counting``
(:mod:`bayescomp.counting`: multiply-adds of the conv and dense layers, parameters = weights and
biases of the network the export builds), beside that table.

Two things keep the comparison to differences, not absolute values. The paper's LeNet-5 is not
LeNet-5-Caffe (20-50-800-500, ours): its pruned architectures, e.g. 5-8-45-15, have four
prunable layers before a 10-way output (10-20-100-25 unpruned), on MNIST, while ours are on
Fashion-MNIST. And its parameter counts understate fc1's fan-in: :func:`paper_lenet_parameters`
counts the 5-8-45-15 network at 7,793 weights and biases, which Table 1's "Dirichlet (mean)"
row reports as 5.5K.
"""

from __future__ import annotations

from bayescomp import cifar_tables, tables

#: The published file of Dirichlet pruning's tables (``experiments/published/``).
PAPER_FILE = "adamczewski2021_dirichlet.yaml"
#: The paper's unpruned LeNet-5 (conv1, conv2, fc1, fc2; a 10-way output follows).
PAPER_UNPRUNED = (10, 20, 100, 25)
#: The pruned architecture whose size the note below recounts, and the Table 1 row it is
#: (the paper's "mean" switches).
PAPER_ARCHITECTURE = (5, 8, 45, 15)
PAPER_ARCHITECTURE_ROW = "Dirichlet (mean)"


def paper_lenet_parameters(widths, *, image: int = 28, kernel: int = 5, classes: int = 10) -> int:
    """Weights and biases of the paper's LeNet-5 with ``widths`` = (conv1, conv2, fc1, fc2).

    Two ``kernel``×``kernel`` valid convolutions, each followed by 2×2 max-pooling, on a
    one-channel ``image``², then two hidden dense layers and a ``classes``-way output:
    28 → 24 → 12 → 8 → 4, so fc1 reads conv2·4·4 inputs.

    .. math::

        P = (k^2 c_1 + c_1) + (k^2 c_1 c_2 + c_2) + (16 c_2 f_1 + f_1) + (f_1 f_2 + f_2)
            + (f_2 K + K).
    """
    conv1, conv2, fc1, fc2 = widths
    side = ((image - kernel + 1) // 2 - kernel + 1) // 2
    return ((kernel * kernel * conv1 + conv1) + (kernel * kernel * conv1 * conv2 + conv2)
            + (side * side * conv2 * fc1 + fc1) + (fc1 * fc2 + fc2) + (fc2 * classes + classes))


def _thousands(values) -> str:
    return tables._mean_std([None if v is None else v / 1e3 for v in values], ",.1f")


def render(runs: list[dict], paper: dict) -> list[str]:
    """The section's lines: our LeNet-5 runs by dataset and method, then the paper's Table 1.

    Args:
        runs: Runs as :func:`bayescomp.tables.find_runs` reads them (any models; the LeNet-5
            ones are shown).
        paper: ``adamczewski2021_dirichlet.yaml`` as :func:`bayescomp.cifar_tables.load_published`
            reads it.
    """
    lenet5 = [r for r in runs if r.get("model") == "lenet5"]
    order = cifar_tables.METHOD_ORDER
    table = next(t for t in paper["tables"] if t["table"] == 1)
    cite = paper["citation"]
    lines = ["## LeNet-5: structured pruning in Dirichlet pruning's Table 1 terms", "",
             "Test error of the pruned network, its multiply-adds per example and its parameters "
             "(weights and biases of the network the export builds: kept channels and units), "
             "from each run's `counting`. Ours: mean ± std over seeds.", ""]
    if lenet5:
        groups, labels, label_order = tables.group_runs(lenet5)
        keys = sorted(groups, key=lambda k: (
            k[0], order.index(k[2]) if k[2] in order else len(order), k[2],
            label_order.get(k, ())))
        lines += ["| Dataset | Method | n | Pruned architecture | Error (pruned) % | "
                  "Multiply-adds (K) | Parameters (K) |", "|---|---|---|---|---|---|---|"]
        for key in keys:
            rs = groups[key]
            counts = [tables.run_counting(r) for r in rs]
            pruned = [None if c is None else c["pruned"] for c in counts]
            lines.append(
                f"| {tables.DATASET_TITLES.get(key[0], key[0])} | "
                f"{cifar_tables.METHOD_TITLES.get(key[2], key[2])}{labels.get(key, '')} | {len(rs)} | "
                f"{tables._join_units([r.get('architecture') for r in rs])} | "
                f"{tables._mean_std([r.get('pruned_test_error') for r in rs], '.2f')} | "
                f"{_thousands([None if p is None else p['macs'] for p in pruned])} | "
                f"{_thousands([None if p is None else p['params'] for p in pruned])} |")
        lines.append("")
    else:
        lines += ["No LeNet-5 run found.", ""]
    recount = paper_lenet_parameters(PAPER_ARCHITECTURE)
    printed = next(r["params_k"] for r in table["rows"] if r["label"] == PAPER_ARCHITECTURE_ROW)
    lines += [f"Published: {', '.join(cite['authors'])} ({cite['year']}), *{cite['title'].strip()}*, "
              f"{' '.join(cite['venue'].split())}, Table 1, on {table['dataset']} "
              f"(as printed in {' '.join(cite['source'].split())}):", "",
              "| Method | " + " | ".join(c["header"] for c in table["columns"]) + " |",
              "|---" * (len(table["columns"]) + 1) + "|"]
    for row in table["rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(
            "–" if row.get(c["key"]) is None else str(row[c["key"]]) for c in table["columns"])
            + " |")
    lines += ["", f"Their LeNet-5 is {'-'.join(map(str, PAPER_UNPRUNED))} with a 10-way output, "
              f"on {table['dataset']}, not LeNet-5-Caffe on Fashion-MNIST: compare the "
              f"reductions, not the counts. Their parameter counts understate fc1's fan-in: the "
              f"{'-'.join(map(str, PAPER_ARCHITECTURE))} network ({PAPER_ARCHITECTURE_ROW}) has "
              f"{recount:,} weights and biases "
              f"(`bayescomp.lenet5_structured.paper_lenet_parameters`), {printed}K in the table. "
              f"Notes on these numbers: `experiments/published/{paper['_file']}`.", ""]
    return lines
