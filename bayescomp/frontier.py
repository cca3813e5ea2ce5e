r"""Error against Pruning (or multiply-adds) across methods: where a compression target can sit.

``python -m bayescomp.frontier [ROOTS...] --model lenet5 --dataset fashion_mnist
[--measure pruning|macs|nonzero_macs] [--within 1.0] [--min-pruning 30] [--out DIR]``

A target such as "Pruning ≥ 30× within 1 point of the dense error" is a point in the plane of
Pruning against quantized test error. Whether any method reaches it on a dataset is read off
the lower-left frontier of every result we have for that model there:

* finished runs (``metrics.json``) of the methods that prune whole units or keep all of them,
  at the full widths (dense, Sparse VD, BC-GNJ, BC-GHS) and at reduced widths (dense LeNets
  trained from scratch at the widths of a pruned architecture, ``model.widths``): the question
  "can a network this small reach this error" asked directly;
* the threshold sweeps of :mod:`bayescomp.tradeoff` (``tradeoff.json``): the same trained
  posterior pruned harder or softer, without retraining.

Pruning is always against the *full-width* model, ``|W_full| / |W_kept|`` with ``|W_kept|``
the weights of the pruned dense matrices (:mod:`bayescomp.compression.report`), so a narrow
network trained from scratch and a pruned wide one are on one axis: a dense LeNet-5 of widths
8-16-40 has 14,040 weights, Pruning 430,500 / 14,040 = 30.7×. Deep Compression and soft
weight-sharing are left out: their Pruning counts unstructured sparse storage (an index per
weight), another quantity.

**Multiply-adds** (``--measure macs`` or ``nonzero_macs``): the same plane with the
multiply-adds per example of the pruned network on the x axis, as the full-width dense
network's over the point's (:mod:`bayescomp.counting`): ``macs`` counts the structurally
pruned network (the channels and rows the exported network keeps), ``nonzero_macs`` the kept
weights times their output positions, what unstructured-pruning papers count. Every finished
run of every method is a point, Deep Compression and soft weight-sharing included (their
structural count is close to dense, their nonzero count is not), and the channel methods
(Dirichlet pruning, variational CNN pruning, network slimming). A run's counts are its
``metrics.json``'s ``counting``, or, for runs written before it had one, are computed from its
``model.bcz`` (:func:`bayescomp.tables.run_counting`). A threshold sweep's points have their
own ``counting`` (sweeps written since 2026-12-06). Older sweeps stored only the kept weights
per layer, which give the nonzero count; for the group methods (BC-GNJ, BC-GHS), whose masks
keep or remove whole groups, that is also the structural count where the run's own counting
shows the two equal for its model (the LeNets: no BatchNorm keeps a removed channel's rows);
otherwise such a point has no structural count. The report
names the fewest multiply-adds within ``--within`` points of the dense error, overall and per
method.

The errors are test errors of finished runs and sweep points; nothing here chooses an operating
point (see :mod:`bayescomp.tradeoff` on why a sweep's test errors must not). Output: the table
on stdout, and with ``--out DIR`` also ``DIR/frontier.md`` and ``DIR/frontier.png``
(``frontier_macs.*``, ``frontier_nonzero_macs.*`` for the multiply-add measures).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
from typing import Sequence

from bayescomp import atomic, models, provenance, tables
from bayescomp.errors import BayescompError, ConfigError

#: Methods whose Pruning column counts the weights of pruned dense matrices (structured).
STRUCTURED_METHODS = ("dense", "svd", "bc_gnj", "bc_ghs", "dirichlet", "vcnn", "slimming")
#: Methods on the multiply-add axes: every method (multiply-adds mean the same for all).
MACS_METHODS = STRUCTURED_METHODS + ("dc", "sws")
#: Methods whose masks keep or remove whole groups: where the model keeps no extra rows (its run's
#: structural and nonzero counts agree), an old sweep point's structural count is its nonzero one.
GROUP_METHODS = ("bc_gnj", "bc_ghs")
#: Method key → the name in the frontier's tables and plot legend: the LeNet tables' titles
#: (one spelling across ``results/``), except the dense reference, named plainly.
METHOD_NAMES = {**tables.METHOD_TITLES, "dense": "dense"}
#: ``--measure`` → the point key plotted (a ratio against the full-width dense network).
MEASURES = {"pruning": "pruning", "macs": "macs_reduction",
            "nonzero_macs": "nonzero_macs_reduction"}


def _sweeps(roots: Sequence[pathlib.Path]) -> list[tuple[pathlib.Path, dict]]:
    """Every ``tradeoff.json`` below ``roots`` (the roots exist: :func:`tables.find_runs`)."""
    paths = [path for root in roots if root.is_dir()
             for path in sorted(root.rglob("tradeoff.json"))]
    sweeps = []
    for path in paths:
        try:
            sweeps.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path} cannot be read as JSON ({error}); regenerate it with "
                              "python -m bayescomp.tradeoff") from None
    return sweeps


def collect(roots: Sequence[pathlib.Path], model: str, dataset: str,
            measure: str = "pruning") -> tuple[list[dict], float]:
    """Every point of ``model`` on ``dataset`` under ``roots``, and the full model's size.

    Args:
        roots: Directories searched for ``metrics.json`` and ``tradeoff.json``.
        model: Registry name of the model.
        dataset: Dataset name.
        measure: A key of :data:`MEASURES`: ``"pruning"`` (weights, structured methods) or
            ``"macs"`` / ``"nonzero_macs"`` (multiply-adds, every method).

    Returns:
        ``(points, full)``: ``full`` is the full-width model's weights (``pruning``) or
        dense multiply-adds (the other measures). Each point has ``source`` (``"run"`` or
        ``"sweep"``), ``method``, ``variant``, ``seed``, ``architecture``, ``full_width``,
        ``quantized_test_error``, ``path``, and ``pruning`` (vs the full model), or for the
        multiply-add measures ``macs``, ``nonzero_macs`` (per example, ``None`` where unknown)
        and ``macs_reduction``, ``nonzero_macs_reduction`` (the full model's over them).

    Raises:
        ConfigError: no full-width run of ``model`` on ``dataset`` to size the full model by.
    """
    if measure not in MEASURES:
        raise ConfigError(f"unknown measure {measure!r}; choose one of {sorted(MEASURES)}")
    by_macs = measure != "pruning"
    methods = MACS_METHODS if by_macs else STRUCTURED_METHODS
    full = models.default_widths(model)
    runs = {}
    for metrics in tables.find_runs(list(roots), include_studies=True):
        if (metrics.get("model"), metrics.get("dataset")) != (model, dataset):
            continue
        if metrics.get("method") not in methods:
            continue
        widths = ((metrics.get("config") or {}).get("model") or {}).get("widths") or full
        runs[pathlib.Path(metrics["_path"])] = dict(metrics, widths=list(widths))
    if by_macs:
        for run in runs.values():
            run["_counting"] = tables.run_counting(run)
        full_sizes = {run["_counting"]["dense"]["macs"] for run in runs.values()
                      if run["widths"] == full and run["_counting"]}
    else:
        full_sizes = {run["weights_total"] for run in runs.values() if run["widths"] == full}
    if not full_sizes:
        raise ConfigError(f"no full-width {model} run on {dataset} under "
                          f"{', '.join(map(str, roots))}; the full model's size is read from one")
    if len(full_sizes) > 1:
        raise ConfigError(f"full-width {model} runs on {dataset} disagree on its size: "
                          f"{sorted(full_sizes)}")
    full_size = float(full_sizes.pop())

    def study_label(run_dir: pathlib.Path) -> str:
        # results/studies/<dataset>/<study>/<variant>/seed<s>: "<study>/<variant>"
        parts = run_dir.parts
        if tables.STUDIES_DIR not in parts:
            return ""
        return "/".join(parts[parts.index(tables.STUDIES_DIR) + 2:-1])

    def size(macs, nonzero) -> dict:
        """The multiply-add keys of a point."""
        return {"macs": macs, "nonzero_macs": nonzero,
                "macs_reduction": full_size / macs if macs else None,
                "nonzero_macs_reduction": full_size / nonzero if nonzero else None}

    points = []
    for run_dir, run in runs.items():
        point = {
            "source": "run", "method": run["method"],
            "variant": (study_label(run_dir) if run["widths"] == full
                        else "widths " + "-".join(map(str, run["widths"]))),
            "seed": run["seed"], "architecture": "-".join(map(str, run["architecture"])),
            "full_width": run["widths"] == full,
            "quantized_test_error": run["quantized_test_error"], "path": str(run_dir)}
        if by_macs:
            counted = run["_counting"] or {}
            point.update(size((counted.get("pruned") or {}).get("macs"),
                              counted.get("nonzero_macs")))
        else:
            # compression.pruning = weights_total / kept weights of the pruned dense matrices
            point["pruning"] = full_size / (run["weights_total"] / run["compression"]["pruning"])
        points.append(point)
    # A sweep belongs to the run it was computed from: the same commit and the same
    # <dataset>/<experiment>/seed<s> at the end of its directory (results/ mirrors the run
    # directories; a study's runs end in <study>/<variant>/seed<s> instead).
    by_identity = {(run_dir.parts[-3:], r.get("git_commit")): (run_dir, r)
                   for run_dir, r in runs.items()}
    # A run published under another directory than the one it was swept in (a recipe renamed:
    # lenet5_ghs's earlier default is results/fashion_mnist/lenet5_ghs_published) is found
    # where its sweep is published: results/tradeoff/ mirrors results/ too, so the sweep's own
    # <dataset>/<experiment>/seed<s> (or <study>/<variant>/seed<s>) names the run's directory.
    for path, record in _sweeps(roots):
        commit = record.get("run_git_commit")
        run_dir, run = by_identity.get((pathlib.Path(str(record.get("run_dir"))).parts[-3:],
                                        commit), (None, None))
        if run is None:
            run_dir, run = by_identity.get((path.parent.parts[-3:], commit), (None, None))
        if record.get("dataset") != dataset or run is None:
            continue  # another dataset or model, or a sweep of a run not among the runs given
        # A study's sweep is told from the experiment's own by its variant, as its run is.
        study = study_label(run_dir)
        if by_macs:
            # Output positions per layer: the run's dense multiply-adds per weight.
            dense_layers = ((run["_counting"] or {}).get("dense") or {}).get("layers") or {}
            positions = [dense_layers[name]["macs"] // dense_layers[name]["weights"]
                         if name in dense_layers else None for name in run.get("layers", ())]
        for point in record["points"]:
            setting = (f"threshold {point['threshold']:g}" if "threshold" in point
                       else f"tolerance {point['tolerance']:g}")
            setting = f"{study} {setting}" if study else setting
            entry = {
                "source": "sweep", "method": run["method"], "variant": setting,
                "seed": record["seed"], "architecture": point["architecture_string"],
                "full_width": True, "quantized_test_error": point["quantized_test_error"],
                "path": str(path)}
            if by_macs:
                counted = point.get("counting")
                if counted:
                    macs, nonzero = counted["pruned"]["macs"], counted["nonzero_macs"]
                else:
                    # A sweep written before points had their counting: the kept weights give
                    # the nonzero count, which is the structural one for a group method on a
                    # model whose run counts agree (GROUP_METHODS), and unknown otherwise.
                    kept = point.get("kept_per_layer")
                    known = (kept is not None and len(kept) == len(positions)
                             and None not in positions)
                    nonzero = sum(k * p for k, p in zip(kept, positions)) if known else None
                    run_counts = run["_counting"] or {}
                    blocks = (run["method"] in GROUP_METHODS
                              and run_counts.get("nonzero_macs") is not None
                              and run_counts["nonzero_macs"]
                              == (run_counts.get("pruned") or {}).get("macs"))
                    macs = nonzero if blocks else None
                entry.update(size(macs, nonzero))
            else:
                kept = run["weights_total"] / point["compression"]["pruning"]
                entry["pruning"] = full_size / kept
            points.append(entry)
    key = MEASURES[measure]
    return sorted(points, key=lambda p: (p[key] is None, p[key] or 0.0)), full_size


def dense_error(points: list[dict]) -> float:
    """Mean quantized error of the full-width dense runs (the reference of the target)."""
    errors = [p["quantized_test_error"] for p in points
              if p["method"] == "dense" and p["source"] == "run" and p["full_width"]
              and not p["variant"]]
    if not errors:
        raise ConfigError("no full-width dense run among the points: the target is relative to "
                          "its error")
    return statistics.fmean(errors)


def render(points: list[dict], model: str, dataset: str, full_weights: float, within: float,
           min_pruning: float, command: str) -> str:
    """The markdown report: the target, the best point past it, every point."""
    reference = dense_error(points)
    bar = reference + within
    past = [p for p in points if p["pruning"] >= min_pruning]
    best = min(past, key=lambda p: p["quantized_test_error"]) if past else None
    met = [p for p in past if p["quantized_test_error"] <= bar]
    lines = [
        f"# Error against Pruning: {model} on {dataset}", "",
        f"Generated by `{command}` (commit `{provenance.git_commit()}`) from "
        f"{len({p['path'] for p in points})} files, each point's listed below the table; do "
        "not edit by hand. Pruning is against the full-width "
        f"model ({full_weights:,.0f} weights): |W_full| / weights of the pruned dense matrices. "
        "*run*: a finished run (narrow widths: a dense network of those widths trained from "
        "scratch); *sweep*: a trained run pruned at other thresholds without retraining "
        "(`python -m bayescomp.tradeoff`). Errors are quantized test errors in %; see "
        "`bayescomp/frontier.py`.", "",
        f"Target: Pruning ≥ {min_pruning:g}× at ≤ {bar:.2f} % (the full-width dense mean "
        f"{reference:.2f} % + {within:g} point).", "",
    ]
    if best is None:
        lines.append(f"No point reaches Pruning ≥ {min_pruning:g}×.")
    else:
        lines.append(f"Best error at Pruning ≥ {min_pruning:g}×: {best['quantized_test_error']:.2f}"
                     f" % ({METHOD_NAMES[best['method']]} {best['variant']}, seed "
                     f"{best['seed']}, Pruning {best['pruning']:.1f}×); {len(met)} of "
                     f"{len(past)} points there meet the target.")
    lines += ["", "| Source | Method | Variant | Seed | Architecture | Pruning (vs full) | "
              "Error (quantized) % | Meets target |", "|---|---|---|---|---|---|---|---|"]
    for p in points:
        meets = p["pruning"] >= min_pruning and p["quantized_test_error"] <= bar
        lines.append(f"| {p['source']} | {METHOD_NAMES[p['method']]} | {p['variant'] or '–'} | "
                     f"{p['seed']} | {p['architecture']} | {p['pruning']:.1f} | "
                     f"{p['quantized_test_error']:.2f} | {'yes' if meets else ''} |")
    files = sorted({p["path"] for p in points})
    lines += ["", "Files (runs: `metrics.json` with config, seed and commit; sweeps: "
              "`tradeoff.json`):", ""] + [f"- `{path}`" for path in files]
    return "\n".join(lines) + "\n"


#: How the report and the figure name each multiply-add measure.
MACS_LABELS = {"macs": "multiply-adds of the structurally pruned network",
               "nonzero_macs": "multiply-adds of the kept (nonzero) weights"}


def render_macs(points: list[dict], model: str, dataset: str, full_macs: float, within: float,
                measure: str, command: str) -> str:
    """The markdown report on a multiply-add axis: the fewest multiply-adds within ``within``
    points of the dense error, overall and per method, then every point."""
    reference = dense_error(points)
    bar = reference + within
    key = MEASURES[measure]
    value = "macs" if measure == "macs" else "nonzero_macs"
    named = "structural multiply-adds" if measure == "macs" else "nonzero multiply-adds"
    placed = [p for p in points if p[key] is not None]
    unplaced = len(points) - len(placed)
    within_bar = [p for p in placed if p["quantized_test_error"] <= bar]
    lines = [
        f"# Error against multiply-adds: {model} on {dataset}", "",
        f"Generated by `{command}` (commit `{provenance.git_commit()}`) from "
        f"{len({p['path'] for p in points})} files, each point's listed below the table; do "
        f"not edit by hand. The x axis is the {MACS_LABELS[measure]}, per example, as the "
        f"full-width dense network's ({full_macs:,.0f}) over the point's "
        "(`bayescomp/counting.py`). *Structural*: the channels and rows the exported network "
        "keeps (whole filters in a conv; unstructured pruning keeps most of them); *nonzero*: "
        "kept weights × output positions. Counts are the run's `metrics.json` `counting`, or "
        "computed from its `model.bcz`. *run*: a finished run (narrow widths: a dense network "
        "of those widths trained from scratch); *sweep*: a trained run pruned at other "
        "thresholds without retraining (`python -m bayescomp.tradeoff`; its points' own "
        "counts, or for sweeps written before they had them the nonzero count, and the "
        "structural one only for BC-GNJ and BC-GHS where whole groups make the two equal). "
        "Errors are quantized test errors in %; see "
        "`bayescomp/frontier.py`.", "",
        f"Bar: quantized error ≤ {bar:.2f} % (the full-width dense mean {reference:.2f} % + "
        f"{within:g} point).", "",
    ]
    if within_bar:
        best = max(within_bar, key=lambda p: p[key])
        lines.append(f"Fewest {named} within the bar: {best[value]:,} "
                     f"({best[key]:.1f}× fewer than dense), {METHOD_NAMES[best['method']]} "
                     f"{best['variant'] or ''} seed {best['seed']}, "
                     f"{best['quantized_test_error']:.2f} %.".replace("  ", " "))
        lines += ["", "| Method | Fewest within the bar | × fewer | Error % | Points within the "
                  "bar |", "|---|---|---|---|---|"]
        for method in MACS_METHODS:
            mine = [p for p in within_bar if p["method"] == method]
            if mine:
                top = max(mine, key=lambda p: p[key])
                lines.append(f"| {METHOD_NAMES[method]} | {top[value]:,} ({top['source']}"
                             f"{', ' + top['variant'] if top['variant'] else ''}, seed "
                             f"{top['seed']}) | {top[key]:.1f} | "
                             f"{top['quantized_test_error']:.2f} | {len(mine)} |")
    else:
        lines.append("No point lies within the bar.")
    if unplaced:
        lines += ["", f"{unplaced} point(s) have no {named} (sweeps written before their "
                  "points had counts; runs without `counting` or `model.bcz`) and are listed "
                  "without it."]

    def cell(count, ratio):
        return "–" if count is None else f"{count:,} ({ratio:.1f}×)"

    lines += ["", "| Source | Method | Variant | Seed | Architecture | Multiply-adds, structural "
              "(× fewer) | Multiply-adds, nonzero (× fewer) | Error (quantized) % | Within the "
              "bar |", "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        meets = p[key] is not None and p["quantized_test_error"] <= bar
        lines.append(f"| {p['source']} | {METHOD_NAMES[p['method']]} | {p['variant'] or '–'} | "
                     f"{p['seed']} | {p['architecture']} | "
                     f"{cell(p['macs'], p['macs_reduction'])} | "
                     f"{cell(p['nonzero_macs'], p['nonzero_macs_reduction'])} | "
                     f"{p['quantized_test_error']:.2f} | {'yes' if meets else ''} |")
    files = sorted({p["path"] for p in points})
    lines += ["", "Files (runs: `metrics.json` with config, seed and commit, and `model.bcz`; "
              "sweeps: `tradeoff.json`):", ""] + [f"- `{path}`" for path in files]
    return "\n".join(lines) + "\n"


def plot(points: list[dict], reference: float, within: float, min_pruning: float, title: str,
         path: pathlib.Path, measure: str = "pruning") -> None:
    """Quantized error against the measure (log x): the target region shaded (Pruning), or the
    band within ``within`` points of the dense error (multiply-adds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = MEASURES[measure]
    points = [p for p in points if p[key] is not None]
    fig, axis = plt.subplots(figsize=(7, 4.5))
    for method in (STRUCTURED_METHODS if measure == "pruning" else MACS_METHODS):
        for source, variant_kind, marker in (("run", False, "o"), ("run", True, "D"),
                                             ("sweep", None, "x")):
            chosen = [p for p in points if p["method"] == method and p["source"] == source
                      and (variant_kind is None or (not p["full_width"]) == variant_kind)]
            if chosen:
                label = METHOD_NAMES[method] + {("run", False): "", ("run", True): " (narrow)",
                                                ("sweep", None): " (threshold sweep)"}[
                    (source, variant_kind)]
                axis.scatter([p[key] for p in chosen],
                             [p["quantized_test_error"] for p in chosen], marker=marker,
                             label=label)
    errors = [p["quantized_test_error"] for p in points]
    axis.axhline(reference, color="grey", linewidth=0.8)
    if measure == "pruning":
        axis.fill_between([min_pruning, max(max(p[key] for p in points), min_pruning) * 1.5],
                          0, reference + within, color="green", alpha=0.12, label="target")
    else:
        axis.axhspan(0, reference + within, color="green", alpha=0.12,
                     label=f"within {within:g} point of dense")
    axis.set_xscale("log")
    # Points pruned into collapse (tens of % error) would flatten the region that matters.
    top = min(max(errors), 1.8 * reference) + 0.5
    axis.set_ylim(min(errors) - 0.5, top)
    hidden = sum(error > top for error in errors)
    if hidden:
        axis.text(0.01, 0.99, f"{hidden} point(s) above {top:.0f} % not shown",
                  transform=axis.transAxes, va="top", fontsize=7)
    axis.set_xlabel("Pruning vs the full-width model (×)" if measure == "pruning" else
                    f"full-width dense / {MACS_LABELS[measure]} (×)")
    axis.set_ylabel("quantized test error (%)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(title)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=100)  # a full disk leaves no truncated image
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bayescomp.frontier",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=["results"],
                        help="directories searched for metrics.json and tradeoff.json")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--measure", choices=sorted(MEASURES), default="pruning",
                        help="the x axis: Pruning (weights; default), macs (multiply-adds of "
                             "the structurally pruned network) or nonzero_macs (of the kept "
                             "weights)")
    parser.add_argument("--within", type=float, default=1.0,
                        help="points of error above the dense mean allowed (default 1.0)")
    parser.add_argument("--min-pruning", type=float, default=30.0,
                        help="the Pruning target (--measure pruning only)")
    parser.add_argument("--out", default=None, help="write frontier.md and frontier.png here "
                        "(frontier_<measure>.* for the multiply-add measures)")
    args = parser.parse_args(argv)
    command = "python -m bayescomp.frontier " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    try:
        points, full = collect([pathlib.Path(r) for r in args.roots], args.model,
                               args.dataset, args.measure)
        if args.measure == "pruning":
            text = render(points, args.model, args.dataset, full, args.within,
                          args.min_pruning, command.strip())
        else:
            text = render_macs(points, args.model, args.dataset, full, args.within,
                               args.measure, command.strip())
    except BayescompError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        out = pathlib.Path(args.out)
        stem = "frontier" if args.measure == "pruning" else f"frontier_{args.measure}"
        atomic.write_text(out / f"{stem}.md", text)
        plot(points, dense_error(points), args.within, args.min_pruning,
             f"{args.model} on {args.dataset}", out / f"{stem}.png", args.measure)
        print(f"wrote {out / f'{stem}.md'} and {out / f'{stem}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
