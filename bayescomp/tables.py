"""Results tables: ``python -m bayescomp.tables [RUN_DIRS...] [--out PATH]``.

Collects every ``metrics.json`` under the given directories (default ``results/``), groups runs by
dataset, model and method, and writes the two tables of Louizos, Ullrich & Welling (2017), NIPS
2017, arXiv:1705.08665 (Tables 2 and 1): pruned architecture with bits per layer, and compression
rates with the error each was measured at. Our rows give mean ± std over seeds; the published MNIST
rows are read from ``experiments/published/louizos2017.yaml`` (with its citation), never typed in
here, and Deep Compression's own LeNet rows (Han et al. 2016) from
``experiments/published/han2016_dc.yaml``.

Runs are only averaged when they ran the same recipe: the resolved configs in their
``metrics.json`` agree on every key but the seed and those in :data:`WHERE_NOT_WHAT` (where data
and pretrained runs live, how progress is shown). Runs of one method that differ elsewhere (a
``method.prior.tau0=1e-3`` override, say) get rows of their own, labelled with the differing
values. Directories named ``studies`` (sensitivity studies, sweeps) are skipped when a parent
is scanned; name them directly for their own table::

    python -m bayescomp.tables results/fashion_mnist/lenet5_ghs_published \
        results/studies/fashion_mnist/lenet5_ghs_tau0 --out results/studies/lenet5_ghs_tau0.md

The tables go into the scanned tree (:func:`default_out`): ``python -m bayescomp.tables
results/`` writes ``results/lenet.md``, ``python -m bayescomp.tables runs/x`` writes
``runs/x/lenet.md`` and never the repository's own tables. Several trees need ``--out``.

Runs on a CIFAR dataset (``cifar10``, ``cifar100``, ``cifar10_jpeg``) go into ``cifar.md`` instead,
beside the published channel-pruning numbers (:mod:`bayescomp.cifar_tables`); a scan without them
writes no ``cifar.md``. ``--out`` names the file of the one kind a scan found; where it found both,
it names the LeNet file and ``cifar.md`` goes into the same directory (:func:`out_paths`).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import pathlib
import sys

import numpy as np
import yaml

from bayescomp import atomic, models, objectives, runs
from bayescomp.data import augment as augment_lib
from bayescomp.errors import BayescompError, ConfigError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PUBLISHED = REPO_ROOT / "experiments" / "published" / "louizos2017.yaml"
PUBLISHED_DC = REPO_ROOT / "experiments" / "published" / "han2016_dc.yaml"

#: Config keys that say where things are or how a run reports, not what it computes; runs
#: that differ only in these (and the seed) are seeds of one recipe.
WHERE_NOT_WHAT = frozenset({
    "seed", "data.dir", "data.tfds_data_dir", "data.download", "method.pretrained_run",
    "trainer.progress_bar", "trainer.tensorboard", "trainer.loop", "trainer.chunk_steps",
    "trainer.eval_batch_size", "trainer.devices",
})

#: Directories skipped when a parent is scanned (studies get tables of their own).
STUDIES_DIR = "studies"

#: Our registry names → the published tables' names.
MODEL_KEYS = {"lenet300": "lenet_300_100", "lenet5": "lenet_5_caffe"}
MODEL_TITLES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5-Caffe"}
METHOD_TITLES = {"dense": "Original (dense)", "svd": "Sparse VD", "bc_gnj": "BC-GNJ",
                 "bc_ghs": "BC-GHS", "dc": "DC", "sws": "SWS", "slimming": "Network slimming",
                 "vcnn": "VCNN", "dirichlet": "Dirichlet pruning"}
#: Row order of the LeNet tables: Louizos et al.'s Table 1 order, then the channel methods.
METHOD_ORDER = ["dense", "dc", "sws", "svd", "bc_gnj", "bc_ghs", "slimming", "vcnn", "dirichlet"]
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "synthetic": "synthetic",
                  "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def find_runs(paths: list[pathlib.Path], include_studies: bool = False) -> list[dict]:
    """Load every ``metrics.json`` below ``paths`` (a path may also be a metrics file itself).

    Runs under a ``studies/`` folder are skipped unless ``include_studies``. Each run gets
    ``_path``, its directory.
    """
    runs, seen = [], set()
    for path in paths:
        if not path.exists():
            raise ConfigError(f"no such run directory: {path}")
        files = [path] if path.is_file() else sorted(
            f for f in path.rglob("metrics.json")
            if include_studies or STUDIES_DIR not in f.relative_to(path).parts[:-1])
        for file in files:
            if file.resolve() in seen:  # reached through two of the given paths
                continue
            seen.add(file.resolve())
            try:
                metrics = json.loads(file.read_text())
            except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
                raise ConfigError(f"{file} is not valid JSON ({err}); rerun that experiment to "
                                  "rewrite it") from None
            check_run_metrics(metrics, file)
            metrics["_path"] = str(file.parent)
            runs.append(metrics)
    return runs


#: The entropy-coded network ``python -m bayescomp.compress`` writes into a run directory.
COMPRESSED_FILE = "model.bcz"

_COUNTED: dict = {}  # (path, mtime, size) of a model.bcz → its counting: decoded once per process


def run_counting(run: dict) -> dict | None:
    """A run's ``counting`` (:func:`bayescomp.counting.summary`): from its ``metrics.json``, or,
    for runs written before ``metrics.json`` had it, computed from the run's ``model.bcz``
    (its model, widths, input shape and masks are all in the file).

    Returns:
        The entry, or ``None`` when the run has neither. A procedure's own ``counting``
        (channel methods) is kept, with ``nonzero_macs`` added from the file where it lacks it.

    Raises:
        CompressedFileError: the ``model.bcz`` cannot be decoded (one line naming it).
    """
    given = run.get("counting")
    if given and "nonzero_macs" in given:
        return given
    path = pathlib.Path(run["_path"]) / COMPRESSED_FILE
    if not path.is_file():
        return given
    from bayescomp import counting  # late: counting pulls in the model stack
    from bayescomp.compression import codec

    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _COUNTED:
        decoded = codec.decode_network(path.read_bytes(), source=str(path))
        _COUNTED[key] = counting.network_summary(decoded.model_name, decoded,
                                                 decoded.input_shape, decoded.num_classes)
    computed = _COUNTED[key]
    if not given:
        return computed
    return {**{k: v for k, v in computed.items() if k.startswith("nonzero_macs")}, **given}


#: Keys every run's ``metrics.json`` has (:func:`bayescomp.metrics.run_identity`); the tables
#: group runs by them.
IDENTITY_KEYS = ("model", "method", "dataset")


def check_run_metrics(metrics, file: pathlib.Path) -> None:
    """Refuse a ``metrics.json`` that is not a run's: not a JSON object, or without the keys
    that say which run it is.

    Raises:
        ConfigError: Naming the file, what it lacks, and what to do.
    """
    advice = ("rerun that run's command in its directory to rewrite it, or leave its directory "
              "out of the scanned paths")
    if not isinstance(metrics, dict):
        raise ConfigError(f"{file} holds a JSON {type(metrics).__name__}, not a run's metrics; "
                          f"{advice}")
    missing = [key for key in IDENTITY_KEYS if not isinstance(metrics.get(key), str)]
    if missing:
        raise ConfigError(f"{file} lacks {', '.join(missing)}, so it is not the metrics of a "
                          f"finished run; {advice}")


#: The name of the tables' file in the scanned tree (:func:`default_out`).
TABLES_FILE = "lenet.md"


def default_out(paths: list[str]) -> pathlib.Path:
    """Where the tables of ``paths`` go without ``--out``: into the one scanned tree.

    ``DIR/lenet.md`` for one directory, beside the file for one ``metrics.json``. A default
    outside the scanned tree (the repository's ``results/lenet.md`` whatever was scanned, as it
    once was) would overwrite tables that describe other runs.

    Raises:
        ConfigError: Several paths were given (no one tree to write into).
    """
    if len(paths) != 1:
        raise ConfigError(f"{len(paths)} paths given; name the file the tables go to with "
                          "--out PATH (without it they go into the one scanned directory)")
    path = pathlib.Path(paths[0])
    return (path.parent if path.is_file() else path) / TABLES_FILE


#: The name of the CIFAR tables' file (:mod:`bayescomp.cifar_tables`), beside :data:`TABLES_FILE`.
CIFAR_TABLES_FILE = "cifar.md"


def out_paths(paths: list[str], out: str | None, lenet: bool, cifar: bool
              ) -> tuple[pathlib.Path | None, pathlib.Path | None]:
    """Where the LeNet tables and the CIFAR tables of a scan go (``None``: that kind not found).

    Without ``--out``, ``lenet.md`` and ``cifar.md`` in the one scanned tree (:func:`default_out`).
    With ``--out``, the file of the one kind the scan found; where it found both, ``--out`` names
    the LeNet file, as it did before there were CIFAR tables (so the commands written for those
    still work), and the CIFAR tables go to ``cifar.md`` in the same directory.

    Raises:
        ConfigError: Several paths and no ``--out`` (:func:`default_out`), or both kinds found
            and ``--out`` itself names a ``cifar.md`` (both tables would go there).
    """
    if out is None:
        lenet_out = default_out(paths)
        cifar_out = lenet_out.with_name(CIFAR_TABLES_FILE)
    elif lenet and cifar:
        lenet_out = pathlib.Path(out)
        cifar_out = lenet_out.with_name(CIFAR_TABLES_FILE)
        if lenet_out.name == CIFAR_TABLES_FILE:
            raise ConfigError(f"the scan found LeNet and CIFAR runs, and --out {out} names where "
                              f"the CIFAR tables go beside the LeNet ones; name the LeNet file, "
                              f"e.g. --out {lenet_out.with_name(TABLES_FILE)}")
    else:
        lenet_out = cifar_out = pathlib.Path(out)
    return (lenet_out if lenet else None), (cifar_out if cifar else None)


def _flatten(config, prefix: str = "") -> dict:
    flat = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


#: Settings introduced after the first published runs, with the value at which a run trains as
#: those runs did (no weight decay, no warm-up; BatchNorm settings, which the LeNets do not use,
#: at their defaults). A run with one of these values has the recipe of a run without the key.
NEUTRAL_SETTINGS = {
    "optimizer.weight_decay": 0.0,
    "optimizer.warmup_epochs": 0,
    "trainer.batch_norm.momentum": 0.1,
    "trainer.batch_norm.epsilon": 1e-5,
    # The group horseshoe's options of issue 23, added with the published recipe's behaviour
    # as their values (results/studies/lenet5_ghs_cause.md: the old code path, bit for bit).
    "method.posterior_init.scale_init": "global",
    "method.posterior_init.prune_statistic": "z_dropout",
    "method.posterior_init.scale_lr_multiplier": 1.0,
    # VCNN's pruning statistic (bayescomp/procedures/vcnn.py), |mu| before it had the option.
    "method.prune.statistic": "mean",
}

#: Settings that never change what a finished run computed: a check that can only refuse to
#: write a run (a run that passes it is unchanged).
CHECKS_ONLY = ("method.prune.max_error_rise",)

#: Augmentation settings, which shape a run only where augmentation is on.
AUGMENT_DETAILS = ("data.augment_pad", "data.augment_padding", "data.augment_flip")


#: Procedures that never read ``trainer.kl_warmup``: Deep Compression, soft weight-sharing and
#: network slimming weigh no KL term, Dirichlet pruning anneals its switches' KL per epoch of its
#: own phase (``method.switches.anneal_epochs``). A dense run (the variational procedure with
#: point weights) has no KL term either.
IGNORE_KL_WARMUP = ("deep_compression", "soft_weight_sharing", "slimming", "dirichlet")


def recipe(run: dict) -> tuple:
    """The run's resolved config without the seed and :data:`WHERE_NOT_WHAT`, hashable.

    A run resumed with another ``trainer.epochs`` adds its ``planned_epochs`` (the run lengths
    its epochs were trained for), so it is never averaged with runs trained straight through.
    ``model.widths`` at the model's default widths is left out too (the key postdates the first
    runs, which used those widths), as are :data:`NEUTRAL_SETTINGS` at their neutral values.
    Keys set to ``null`` are left out: an option added after a run was made (``prune.select``,
    say) appears as ``null`` (off) in later configs and not at all in the older one, and both
    ran the same recipe.
    """
    flat = _flatten(run.get("config"))
    # model.widths was added after the first runs; at the model's default it is their recipe.
    model = flat.get("model.name")
    if model in models.REGISTRY and flat.get("model.widths") == models.default_widths(model):
        flat.pop("model.widths")
    # Settings added later, at the value that trains as the runs before them did.
    for key, neutral in NEUTRAL_SETTINGS.items():
        if key in flat and flat[key] == neutral:
            flat.pop(key)
    for key in CHECKS_ONLY:
        flat.pop(key, None)
    # Started from a dense run: each seed from its own, so the path is not the recipe (from
    # scratch, null, is left out below and stays another recipe).
    if flat.get("method.start_from") is not None:
        flat["method.start_from"] = "a dense run"
    # The KL warm-up in epochs, however written (epochs 5 and 20, or fractions 0.025 and 0.1 of
    # a 200-epoch run, are one recipe).
    for key in runs.WARMUP_KEYS:
        if key in flat and flat.get("trainer.epochs") is not None:
            flat[key] = objectives.warmup_epoch(flat[key], int(flat["trainer.epochs"]))
        if (flat.get("method.name") == "dense"
                or flat.get("method.procedure") in IGNORE_KL_WARMUP):
            flat.pop(key, None)  # weighs no KL term: not part of the recipe
    # Augmentation by what it resolved to (null is the dataset's default); its details matter
    # only where it is on.
    augmented = _augmented(flat)
    flat.pop("data.augment", None)
    if augmented:
        flat["data.augment"] = True
    else:
        for key in AUGMENT_DETAILS:
            flat.pop(key, None)
    if not flat.get("optimizer.weight_decay"):
        flat.pop("optimizer.decay", None)  # which types decay matters only when they decay
    if flat.get("method.budget.macs") is None:
        flat.pop("method.budget.allocate", None)  # how a budget is shared, only with a budget
    items = [(k, json.dumps(v, sort_keys=True)) for k, v in flat.items()
             if k not in WHERE_NOT_WHAT and v is not None]
    # A run resumed with another trainer.epochs followed another trajectory under a decaying
    # learning rate than one run straight through, though its final config is the same.
    if len(run.get("planned_epochs") or []) > 1:
        items.append(("planned_epochs", json.dumps(run["planned_epochs"])))
    return tuple(sorted(items))


def _augmented(flat: dict) -> bool:
    """Whether the run trained on augmented batches (``data.augment``, null: the dataset's
    default)."""
    return augment_lib.resolved_setting(flat.get("data.augment"), flat.get("data.name"))


def _recipe_labels(recipes: list[tuple]) -> list[tuple[str, tuple]]:
    """For recipes of one method: ``key=value, ...`` of the keys on which they differ, and a
    sort key that orders numbers by value (``1e-07`` before ``0.001``)."""
    dicts = [dict(r) for r in recipes]
    keys = sorted({k for d in dicts for k in d if len({e.get(k) for e in dicts}) > 1})

    def order(value):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (0, value, "") if is_number else (1, 0, str(value))

    labelled = []
    for d in dicts:
        # A setting left out at its neutral value (or predating it) ran as that value.
        values = [json.loads(d[k]) if k in d else NEUTRAL_SETTINGS.get(k) for k in keys]
        label = ", ".join(f"{k}={'–' if v is None else v}" for k, v in zip(keys, values))
        labelled.append((label, tuple(order(v) for v in values)))
    return labelled


def _device(run: dict) -> str:
    return run.get("device_kind") or run.get("jax_backend") or "cpu"


def _per_device(runs: list[dict], key: str, fmt: str) -> str:
    """Mean ± std of ``key`` per device kind (CPU and GPU epoch times do not average)."""
    devices = sorted({_device(r) for r in runs})
    if len(devices) == 1:
        return _mean_std([r.get(key) for r in runs], fmt)
    return " / ".join(
        f"{_mean_std([r.get(key) for r in runs if _device(r) == d], fmt)} ({d})"
        for d in devices)


def _with_minutes(run: dict) -> dict:
    seconds = run.get("train_seconds")
    return {**run, "train_minutes": None if seconds is None else seconds / 60}


def _mean_std(values, fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1 or all(v == values[0] for v in values):
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values, ddof=1)), fmt)}"


def _macs_cell(runs: list[dict], structural: bool) -> str:
    """Multiply-adds (thousands) of the pruned network, mean ± std over ``runs``, of the dense
    network's, and the ratio: ``pruned / dense (ratio×)``; ``–`` where a run has no count."""
    counts = [run_counting(r) for r in runs]
    if not counts or any(c is None for c in counts):
        return "–"
    if structural:
        pruned = [c["pruned"]["macs"] / 1e3 for c in counts]
        ratios = [c["macs_ratio"] for c in counts]
        dense = {c["dense"]["macs"] / 1e3 for c in counts}
        return (f"{_mean_std(pruned, ',.1f')}K / "
                f"{' / '.join(format(d, ',.1f') for d in sorted(dense))}K "
                f"({_mean_std(ratios, '.1f')}×)")
    return (f"{_mean_std([c['nonzero_macs'] / 1e3 for c in counts], ',.1f')}K "
            f"({_mean_std([c['nonzero_macs_ratio'] for c in counts], '.1f')}×)")


