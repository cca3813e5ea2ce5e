"""The CIFAR tables of ``python -m bayescomp.tables``: ``cifar.md``, ours beside the published
channel-pruning numbers.

Runs on ``cifar10``, ``cifar100`` or ``cifar10_jpeg`` (CIFAR-10 re-encoded as JPEG, never called
CIFAR-10 here) are grouped as the LeNet tables group theirs (:func:`bayescomp.tables.group_runs`:
dataset, model, method, recipe; seeds averaged) and shown per dataset: test errors trained /
pruned / fine-tuned, the share of the prunable channels removed, parameters and multiply-adds
dense → pruned (the run's ``counting``, :mod:`bayescomp.counting`), the ``.bcz`` file and the
training time. Then the published rows, each table under its full citation, from
``experiments/published/``:

* Zhao et al., "Variational Convolutional Neural Network Pruning", CVPR 2019, Tables 1 and 2
  (``zhao2019_vcnn.yaml``);
* Adamczewski & Park, "Dirichlet Pruning for Convolutional Neural Networks", AISTATS 2021,
  arXiv:2011.05985, Tables 2 to 4 (``adamczewski2021_dirichlet.yaml``; its Table 1 is MNIST);
* Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017,
  arXiv:1708.06519: the results of the authors' PyTorch code and the paper's Table 1 VGG row
  (``liu2017_slimming.yaml``);
* Louizos, Ullrich & Welling, "Bayesian Compression for Deep Learning", NIPS 2017,
  arXiv:1705.08665, the VGG rows of Tables 1 and 2 (``louizos2017.yaml``, the LeNet tables'
  file).

A published row for a network and method that no run of ours covers (on a dataset of the
paper's) says "not run here" and what a run of it needs. The papers report on the original
CIFAR-10 and CIFAR-100, and count parameters and FLOPs each their own way (the files' notes).
"""

from __future__ import annotations

import collections
import datetime
import json
import pathlib

import yaml

from bayescomp import tables
from bayescomp.errors import ConfigError

#: Datasets whose runs go into ``cifar.md``, in the order of its sections.
CIFAR_DATASETS = ("cifar10", "cifar10_jpeg", "cifar100")

#: Section titles. cifar10_jpeg is harder than CIFAR-10 (about a point of accuracy), so its
#: title says plainly what it is.
DATASET_TITLES = {
    "cifar10": "CIFAR-10",
    "cifar10_jpeg": "CIFAR-10 re-encoded as JPEG (cifar10_jpeg), not the original CIFAR-10",
    "cifar100": "CIFAR-100",
}

#: A paper's dataset → our datasets whose runs cover its rows.
PAPER_DATASETS = {"CIFAR-10": ("cifar10", "cifar10_jpeg"), "CIFAR-100": ("cifar100",)}

PUBLISHED_DIR = tables.REPO_ROOT / "experiments" / "published"

#: The published channel-pruning tables, in the order cifar.md shows them.
PUBLISHED_FILES = ("zhao2019_vcnn.yaml", "adamczewski2021_dirichlet.yaml", "liu2017_slimming.yaml")

MODEL_TITLES = {"vgg16": "VGG-16", "vgg19": "VGG-19", "vgg_like": "VGG-like", "resnet8": "ResNet-8",
                "resnet20": "ResNet-20", "resnet56": "ResNet-56", "resnet110": "ResNet-110",
                "resnet164": "ResNet-164", **tables.MODEL_TITLES}
METHOD_TITLES = tables.METHOD_TITLES
#: The channel methods first: they are what the CIFAR tables are about.
METHOD_ORDER = ["dense", "slimming", "vcnn", "dirichlet", "dc", "sws", "svd", "bc_gnj", "bc_ghs"]

#: Epochs of our recipe for a network (what a run of a paper's setting takes): the dense
#: experiments' (conf/experiment/vgg16_dense.yaml, vgg19_dense.yaml; resnet20_dense.yaml and
#: resnet56_dense.yaml, He et al. 2016's 164), He et al.'s 164 for ResNet-110 and network
#: slimming's 160 for ResNet-164 (Liu et al. 2017). None: no recipe of ours yet.
RECIPE_EPOCHS = {"vgg16": 160, "vgg19": 160, "resnet20": 164, "resnet56": 164, "resnet110": 164,
                 "resnet164": 160, "vgg_like": None}

