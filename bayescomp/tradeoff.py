r"""Error against compression as the pruning thresholds vary: a threshold sensitivity analysis.

``python -m bayescomp.tradeoff RUN_DIR [--thresholds T ...] [--tolerances E ...] [--out DIR]``

A trained variational network does not fix its compression: the per-layer thresholds on log α
decide which weights or groups go, and with them the error, the pruned architecture, the
posterior-derived bits and every compression ratio. Bayesian Compression picks them by hand
(Louizos et al. 2017, §5; their LeNet-300-100 example, ``example.py`` of
github.com/KarenUllrich/Tutorial_BayesianCompressionForDL, uses −2.8 / −3 / −5); VCNN reports
compression and accuracy over a range of its threshold τ (Zhao et al., "Variational
Convolutional Neural Network Pruning", CVPR 2019, Fig. 5). This module computes that
curve for a finished run, with no retraining, at two kinds of operating point:

* ``--thresholds T``: one threshold ``T`` for every variational layer (log α ≥ T is removed).
* ``--tolerances E``: the thresholds chosen from *training* data by
  :mod:`bayescomp.threshold_selection` within ``E`` percentage points of the unpruned network's
  error on the selection subset (the rule ``conf/method/bc_ghs.yaml`` uses with E = 0.5).

Each point is scored exactly as the run's own end of training is
(:func:`bayescomp.procedures.variational.compression_snapshot`): masks propagated across layers,
kept posterior means rounded to their posterior-derived bits, the quantized network evaluated on
the test set, and the paper's compression columns (Pruning, Fast Prediction, Maximum Compression estimate).
The bits are the run's own rule: the posterior rule's, raised by bit selection where the run's
config sets ``method.bits`` (:mod:`bayescomp.bit_selection`; ``bit_selection`` in each point).

A point whose thresholds empty a layer has no compressed network to score; it is recorded as
``empties <layer>`` (``"empties": [layer, ...]`` in ``tradeoff.json``) and the sweep goes on.
Fixed thresholds are never refused here for raising the training error (a sweep is there to
show what they cost); each point records the check a run would apply
(``pruning_check``: training-subset error before and after pruning,
:func:`bayescomp.threshold_selection.pruning_check`).

The errors here are *test* errors, reported for every point: the curve shows what a threshold
costs, it must not be used to pick the operating point a result table reports (that would tune
on the test set). Runs report the point of their own config (fixed thresholds or the
training-data selection); this module never changes a run's ``metrics.json``.

Output: a table on stdout; with ``--out DIR`` (created, parents too, if absent) also
``DIR/tradeoff.json`` (every point, with the run's identity, commit and the thresholds per
layer), ``DIR/tradeoff.md`` and ``DIR/tradeoff.png`` (quantized test error against Pruning and
Fast Prediction, the points that empty a layer left out).
``--replot FILE ...`` redraws the figure of existing ``tradeoff.json`` files without a sweep.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, open_dict

from bayescomp import atomic, objectives, provenance, pruning, runs, threshold_selection
from bayescomp.errors import BayescompError, ConfigError
from bayescomp.procedures import variational

#: Training examples the threshold selection scores on (as in ``conf/method/bc_ghs.yaml``).
SELECTION_EXAMPLES = threshold_selection.DEFAULT_EXAMPLES

#: What a row records of a point that is scored (a point that empties a layer records
#: ``prune_thresholds`` and ``empties`` instead of the rest).
ROW_KEYS = ("prune_thresholds", "architecture_string", "kept_per_layer", "percent_kept",
            "bits_per_layer", "exponent_bits", "compression", "pruned_test_error",
            "quantized_test_error", "pruning_check", "bit_selection", "counting")


def operating_points(thresholds: Sequence[float] = (),
                     tolerances: Sequence[float] = ()) -> list[dict[str, float]]:
    """The sweep's points: ``{"threshold": T}`` and ``{"tolerance": E}`` dicts, in order given."""
    points = [{"threshold": float(t)} for t in thresholds]
    for tolerance in tolerances:
        if not tolerance >= 0.0:
            raise ConfigError(f"--tolerances {tolerance}: a tolerance is a non-negative number "
                              "of percentage points")
        points.append({"tolerance": float(tolerance)})
    if not points:
        raise ConfigError("nothing to sweep: give --thresholds and/or --tolerances")
    return points