def _join_units(lists) -> str:
    """Per-layer integers written '8-13-88-13'; one per seed, separated by ' / ', where seeds
    differ (a mean architecture such as '666.5-133.5' describes no network)."""
    lists = [l for l in lists if l]
    if not lists:
        return "–"
    written = ["-".join(str(int(v)) for v in units) for units in lists]
    return written[0] if len(set(written)) == 1 else " / ".join(written)


def _published_ratio(cell) -> str:
    if not cell:
        return "–"
    star = "*" if cell.get("starred") else ""
    return f"{cell['value']}{star} ({cell['error_percent']})"


def _render_deep_compression(published_dc: dict) -> list[str]:
    """Deep Compression's own LeNet rows (Han et al. 2016) beside our ``dc`` rows."""
    cite = published_dc["citation"]

    def cell(value, fmt="{}"):
        if value is None:
            return "–"
        return "-".join(map(str, value)) if isinstance(value, list) else fmt.format(value)

    def field(row, key):
        # † marks a value recalled from Han et al.'s Tables 2 and 3 rather than read from
        # Ullrich's slides (the ``recalled`` list of han2016_dc.yaml).
        value = cell(row.get(key))
        return value + "†" if key in row.get("recalled", ()) and value != "–" else value

    lines = [f"## MNIST: published Deep Compression ({', '.join(cite['authors'])} "
             f"{cite['year']})", "",
             "| Network | Error % before → after | \\|W≠0\\|/\\|W\\| % | Kept per layer % | "
             "Weight bits (P+Q) | Index bits (P+Q) | Size P+Q (ratio) | Size P+Q+H (ratio) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in published_dc["models"].values():
        lines.append(
            f"| {row['name']} | {row['error_before_percent']:.2f} → "
            f"{row['error_after_percent']:.2f} | {cell(row.get('percent_kept'))} | "
            f"{field(row, 'percent_kept_per_layer')} | {field(row, 'weight_bits_pq')} | "
            f"{field(row, 'index_bits_pq')} | {field(row, 'size_percent_pq')} % "
            f"({field(row, 'ratio_pq')}×) | {field(row, 'size_percent_pqh')} % "
            f"({field(row, 'ratio_pqh')}×) |")
    lines += ["", f"{cite['title'].strip()}, {cite['venue']}, arXiv:{cite['arxiv']}; from "
              + "; ".join(s["cite"] for s in cite["sources"])
              + " (see the notes at the top of `experiments/published/han2016_dc.yaml`). Our "
              "DC rows above: the *pruned* error is after pruning and retraining, the "
              "*quantized* error after weight sharing and fine-tuning; their Pruning column is "
              "the unstructured |W| / (2|W≠0|), as the published DC row's. †: recalled from "
              "Han et al.'s Table 2 (LeNet-300-100) and Table 3 (LeNet-5), not re-read against "
              "the paper; not in Ullrich's slides, which give only the errors, the 8.0 % kept "
              "and the final ratio.", ""]
    return lines


def _identifiable(run: dict) -> bool:
    """Whether the code that produced ``run`` is a known commit (clean, and recorded)."""
    commits = [run.get("git_commit")] + [s.get("git_commit")
                                         for s in run.get("code_history") or []]
    return all(c and c != "unknown" and not str(c).endswith("-dirty") for c in commits)


def group_runs(runs: list[dict]) -> tuple[dict, dict, dict]:
    """The tables' rows: runs grouped by dataset, model, method and :func:`recipe`.

    Returns:
        ``(groups, labels, label_order)``: ``groups`` maps ``(dataset, model, method, recipe)``
        to its runs; where one method ran several recipes, ``labels`` gives each key's
        ``" (key=value, ...)"`` of the config values it differs in and ``label_order`` a sort key
        that orders them by value (:func:`_recipe_labels`).

    Raises:
        ConfigError: One seed appears in two runs of one recipe (a mean ± std over seeds counts
            each seed once).
    """
    groups: dict = collections.defaultdict(list)
    for run in runs:
        groups[(run["dataset"], run["model"], run["method"], recipe(run))].append(run)
    for group in groups.values():  # a mean ± std over seeds counts each seed once
        by_seed = collections.defaultdict(list)
        for run in group:
            by_seed[run.get("seed")].append(run["_path"])
        repeated = {seed: dirs for seed, dirs in by_seed.items() if len(dirs) > 1}
        if repeated:
            seed, dirs = next(iter(repeated.items()))
            raise ConfigError(
                f"seed {seed} of {group[0]['model']} {group[0]['method']} on "
                f"{group[0]['dataset']} appears in {len(dirs)} runs of the same recipe "
                f"({', '.join(map(str, dirs))}); pass only one of them")
    # Where one method ran several recipes, each row names the config values it differs in.
    labels: dict = {}
    label_order: dict = {}
    by_method = collections.defaultdict(list)
    for key in groups:
        by_method[key[:3]].append(key)
    for keys_of_method in by_method.values():
        if len(keys_of_method) > 1:
            for key, (label, order) in zip(keys_of_method,
                                           _recipe_labels([k[3] for k in keys_of_method])):
                labels[key], label_order[key] = f" ({label})", order
    return groups, labels, label_order


def run_line(run: dict) -> str:
    """The run's line in the tables' list of runs: directory, experiment, seed, commit, device
    and input preprocessing, the commits that trained it where others than the one that wrote
    its metrics, and a warning where its code is not identifiable."""
    preprocess = _flatten(run.get("config")).get("data.preprocess")
    line = (f"- `{display_path(run['_path'])}`: {run.get('experiment')}, seed "
            f"{run.get('seed')}, commit `{run.get('git_commit')}`, {_device(run)}"
            + (f", inputs `{preprocess}`" if preprocess else ""))
    segments = run.get("code_history") or []
    # A resumed run trained by several commits, or a finished run re-evaluated by a later one:
    # name the commits that trained it.
    if len(segments) > 1 or (segments and segments[0].get("git_commit")
                             != run.get("git_commit")):
        line += "; epochs trained by " + ", ".join(
            f"{a}–{b} `{s['git_commit']}`" for s in segments for a, b in [s["epochs"]])
    if not _identifiable(run):
        line += (" — **code not identifiable**: trained with uncommitted changes "
                 "(`-dirty`) or no recorded commit; rerun it from a clean checkout")
    return line


def render(runs: list[dict], published: dict, sources: list[str],
           published_dc: dict | None = None, dirichlet: dict | None = None) -> str:
    """The markdown document for ``runs`` beside the ``published`` rows.

    ``published_dc``: Deep Compression's own rows (``han2016_dc.yaml``), shown after
    Louizos et al.'s table when given. ``dirichlet``: Dirichlet pruning's tables
    (``adamczewski2021_dirichlet.yaml``); when given and ``runs`` hold LeNet-5 runs, the
    document ends with them in that paper's Table 1 terms (:mod:`bayescomp.lenet5_structured`).
    """
    groups, labels, label_order = group_runs(runs)
    cite = published["citation"]
    lines = [
        "# LeNet results: Bayesian compression, ours beside the published numbers",
        "",
        f"Generated by `python -m bayescomp.tables {' '.join(sources)}` on "
        f"{datetime.date.today().isoformat()} from {len(runs)} run(s); do not edit by hand.",
        "Our rows: mean ± std over seeds (n = number of seeds). Errors are test errors in %:",
        "*posterior mean* (no pruning), *pruned* (posterior mean, masks applied) and *quantized*",
        "(pruned, rounded to the bits per layer; the network the compression ratios describe).",
        "Pruning = |W| / weights of the pruned dense matrices; Fast Prediction = 32·|W| / Σ kept·"
        "(1 + E + bits); Maximum Compression = estimate of Deep Compression's sparse format with",
        "Huffman coding (see bayescomp/compression/report.py); *measured* = float32 bytes of all",
        "original weights / bytes of the real `.bcz` file written by `python -m bayescomp.compress`,",
        "whose decoded network gives the decoded-file error column. Where seeds prune to different",
        "architectures or bits, each seed's is listed (` / `). For DC and SWS (unstructured",
        "pruning) the Pruning column is |W| / (2·|W≠0|), sparse storage with one index per value,",
        "and the first error is the pretrained dense network's (they retrain a finished dense run).",
        "*s / epoch (as trained)* is the median epoch time of the run itself, often on a CPU",
        "shared with other runs (per device where seeds ran on different ones; several runs",
        "shared one GPU), and *training time* the sum of its epochs, all phases (what the",
        "recipe took, not what it must take); speed comparisons come from",
        "`benchmarks/train_speed.py`. Commits",
        "ending in `-copy` ran from a copy of that clean commit without its `.git` (a lent GPU",
        "machine; see `bayescomp/provenance.py`). Seeds are averaged only when their configs",
        "agree (see `bayescomp/tables.py`); other recipes of a method get their own labelled row.",
        "Multiply-adds per example, in thousands (`bayescomp/counting.py`): *structural* counts",
        "the network export builds (kept channels and rows; unstructured pruning keeps most of",
        "them), *nonzero* the kept weights times their output positions; from each run's",
        "`counting`, or computed from its `model.bcz`.",
        "",
        f"Published rows: {', '.join(cite['authors'])} ({cite['year']}), *{cite['title']}*, "
        f"{cite['venue']}, arXiv:{cite['arxiv']}; as printed in {cite['source']['slides']}, "
        "on MNIST.",
        "",
    ]
    datasets = sorted({key[0] for key in groups}, key=lambda d: (d != "mnist", d))
    for dataset in datasets:
        title = DATASET_TITLES.get(dataset, dataset)
        lines += [f"## {title}: ours", ""]
        lines += ["### Pruned architecture and bit precision", "",
                  "| Network | Method | n | Pruned architecture | Bits per layer | Exponent bits |"
                  " Error (quantized) % | Multiply-adds, structural: pruned / dense (× fewer) |"
                  " Multiply-adds, nonzero weights (× fewer) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        keys = sorted((k for k in groups if k[0] == dataset),
                      key=lambda k: (k[1], METHOD_ORDER.index(k[2]) if k[2] in METHOD_ORDER else 99,
                                     label_order.get(k, ())))

        def title(key):
            return f"{METHOD_TITLES.get(key[2], key[2])}{labels.get(key, '')}"

        for key in keys:
            model, rs = key[1], groups[key]
            lines.append(
                f"| {MODEL_TITLES.get(model, model)} | {title(key)} | "
                f"{len(rs)} | {_join_units([r.get('architecture') for r in rs])} | "
                f"{_join_units([r.get('bits_per_layer') for r in rs])} | "
                f"{_mean_std([r.get('exponent_bits') for r in rs], '.0f')} | "
                f"{_mean_std([r.get('quantized_test_error') for r in rs], '.2f')} | "
                f"{_macs_cell(rs, structural=True)} | {_macs_cell(rs, structural=False)} |")
        lines += ["", "### Compression rates", "",
                  "| Network | Method | n | Epochs | Error % (mean / pruned / quantized) | "
                  "\\|W≠0\\|/\\|W\\| % | Pruning | Fast Prediction | Maximum Compression (estimate) | "
                  "Maximum Compression (measured file) | File bytes | Error of the decoded file % | "
                  "s / epoch (as trained) | Training time, min (as trained) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key in keys:
            model, rs = key[1], groups[key]
            comp = [r.get("compression") or {} for r in rs]
            lines.append(
                f"| {MODEL_TITLES.get(model, model)} | {title(key)} | "
                f"{len(rs)} | {_mean_std([r.get('epochs') for r in rs], '.0f')} | "
                f"{_mean_std([r.get('test_error') for r in rs], '.2f')} / "
                f"{_mean_std([r.get('pruned_test_error') for r in rs], '.2f')} / "
                f"{_mean_std([r.get('quantized_test_error') for r in rs], '.2f')} | "
                f"{_mean_std([r.get('percent_kept') for r in rs], '.2f')} | "
                f"{_mean_std([c.get('pruning') for c in comp], '.1f')} | "
                f"{_mean_std([c.get('fast_prediction') for c in comp], '.1f')} | "
                f"{_mean_std([c.get('max_compression') for c in comp], '.1f')} | "
                f"{_mean_std([c.get('max_compression_measured') for c in comp], '.1f')} | "
                f"{_mean_std([r.get('compressed_bytes') for r in rs], '.0f')} | "
                f"{_mean_std([r.get('compressed_test_error') for r in rs], '.2f')} | "
                f"{_per_device(rs, 'seconds_per_epoch', '.2f')} | "
                f"{_per_device([_with_minutes(r) for r in rs], 'train_minutes', '.1f')} |")
        lines += ["", "Runs (directory, seed, git commit, device, input preprocessing):", ""]
        lines += [run_line(r) for key in keys for r in groups[key]]
        lines.append("")

    lines += ["## MNIST: published (Louizos et al. 2017)", "",
              "| Network | Method | Pruned architecture | Bits per layer | \\|W≠0\\|/\\|W\\| % | Pruning "
              "(error %) | Fast Prediction (error %) | Maximum Compression (error %) |",
              "|---|---|---|---|---|---|---|---|"]
    for model_key in ("lenet_300_100", "lenet_5_caffe"):
        entry = published["models"][model_key]
        for method, row in entry["methods"].items():
            arch = "-".join(map(str, row["pruned_architecture"])) if row.get(
                "pruned_architecture") else "–"
            bits = "-".join(map(str, row["bit_precision"])) if row.get("bit_precision") else "–"
            lines.append(
                f"| {entry['name']} ({entry['original_error_percent']} %) | {method} | {arch} | "
                f"{bits} | {row.get('percent_kept') or '–'} | {_published_ratio(row.get('pruning'))}"
                f" | {_published_ratio(row.get('fast_prediction'))} | "
                f"{_published_ratio(row.get('max_compression'))} |")
    lines += ["", "`*`: starred in the source (unstructured pruning). See the notes at the top "
              "of `experiments/published/louizos2017.yaml` for how the garbled slide table was "
              "read.", ""]
    if published_dc:
        lines += _render_deep_compression(published_dc)
    if dirichlet is not None and any(r.get("model") == "lenet5" for r in runs):
        from bayescomp import lenet5_structured  # late: it builds on this module

        lines += [""] + lenet5_structured.render(runs, dirichlet)
    from bayescomp import ranking_control  # late, as lenet5_structured

    control = ranking_control.section(runs)
    return "\n".join(lines + ([""] + control if control else []))


def display_path(path: str) -> str:
    """``path`` as the tables print it: relative to the repository where it lies inside it."""
    try:
        return str(pathlib.Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=["results"],
                        help="run directories or parents of them (default: results/)")
    parser.add_argument("--out", default=None,
                        help=f"the Markdown file to write (default: {TABLES_FILE} in the one "
                             f"scanned directory); where the scan holds LeNet and CIFAR runs, "
                             f"the LeNet file, with the CIFAR tables in {CIFAR_TABLES_FILE} "
                             "beside it")
    parser.add_argument("--published", default=str(PUBLISHED))
    args = parser.parse_args(argv)
    # here, not at the top: they build on this module
    from bayescomp import cifar_tables, lenet5_structured, table_plots

    try:
        found = find_runs([pathlib.Path(p) for p in args.runs])
        cifar_runs = [r for r in found if cifar_tables.is_cifar(r)]
        runs = [r for r in found if r.get("model") in MODEL_KEYS and not cifar_tables.is_cifar(r)]
        if not runs and not cifar_runs:
            raise ConfigError(f"no LeNet metrics.json found under {', '.join(args.runs)}, nor a "
                              "CIFAR run's; run an experiment first (python -m bayescomp.run "
                              "+experiment=...)")
        published_path = pathlib.Path(args.published)
        if not published_path.exists():
            raise ConfigError(f"published numbers not found at {published_path}")
        published = yaml.safe_load(published_path.read_text())
        out, cifar_out = out_paths(args.runs, args.out, bool(runs), bool(cifar_runs))
        written = []
        if runs:
            published_dc = (yaml.safe_load(PUBLISHED_DC.read_text()) if PUBLISHED_DC.exists()
                            else None)
            dirichlet = cifar_tables.load_published(
                cifar_tables.PUBLISHED_DIR / lenet5_structured.PAPER_FILE)
            text = render(runs, published, args.runs, published_dc, dirichlet)
            # PNGs beside `out`, linked from the text
            written.append((out, table_plots.add_figures(text, runs, out), f"{len(runs)} runs"))
        if cifar_runs:
            text = cifar_tables.render(cifar_runs, cifar_tables.published_papers(), published,
                                       args.runs)
            written.append((cifar_out, text, f"{len(cifar_runs)} CIFAR runs"))
        for path, text, _ in written:
            try:
                atomic.write_text(path, text)
            except OSError as err:  # a directory, a read-only place (a full disk: DiskFullError)
                raise ConfigError(f"cannot write {path} ({err.strerror or err}); pass --out with "
                                  "a writable file path") from None
    except BayescompError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, _, what in written:
        print(f"wrote {path} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