#: Experiment names abbreviate some methods (lenet300_gnj runs bc_gnj).
EXPERIMENT_SUFFIX = {"bc_gnj": "gnj", "bc_ghs": "ghs"}

#: Louizos et al.'s method names → ours; their VGG is our vgg_like.
LOUIZOS_METHODS = {"BC-GNJ": "bc_gnj", "BC-GHS": "bc_ghs"}
LOUIZOS_MODEL = "vgg_like"


def is_cifar(run: dict) -> bool:
    """Whether ``run`` goes into ``cifar.md`` (its dataset is one of :data:`CIFAR_DATASETS`)."""
    return run.get("dataset") in CIFAR_DATASETS


class Printed(float):
    """A published number that prints as the paper printed it (``39.10``, not ``39.1``)."""

    def __new__(cls, value: float, text: str):
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __str__(self) -> str:
        return self.text


class _PrintedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose floats are :class:`Printed`."""


def _printed_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Printed:
    """A YAML float with the text it was written as."""
    return Printed(loader.construct_yaml_float(node), node.value)


_PrintedLoader.add_constructor("tag:yaml.org,2002:float", _printed_float)


def load_published(path: pathlib.Path) -> dict:
    """A published-numbers file, its floats keeping their printed digits (:class:`Printed`).

    Raises:
        ConfigError: The file is missing.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"published numbers not found at {path}")
    paper = yaml.load(path.read_text(encoding="utf-8"), Loader=_PrintedLoader)
    paper["_file"] = path.name
    return paper


def published_papers() -> list[dict]:
    """The channel-pruning papers' tables (:data:`PUBLISHED_FILES`), in order."""
    return [load_published(PUBLISHED_DIR / name) for name in PUBLISHED_FILES]


# --------------------------------------------------------------------------------------------
# Our rows


def _errors(run: dict) -> tuple:
    """Test errors (%) trained / pruned / fine-tuned; ``None`` where the run has none.

    A channel method's own block (``vcnn``, ``slimming``, ``dirichlet`` in ``metrics.json``)
    has them: trained is the network before pruning (for Dirichlet pruning the pretrained dense
    one, its ``test_error``), fine-tuned that of the fine-tuning or retraining phase. A dense
    run prunes nothing; any other run has its ``test_error`` and ``pruned_test_error``.
    """
    block = run.get(run["method"])
    if not isinstance(block, dict):
        pruned = None if run["method"] == "dense" else run.get("pruned_test_error")
        return run.get("test_error"), pruned, None
    finetuned = block.get("error_after_finetuning", block.get("error_after_retraining"))
    return (block.get("error_before_pruning", run.get("test_error")),
            block.get("error_after_pruning"), finetuned)


def _removed_percent(run: dict) -> float | None:
    """Share (%) of the prunable channels the run removed, from its method's block:
    ``pruned_fraction`` (VCNN, slimming), or Dirichlet pruning's kept widths out of its
    switches' channels."""
    block = run.get(run["method"])
    if not isinstance(block, dict):
        return None
    if block.get("pruned_fraction") is not None:
        return 100.0 * block["pruned_fraction"]
    switches, kept = block.get("switch_means"), block.get("kept_widths")
    if switches and kept:
        total = sum(len(values) for values in switches.values())
        return 100.0 * (total - sum(kept.values())) / total
    return None


def _scale(value: float) -> tuple[float, str, str]:
    """Divisor, suffix and format for counts of the size of ``value`` (0.27M, 2.6K, 512)."""
    if value >= 1e5:
        return 1e6, "M", ".2f"
    if value >= 1e3:
        return 1e3, "K", ".1f"
    return 1.0, "", ".0f"


def _count_cell(counts: list, key: str, ratio: str) -> str:
    """``dense → pruned (× fewer)`` of ``counting[dense|pruned][key]``, pruned as mean ± std
    over seeds; ``–`` where a run has no count."""
    if not counts or any(c is None or key not in (c.get("dense") or {}) for c in counts):
        return "–"
    dense = sorted({c["dense"][key] for c in counts})
    divisor, unit, fmt = _scale(max(dense))
    pruned = tables._mean_std([c["pruned"][key] / divisor for c in counts], fmt)
    return (f"{' / '.join(format(d / divisor, fmt) for d in dense)}{unit} → {pruned}{unit} "
            f"({tables._mean_std([c.get(ratio) for c in counts], '.1f')}×)")