def sweep(cfg: DictConfig, model, dataset, points: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Score ``model`` at every operating point; the model's own thresholds are restored after.

    Args:
        cfg: The run's resolved config.
        model: The trained model (:func:`bayescomp.runs.load_trained_model`).
        dataset: The run's dataset (:func:`bayescomp.runs.load_run_dataset`).
        points: From :func:`operating_points`.

    Returns:
        One dict per point: the point, ``prune_thresholds`` per layer, ``architecture_string``,
        ``kept_per_layer``, ``percent_kept``, ``bits_per_layer``, ``exponent_bits``,
        ``compression`` (the paper's ratios), ``pruned_test_error`` /
        ``quantized_test_error`` (%), ``pruning_check`` (training-subset errors) and
        ``counting`` (parameters and multiply-adds, :func:`bayescomp.counting.summary`); for a
        point whose thresholds empty a layer, the point, ``prune_thresholds`` and ``empties``
        (the layers) only.

    Raises:
        ConfigError: ``model`` has no layer with a log α (a dense, DC or SWS run).
    """
    layers = [(name, layer) for name, layer in objectives.variational_layers(model)
              if layer.log_alpha() is not None]
    if not layers:
        raise ConfigError(f"run of method {cfg.method.name!r} has no log α to threshold; the "
                          "trade-off needs a variational run (svd, bc_gnj, bc_ghs)")
    own_thresholds = {name: layer.prune_threshold for name, layer in layers}
    rows = []
    try:
        for point in points:
            point_cfg = copy.deepcopy(cfg)
            with open_dict(point_cfg):
                prune = point_cfg.method.setdefault("prune", {})
                if "tolerance" in point:
                    prune["select"] = {"tolerance": point["tolerance"],
                                       "examples": SELECTION_EXAMPLES}
                else:
                    prune["select"] = None
                    threshold_selection.set_thresholds(
                        model, {name: point["threshold"] for name, _ in layers})
            try:
                with tempfile.TemporaryDirectory() as scratch:  # the histograms are not kept
                    snapshot = variational.compression_snapshot(point_cfg, model, dataset,
                                                                pathlib.Path(scratch))
            except pruning.RuinousPruningError as error:
                if not error.emptied:
                    raise
                # Nothing left to quantize at this point; the others may still be of interest.
                rows.append({**point, "prune_thresholds": {
                    name: layer.prune_threshold
                    for name, layer in objectives.variational_layers(model)},
                    "empties": error.emptied})
                continue
            rows.append({**point, **{key: snapshot[key] for key in ROW_KEYS}})
    finally:
        threshold_selection.set_thresholds(model, own_thresholds)
    return rows


def _point_label(row: dict[str, Any]) -> str:
    if "tolerance" in row:
        return f"tolerance {row['tolerance']:g}"
    return f"threshold {row['threshold']:g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the sweep, one row per operating point."""
    lines = [("| Operating point | Thresholds | Architecture | Bits | Kept % | Pruning | "
              "Fast Prediction | Max. Compression (est.) | Pruned error % | Quantized error % |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        thresholds = " / ".join("—" if t is None else f"{t:.2f}"
                                for t in row["prune_thresholds"].values())
        if "empties" in row:
            lines.append(f"| {_point_label(row)} | {thresholds} | empties "
                         f"{', '.join(row['empties'])} |" + " — |" * 7)
            continue
        ratios = row["compression"]
        lines.append(
            f"| {_point_label(row)} | {thresholds} | {row['architecture_string']} | "
            f"{'-'.join(str(b) for b in row['bits_per_layer'])} | {row['percent_kept']:.2f} | "
            f"{ratios['pruning']:.1f} | {ratios['fast_prediction']:.1f} | "
            f"{ratios['max_compression']:.1f} | {row['pruned_test_error']:.2f} | "
            f"{row['quantized_test_error']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], title: str, path: pathlib.Path) -> bool:
    """Quantized test error against Pruning and Fast Prediction (log x), one marker per point.

    Points that empty a layer have no ratios and are left out; with none left, nothing is
    drawn.

    Returns:
        Whether the figure was written.
    """
    rows = [row for row in rows if "compression" in row]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, ratio in zip(axes, ("pruning", "fast_prediction")):
        for kind, marker in (("threshold", "o"), ("tolerance", "s")):
            chosen = sorted((r for r in rows if kind in r), key=lambda r: r["compression"][ratio])
            if chosen:
                axis.plot([r["compression"][ratio] for r in chosen],
                          [r["quantized_test_error"] for r in chosen], marker + "-",
                          label=f"fixed {kind}" if kind == "threshold"
                          else "training-data selection")
        axis.set_xscale("log")
        # Ticks at 1, 2, 5 × 10^k, written plainly; every integer × 10^k within one decade.
        values = [r["compression"][ratio] for r in rows]
        narrow = max(values) < 10 * min(values)
        axis.xaxis.set_major_locator(LogLocator(
            base=10, subs=tuple(range(1, 10)) if narrow else (1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel(ratio.replace("_", " ").capitalize() + " (×)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("quantized test error (%)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=100)  # a full disk leaves no truncated image
    plt.close(fig)
    return True


def title_of(record: dict[str, Any]) -> str:
    """``"<experiment> on <dataset>, seed <s>, epoch <e>"`` of a ``tradeoff.json`` record."""
    return (f"{record['experiment']} on {record['dataset']}, seed {record['seed']}, "
            f"epoch {record['epoch']}")


def replot(json_paths: Sequence[str]) -> None:
    """Redraw ``tradeoff.png`` beside each ``tradeoff.json`` from its recorded points."""
    for json_path in map(pathlib.Path, json_paths):
        try:
            record = json.loads(json_path.read_text())
            points = record["points"]
            title = title_of(record)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--replot {json_path}: not a tradeoff.json written by "
                              f"python -m bayescomp.tradeoff ({err})") from err
        if plot(points, title, json_path.with_name("tradeoff.png")):
            print(f"wrote {json_path.with_name('tradeoff.png')}")
        else:
            print(f"{json_path}: every point empties a layer; nothing to plot")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bayescomp.tradeoff",
        description="Test error against compression of a trained variational run as its "
                    "pruning thresholds vary (no retraining).")
    parser.add_argument("run_dir", nargs="?", help="hydra.run.dir of a finished variational run")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[],
                        help="one log α threshold for every layer, per point (e.g. -4 -3 -2)")
    parser.add_argument("--tolerances", type=float, nargs="*", default=[],
                        help="training-data threshold selection within E points, per point")
    parser.add_argument("--out", help="directory for tradeoff.json, tradeoff.md, tradeoff.png "
                                      "(created if absent)")
    parser.add_argument("--replot", nargs="+", metavar="TRADEOFF_JSON",
                        help="instead of a sweep, redraw tradeoff.png from these tradeoff.json")
    args = parser.parse_args(argv)
    try:
        if args.replot:
            if args.run_dir is not None:
                raise ConfigError("give either RUN_DIR (a sweep) or --replot FILES, not both")
            replot(args.replot)
            return 0
        if args.run_dir is None:
            raise ConfigError("give the RUN_DIR of a finished variational run")
        points = operating_points(args.thresholds, args.tolerances)
        out = None if args.out is None else pathlib.Path(args.out)
        run_dir = pathlib.Path(args.run_dir)
        cfg, model, meta = runs.load_trained_model(run_dir)
        dataset = runs.load_run_dataset(cfg)
        if out is not None:
            # Before the sweep, so a path that cannot be a directory fails before the work.
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(f"--out {out}: cannot create the directory "
                                  f"({error.strerror or error})") from None
            if not os.access(out, os.W_OK | os.X_OK):
                raise ConfigError(f"--out {out}: the directory is not writable; give one you "
                                  "can write to")
        rows = sweep(cfg, model, dataset, points)
    except BayescompError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    record = {
        "run_dir": str(run_dir),
        "experiment": cfg.get("experiment_name") or cfg.method.name,
        "dataset": cfg.data.name,
        "seed": int(cfg.seed),
        "epoch": int(meta["epoch"]) + 1,
        "run_git_commit": metrics.get("git_commit"),
        "run_prune_thresholds": metrics.get("prune_thresholds"),
        "git_commit": provenance.git_commit(),
        "selection_examples": SELECTION_EXAMPLES,
        "points": rows,
    }
    title = title_of(record)
    table = format_table(rows)
    print(title)
    print(table)
    if out is not None:
        try:  # each file whole or not at all (atomic): a full disk leaves the previous ones
            atomic.write_text(out / "tradeoff.json", json.dumps(record, indent=2) + "\n")
            atomic.write_text(
                out / "tradeoff.md",
                f"# Threshold trade-off: {title}\n\nGenerated by `python -m bayescomp.tradeoff` "
                f"(commit `{record['git_commit']}`) from `{run_dir}` (trained at "
                f"`{record['run_git_commit']}`). Test errors at every point; see the module "
                "docstring for why none of these points is chosen by its test error.\n\n"
                + table + "\n")
            plotted = plot(rows, title, out / "tradeoff.png")
        except OSError as error:
            reason = atomic.disk_full_reason(error) or (error.strerror or str(error))
            print(f"error: cannot write the results into {out} ({reason}); the table above is "
                  "the sweep's result: free space or give another --out", file=sys.stderr)
            return 2
        print(f"wrote {out / 'tradeoff.json'}, tradeoff.md"
              + (", tradeoff.png" if plotted else " (every point empties a layer: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