def _nonzero_cell(counts: list) -> str:
    """Multiply-adds of the kept weights (``nonzero_macs``) and dense / them; ``–`` where a run
    lacks them."""
    if not counts or any(c is None or "nonzero_macs" not in c for c in counts):
        return "–"
    divisor, unit, fmt = _scale(max(c["dense"]["macs"] for c in counts))
    return (f"{tables._mean_std([c['nonzero_macs'] / divisor for c in counts], fmt)}{unit} "
            f"({tables._mean_std([c.get('nonzero_macs_ratio') for c in counts], '.1f')}×)")


#: The header of our rows' table.
OUR_HEADER = (
    "| Network | Method | n | Epochs | Test error %: trained / pruned / fine-tuned | Prunable "
    "channels removed % | Parameters: dense → pruned (× fewer) | Multiply-adds, structural: "
    "dense → pruned (× fewer) | Multiply-adds, nonzero weights (× fewer) | `.bcz` file bytes | "
    "Error of the decoded file % | Exported network, CPU speed-up over the full-size one | "
    "s / epoch (as trained) | Training time, min (as trained) |")

#: Written beside a run's ``model.bcz`` by ``benchmarks/inference_speed.py --record``.
SPEED_RECORD = "inference_speed.json"


def _speedup(run: dict) -> str | None:
    """The run's recorded export speed-up (:data:`SPEED_RECORD`, no channel padding), e.g.
    ``1.21× (0.78–2.10) at batch 1000``, each batch size; ``None`` where nothing was recorded.

    Raises:
        ConfigError: a record that is not the benchmark's JSON (one line saying what to do).
    """
    path = pathlib.Path(run["_path"]) / SPEED_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        rows = [r for r in record["rows"] if r["channel_multiple"] == 1]
        cells = [f"{float(r['speedup']):.2f}× ({float(r['speedup_min']):.2f}–"
                 f"{float(r['speedup_max']):.2f}) at batch {int(r['batch'])}" for r in rows]
        device = record["runtime"]["device_kind"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        model = pathlib.Path(run["_path"]) / "model.bcz"
        raise ConfigError(f"{path} is not a benchmark record ({error!r}); rerun python "
                          f"benchmarks/inference_speed.py {model} --channel-multiple 1 "
                          "--record") from None
    if not cells:
        return None
    return f"{'; '.join(cells)} ({device}, `{str(record.get('git_commit', '?'))[:7]}`)"


def _speedup_cell(runs: list[dict]) -> str:
    cells = [_speedup(r) for r in runs]
    return " / ".join(c or "–" for c in cells) if any(cells) else "–"


def _our_rows(runs: list[dict]) -> list[str]:
    """Per CIFAR dataset of ``runs``: the table of our rows and the list of runs."""
    groups, labels, label_order = tables.group_runs(runs)
    models = list(MODEL_TITLES)
    lines = []
    for dataset in [d for d in CIFAR_DATASETS if any(k[0] == d for k in groups)]:
        keys = sorted((k for k in groups if k[0] == dataset), key=lambda k: (
            models.index(k[1]) if k[1] in models else len(models), k[1],
            METHOD_ORDER.index(k[2]) if k[2] in METHOD_ORDER else len(METHOD_ORDER), k[2],
            label_order.get(k, ())))
        lines += [f"## {DATASET_TITLES[dataset]}: ours", "", OUR_HEADER,
                  "|---" * OUR_HEADER.count(" | ") + "|---|"]
        for key in keys:
            rs = groups[key]
            errors = list(zip(*(_errors(r) for r in rs)))
            counts = [tables.run_counting(r) for r in rs]
            lines.append(
                f"| {MODEL_TITLES.get(key[1], key[1])} | "
                f"{METHOD_TITLES.get(key[2], key[2])}{labels.get(key, '')} | {len(rs)} | "
                f"{tables._mean_std([r.get('epochs') for r in rs], '.0f')} | "
                + " / ".join(tables._mean_std(e, ".2f") for e in errors) + " | "
                f"{tables._mean_std([_removed_percent(r) for r in rs], '.1f')} | "
                f"{_count_cell(counts, 'params', 'params_ratio')} | "
                f"{_count_cell(counts, 'macs', 'macs_ratio')} | {_nonzero_cell(counts)} | "
                f"{tables._mean_std([r.get('compressed_bytes') for r in rs], '.0f')} | "
                f"{tables._mean_std([r.get('compressed_test_error') for r in rs], '.2f')} | "
                f"{_speedup_cell(rs)} | "
                f"{tables._per_device(rs, 'seconds_per_epoch', '.2f')} | "
                f"{tables._per_device([tables._with_minutes(r) for r in rs], 'train_minutes', '.1f')}"
                " |")
        lines += ["", "Runs (directory, seed, git commit, device, input preprocessing):", ""]
        lines += [tables.run_line(r) for key in keys for r in groups[key]]
        lines.append("")
    return lines


def _restat_lines(runs: list[dict]) -> list[str]:
    """VCNN runs' errors with the trained BatchNorm statistics beside re-estimated ones.

    Saliencies are sampled in training, so the statistics every later BatchNorm collected
    describe noisier activations than the posterior-mean network's; ``metrics.json`` has both
    (:mod:`bayescomp.procedures.vcnn`, 4.). Empty where no run has them.
    """
    found = [r for r in runs if (r.get("vcnn") or {}).get("restat_examples")]
    if not found:
        return []
    lines = ["## VCNN: BatchNorm statistics as trained and re-estimated", "",
             "The paper's procedure keeps the statistics collected while the saliencies were "
             "sampled; re-estimating them on training images (nothing trained; "
             "`bayescomp/procedures/vcnn.py`) shows what that costs. Test errors in %.", "",
             "| Run | Seed | Training images | Before pruning: trained / re-estimated | "
             "After pruning: trained / re-estimated |", "|---|---|---|---|---|"]
    for run in found:
        block = run["vcnn"]

        def pair(key):
            values = (block.get(f"error_{key}"),
                      block.get(f"error_{key}_statistics_reestimated"))
            return " / ".join("–" if v is None else f"{v:.2f}" for v in values)

        lines.append(f"| `{run['_path']}` | {run.get('seed')} | {block['restat_examples']:,} | "
                     f"{pair('before_pruning')} | {pair('after_pruning')} |")
    return lines + [""]


# --------------------------------------------------------------------------------------------
# Published rows


def _experiments(model: str, method: str) -> list[str]:
    """Our experiment configs for ``model`` and ``method`` (``conf/experiment/<model>_<method>*``)."""
    suffix = EXPERIMENT_SUFFIX.get(method, method)
    return sorted(p.stem for p in (tables.REPO_ROOT / "conf" / "experiment").glob(
        f"{model}_{suffix}*.yaml"))


def _ours(runs: list[dict], network: str, model: str | None, method: str | None,
          dataset: str) -> str:
    """The "Ours" cell of a published row: which of our runs cover its network, method and
    dataset, or "not run here" and what a run of it needs."""
    if method is None:
        return "– (method not in bayescomp)"
    if model is None:
        return f"not run here: bayescomp has no {network}"
    datasets = PAPER_DATASETS[dataset]
    found = collections.Counter(r["dataset"] for r in runs if r["model"] == model
                                and r["method"] == method and r["dataset"] in datasets)
    if found:
        return "run here on " + ", ".join(
            f"{d} ({found[d]} run{'s' if found[d] > 1 else ''}"
            + ("; not the original CIFAR-10)" if d == "cifar10_jpeg" else ")")
            for d in datasets if d in found)
    epochs = RECIPE_EPOCHS.get(model)
    method_title = "dense" if method == "dense" else METHOD_TITLES.get(method, method)
    needs = (f"{MODEL_TITLES.get(model, model)} {method_title} on "
             f"{' or '.join(datasets)}{f', {epochs} epochs' if epochs else ''}: needs a GPU")
    names = _experiments(model, method)
    needs += (f"; experiment {', '.join(f'`{n}`' for n in names)}" if names else
              f"; no `{model}_{EXPERIMENT_SUFFIX.get(method, method)}` experiment yet")
    if method == "dirichlet":
        needs += "; prunes a finished dense run (`method.pretrained_run`)"
    elif model == LOUIZOS_MODEL and method in LOUIZOS_METHODS.values():
        needs += (f"; starts from a finished `{model}_dense` run (`method.start_from`), as the "
                  "paper does")
    return f"not run here: {needs}"


def _citation(cite: dict) -> str:
    """Authors (year), *title*, venue, arXiv id: the line above each published table."""
    arxiv = f"arXiv:{cite['arxiv']}" if cite.get("arxiv") else "no arXiv version"
    return (f"{', '.join(cite['authors'])} ({cite['year']}), *{cite['title'].strip()}*, "
            f"{' '.join(cite['venue'].split())}, {arxiv}")


def _short(cite: dict) -> str:
    """``Zhao et al. 2019``, ``Adamczewski & Park 2021``."""
    surnames = [name.split()[-1] for name in cite["authors"]]
    who = " & ".join(surnames) if len(surnames) == 2 else f"{surnames[0]} et al."
    return f"{who} {cite['year']}"


def _cell(value) -> str:
    """A published cell as printed; ``–`` for the paper's "-" (null)."""
    return "–" if value is None else str(value)


def _paper_tables(paper: dict, runs: list[dict]) -> list[str]:
    """A paper's CIFAR tables, each under its citation and caption, with an "Ours" cell per row
    and a dagger on the rows its file marks ``verified: false``."""
    cite = paper["citation"]
    lines = [f"## Published: {cite['title'].strip()} ({_short(cite)})", ""]
    for table in paper["tables"]:
        dataset = table["dataset"]
        if dataset not in PAPER_DATASETS:  # Dirichlet pruning's LeNet-5 table: MNIST
            continue
        name = f"Table {table['table']}" if isinstance(table["table"], int) else table["table"]
        network = table.get("network")
        original = (f"the original {dataset}, not cifar10_jpeg" if dataset == "CIFAR-10"
                    else f"the original {dataset}")
        columns = table["columns"]
        by_network = any("network" in row for row in table["rows"])
        source = table.get("source") or cite.get("source")
        source = f", from {' '.join(source.split())}" if source else ""
        on = f"{network} on " if network else ""
        lines += [f"### {_short(cite)}, {name}: {on}{dataset} ({original})", "",
                  f"{_citation(cite)}; {name}{source}.", "",
                  f"> {' '.join(table['caption'].split())}", "",
                  f"| {'Network' if by_network else 'Method'} | "
                  + " | ".join(c["header"] for c in columns) + " | Ours |",
                  "|---" * (len(columns) + 2) + "|"]
        unverified = False
        for row in table["rows"]:
            label = " ".join(str(row[k]) for k in ("network", "label") if row.get(k))
            if row.get("verified") is False:
                label, unverified = label + "†", True
            ours = _ours(runs, row.get("network") or network,
                         row["model"] if "model" in row else table.get("model"),
                         row.get("method"), dataset)
            lines.append(f"| {label} | " + " | ".join(_cell(row.get(c["key"])) for c in columns)
                         + f" | {ours} |")
        lines.append("")
        if unverified:
            lines += [("†: recalled from the paper, not read from a printed table: unverified "
                       "(see the notes at the top of "
                       f"`experiments/published/{paper['_file']}`)."), ""]
    lines += [("Where these numbers come from, and where they disagree with other papers: the "
               f"notes at the top of `experiments/published/{paper['_file']}`."), ""]
    return lines


def _louizos_vgg(louizos: dict, runs: list[dict]) -> list[str]:
    """Louizos et al.'s VGG rows (Tables 1 and 2), with an "Ours" cell per method."""
    vgg = louizos.get("models", {}).get("vgg")
    if not vgg:
        return []
    cite = louizos["citation"]
    dataset = vgg.get("dataset", "CIFAR-10")
    lines = [f"## Published: {cite['title']} ({_short(cite)}), VGG rows", "",
             (f"{_citation(cite)}; Tables 1 and 2, the VGG rows: {vgg['name']} (our "
              f"`{LOUIZOS_MODEL}`) on the original {dataset}, not cifar10_jpeg; as printed in "
              f"{' '.join(cite['source']['slides'].split())}."), "",
             ("| Network | Method | Pruned architecture | Bits per layer | \\|W≠0\\|/\\|W\\| % | "
              "Pruning (error %) | Fast Prediction (error %) | Maximum Compression (error %) | "
              "Ours |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for method, row in vgg["methods"].items():
        arch, bits = (("-".join(map(str, row[k])) if row.get(k) else "–")
                      for k in ("pruned_architecture", "bit_precision"))
        ours = _ours(runs, vgg["name"], LOUIZOS_MODEL, LOUIZOS_METHODS.get(method), dataset)
        lines.append(
            f"| {vgg['name']} ({vgg['original_error_percent']} %) | {method} | {arch} | {bits} | "
            f"{_cell(row.get('percent_kept'))} | {tables._published_ratio(row.get('pruning'))} | "
            f"{tables._published_ratio(row.get('fast_prediction'))} | "
            f"{tables._published_ratio(row.get('max_compression'))} | {ours} |")
    lines += ["", ("–: no cell in the slides (BC-GNJ's Maximum Compression is missing there); "
                   "see the notes at the top of `experiments/published/louizos2017.yaml`."), ""]
    return lines


# --------------------------------------------------------------------------------------------
# The document


def render(runs: list[dict], papers: list[dict], louizos: dict | None,
           sources: list[str]) -> str:
    """The markdown of ``cifar.md``: our CIFAR ``runs`` beside the published rows.

    Args:
        runs: Runs on :data:`CIFAR_DATASETS` (:func:`bayescomp.tables.find_runs`).
        papers: The channel-pruning papers' tables (:func:`published_papers`).
        louizos: Louizos et al. 2017's tables (``louizos2017.yaml``), for its VGG rows; ``None``
            leaves them out.
        sources: The scanned paths, as given on the command line.

    Raises:
        ConfigError: A run is not on a CIFAR dataset, or one seed appears twice in a recipe.
    """
    other = sorted({r["dataset"] for r in runs if not is_cifar(r)})
    if other:
        raise ConfigError(f"cifar.md shows runs on {', '.join(CIFAR_DATASETS)}, not on "
                          f"{', '.join(other)}")
    lines = [
        "# CIFAR results: channel pruning, ours beside the published numbers",
        "",
        (f"Generated by `python -m bayescomp.tables {' '.join(sources)}` on "
         f"{datetime.date.today().isoformat()} from {len(runs)} run(s); do not edit by hand."),
        "Our rows: mean ± std over seeds (n = number of seeds), one section per dataset.",
        "`cifar10_jpeg` is CIFAR-10 re-encoded as JPEG (quality 75): not CIFAR-10, and about a",
        "point of accuracy harder, so its rows compare with the papers' CIFAR-10 numbers by",
        "differences (dense → pruned), not by absolute errors. Test errors in %: *trained* (the",
        "network before pruning; for Dirichlet pruning, the pretrained dense network it prunes),",
        "*pruned* (channels removed, no retraining) and *fine-tuned* (after the run's fine-tuning",
        "or retraining phase, where it has one). *Prunable channels removed*: the share of the",
        "channels the method may remove (`method.prune.groups`, see",
        "`bayescomp/procedures/channel_pruning.py`) that it removed. Parameters and multiply-adds",
        "per example from each run's `counting` (`bayescomp/counting.py`): *structural* counts the",
        "network export builds (kept channels), *nonzero* the kept weights times their output",
        "positions; × fewer = dense / pruned. *`.bcz` file bytes*: the file written by",
        "`python -m bayescomp.compress`, whose decoded network gives the next column. *Exported",
        "network, CPU speed-up*: images per second of the physically smaller network the export",
        "builds over the full-size one, both from the `.bcz` file, median over alternated rounds",
        "(range), as `benchmarks/inference_speed.py --record` measured it (device and commit",
        "named; `benchmarks/README.md` has the conditions), beside the multiply-add ratio.",
        "*Epochs*:",
        "all phases. *s / epoch* and *training time* as in `lenet.md` (the run's own, per device",
        "where seeds ran on different ones). Seeds are averaged only when their configs agree",
        "(`bayescomp/tables.py`); other recipes of a method get their own labelled row. `–`: the",
        "runs do not record it.",
        "",
        "Published rows: as printed in each paper, on the original CIFAR-10 or CIFAR-100; most",
        "print accuracy (%), ours error (error = 100 − accuracy). Their parameter and FLOP counts",
        "follow each paper's convention (VCNN's 14.71M for VGG-16 are its convolution kernels",
        "alone; `bayescomp/counting.py` lists which count gives which paper's number). *Ours* says",
        "which of our runs cover a row, or \"not run here\" and what a run of it needs.",
        "",
    ]
    lines += _our_rows(runs)
    lines += _restat_lines(runs)
    for paper in papers:
        lines += _paper_tables(paper, runs)
    if louizos:
        lines += _louizos_vgg(louizos, runs)
    from bayescomp import ranking_control  # late: it builds on the runners' modules

    lines += ranking_control.section(runs)
    return "\n".join(lines)
