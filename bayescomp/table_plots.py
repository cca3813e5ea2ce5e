"""The figures of ``python -m bayescomp.tables``: what the tables say, drawn.

Three PNG files are written beside the Markdown file the tables go to (``results/lenet.md`` →
``results/lenet_frontier.png``, ``results/lenet_bits.png``, ``results/lenet_widths.png``), each
with one panel per dataset (rows) and model (columns):

* *frontier*: quantized test error against Maximum Compression for every method, each seed a
  small dot, the mean over seeds a large one with ± one standard deviation, and the lower-right
  frontier of the means dashed (no other mean is both smaller and at least as accurate);
* *bits*: the table's bits per layer (significand bits; for DC and SWS the codebook index bits),
  the mean over seeds with whiskers from the fewest to the most;
* *widths*: the pruned architecture of the table (output channels of a convolution, input units
  of a dense layer) as a percentage of the full-width dense network's, which the tick labels
  give; absolute widths where no full-width dense run is among the runs.

The rows are the tables' rows: runs grouped by dataset, model, method and recipe
(:func:`bayescomp.tables.recipe`), a method with several recipes labelled as in the tables.
The output is deterministic: fixed figure sizes and resolution, matplotlib's default style
whatever the user's ``matplotlibrc`` says, and no software or date metadata in the files, so
regenerating the tables from the same runs rewrites the same bytes (with the same matplotlib).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pathlib

import numpy as np

from bayescomp import atomic, models, tables

#: Figure kinds, the suffix of each file name, and the alt text of its Markdown link.
FIGURES = {
    "frontier": "Quantized test error against Maximum Compression, every method",
    "bits": "Bits per layer, every method",
    "widths": "Pruned widths per layer against the full-width dense network",
}

#: Inches per panel and dots per inch: fixed, so the same runs give the same pixels.
PANEL_SIZE = (5.2, 3.8)
DPI = 100

#: Keyword arguments of every ``savefig``: without a ``Software`` entry (matplotlib's version)
#: the PNG holds nothing but the picture; Agg writes no creation time.
SAVE_OPTIONS = {"format": "png", "dpi": DPI, "metadata": {"Software": None}}


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the tables: the seeds of one recipe of a method, on one dataset and model."""

    dataset: str
    model: str
    method: str
    label: str  # the method's title, with the differing config values where it has several
    runs: tuple

    def values(self, key: str) -> list:
        """``key`` of every run that has it (runs made before a key existed lack it)."""
        return [run[key] for run in self.runs if run.get(key) is not None]


def rows(runs: list[dict]) -> list[Row]:
    """The runs grouped into the tables' rows, in the tables' order.

    The grouping and labels are :func:`bayescomp.tables.render`'s: same dataset, model, method
    and :func:`bayescomp.tables.recipe`; a method with several recipes gets them labelled by
    their differing config values, ordered by those values.
    """
    groups, labels, order = tables.group_runs(runs)

    def position(key):
        method_rank = (tables.METHOD_ORDER.index(key[2]) if key[2] in tables.METHOD_ORDER
                       else len(tables.METHOD_ORDER))
        return (key[0] != "mnist", key[0], key[1], method_rank, key[2], order.get(key, ()))

    return [Row(dataset=key[0], model=key[1], method=key[2],
                label=tables.METHOD_TITLES.get(key[2], key[2]) + labels.get(key, ""),
                runs=tuple(groups[key]))
            for key in sorted(groups, key=position)]


def _panels(all_rows: list[Row]) -> tuple[list[str], list[str]]:
    """Datasets (panel rows) and models (panel columns) in the tables' order."""
    datasets = list(dict.fromkeys(row.dataset for row in all_rows))
    model_order = list(tables.MODEL_TITLES)
    found = {row.model for row in all_rows}
    model_names = [m for m in model_order if m in found] + sorted(found - set(model_order))
    return datasets, model_names


def _colours(all_rows: list[Row]) -> dict[str, tuple]:
    """One colour per row label, the same in every panel and figure."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    labels = list(dict.fromkeys(row.label for row in all_rows))
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _new_figure(n_rows: int, n_cols: int):
    from matplotlib.figure import Figure

    # A Figure without pyplot: no global state, and the Agg canvas whatever backend is active.
    figure = Figure(figsize=(PANEL_SIZE[0] * n_cols, PANEL_SIZE[1] * n_rows),
                    layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    return figure, axes


def _title(dataset: str, model: str) -> str:
    return (f"{tables.MODEL_TITLES.get(model, model)} on "
            f"{tables.DATASET_TITLES.get(dataset, dataset)}")


def _mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one seed)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def _frontier_indices(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: at least as compressed and as accurate, and
    strictly better in one; sorted by compression."""
    keep = []
    for i, (x, y) in enumerate(points):
        dominated = any(ox >= x and oy <= y and (ox > x or oy < y)
                        for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: points[i])


def _compression_key(panel_rows: list[Row]) -> tuple[str, str]:
    """The measured file ratio where every run of the panel has one, else the estimate for all
    (mixing the two would put runs compressed alike at different places)."""
    runs = [run for row in panel_rows for run in row.runs]
    if runs and all((run.get("compression") or {}).get("max_compression_measured") is not None
                    for run in runs):
        return "max_compression_measured", "Maximum Compression, measured .bcz file (×)"
    return "max_compression", "Maximum Compression, estimate (×)"


def _draw_frontier(axis, panel_rows: list[Row], colours: dict) -> None:
    key, xlabel = _compression_key(panel_rows)
    means, mean_labels = [], []
    for row in panel_rows:
        pairs = [((run.get("compression") or {}).get(key), run.get("quantized_test_error"))
                 for run in row.runs]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if not pairs:
            continue
        xs, ys = zip(*pairs)
        colour = colours[row.label]
        axis.scatter(xs, ys, s=12, color=colour, alpha=0.45, linewidths=0)
        (mx, sx), (my, sy) = _mean_and_spread(xs), _mean_and_spread(ys)
        axis.errorbar([mx], [my], xerr=[sx], yerr=[sy], fmt="o", color=colour, markersize=6,
                      capsize=2, linewidth=1, label=row.label)
        means.append((mx, my))
        mean_labels.append(row.label)
    if len(means) > 1:
        front = _frontier_indices(means)
        axis.plot([means[i][0] for i in front], [means[i][1] for i in front], linestyle="--",
                  color="0.4", linewidth=1, label="frontier of the means")
    axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("quantized test error (%)")
    axis.grid(True, which="both", alpha=0.3)


def _grouped_bars(axis, panel_rows: list[Row], colours: dict, heights, tick_labels) -> None:
    """Bars per layer, one per row side by side; ``heights(row)`` gives per-seed lists."""
    drawn = [(row, heights(row)) for row in panel_rows]
    drawn = [(row, per_seed) for row, per_seed in drawn if per_seed]
    n_layers = len(tick_labels)
    width = 0.8 / max(len(drawn), 1)
    for k, (row, per_seed) in enumerate(drawn):
        per_seed = np.asarray([values for values in per_seed if len(values) == n_layers],
                              dtype=float)
        if per_seed.size == 0:
            continue
        mean, low, high = per_seed.mean(0), per_seed.min(0), per_seed.max(0)
        positions = np.arange(n_layers) - 0.4 + width * (k + 0.5)
        axis.bar(positions, mean, width=width, color=colours[row.label], label=row.label)
        spread = high > low  # layers that seeds prune or round differently: fewest to most
        if spread.any():
            axis.errorbar(positions[spread], mean[spread],
                          yerr=[(mean - low)[spread], (high - mean)[spread]], fmt="none",
                          ecolor="black", elinewidth=0.8, capsize=1.5)
    axis.set_xticks(np.arange(n_layers), tick_labels)


def _layer_names(panel_rows: list[Row], n_layers: int) -> list[str]:
    for row in panel_rows:
        for run in row.runs:
            if len(run.get("layers") or ()) == n_layers:
                return list(run["layers"])
    return [f"layer {i + 1}" for i in range(n_layers)]


def _n_layers(panel_rows: list[Row], key: str) -> int:
    lengths = collections.Counter(len(v) for row in panel_rows for v in row.values(key) if v)
    return lengths.most_common(1)[0][0] if lengths else 0


def _draw_bits(axis, panel_rows: list[Row], colours: dict) -> None:
    n_layers = _n_layers(panel_rows, "bits_per_layer")
    _grouped_bars(axis, panel_rows, colours, lambda row: row.values("bits_per_layer"),
                  _layer_names(panel_rows, n_layers))
    axis.set_ylabel("bits per weight (the tables' bits per layer)")
    axis.grid(True, axis="y", alpha=0.3)


def _full_architecture(panel_rows: list[Row]) -> list[int] | None:
    """The architecture of the full-width dense runs among ``panel_rows`` (``None`` if none)."""
    for row in panel_rows:
        if row.method != "dense":
            continue
        for run in row.runs:
            widths = ((run.get("config") or {}).get("model") or {}).get("widths")
            if run.get("architecture") and (widths is None
                                            or list(widths) == models.default_widths(row.model)):
                return [int(unit) for unit in run["architecture"]]
    return None


def _draw_widths(axis, panel_rows: list[Row], colours: dict) -> None:
    n_layers = _n_layers(panel_rows, "architecture")
    names = _layer_names(panel_rows, n_layers)
    full = _full_architecture(panel_rows)
    if full is not None and len(full) == n_layers:
        bars = [row for row in panel_rows if row.method != "dense"]
        _grouped_bars(axis, bars, colours,
                      lambda row: [[100.0 * unit / whole for unit, whole in zip(units, full)]
                                   for units in row.values("architecture")],
                      [f"{name}\n{whole}" for name, whole in zip(names, full)])
        axis.axhline(100.0, color="black", linewidth=0.8, label="full-width dense network")
        axis.set_ylabel("kept, % of the dense width")
        axis.set_ylim(0, 105)
    else:
        _grouped_bars(axis, panel_rows, colours, lambda row: row.values("architecture"), names)
        axis.set_ylabel("units or channels kept")
        axis.set_yscale("log")
    axis.grid(True, axis="y", alpha=0.3)


def _legend(figure, axes) -> None:
    """One legend below the panels: a row has one colour in every panel, and a legend inside a
    panel covers bars."""
    entries = {}
    for axis in np.ravel(axes):
        for handle, label in zip(*axis.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        figure.legend(list(entries.values()), list(entries), loc="outside lower center",
                      ncols=min(len(entries), 4), fontsize=8, frameon=False)


DRAWERS = {"frontier": _draw_frontier, "bits": _draw_bits, "widths": _draw_widths}


def render_png(kind: str, all_rows: list[Row]) -> bytes:
    """The PNG bytes of figure ``kind`` (a key of :data:`FIGURES`) for ``all_rows``."""
    import matplotlib.style

    datasets, model_names = _panels(all_rows)
    colours = _colours(all_rows)
    # matplotlib's defaults, not the user's matplotlibrc: the same runs draw the same pixels.
    # (The "default" style leaves the backend and other process-wide settings alone.)
    with matplotlib.style.context("default"):
        figure, axes = _new_figure(len(datasets), len(model_names))
        for r, dataset in enumerate(datasets):
            for c, model in enumerate(model_names):
                axis = axes[r][c]
                panel_rows = [row for row in all_rows
                              if (row.dataset, row.model) == (dataset, model)]
                axis.set_title(_title(dataset, model), fontsize=10)
                if not panel_rows:
                    axis.set_axis_off()
                    continue
                DRAWERS[kind](axis, panel_rows, colours)
        _legend(figure, axes)
        buffer = io.BytesIO()
        figure.savefig(buffer, **SAVE_OPTIONS)
    return buffer.getvalue()


def figure_paths(out: pathlib.Path) -> dict[str, pathlib.Path]:
    """Where the figures of the Markdown file ``out`` go: beside it, ``<stem>_<kind>.png``."""
    return {kind: out.with_name(f"{out.stem}_{kind}.png") for kind in FIGURES}


def draw(runs: list[dict], out: pathlib.Path) -> list[str]:
    """Write the figures of ``runs`` beside ``out`` and return their Markdown lines.

    Args:
        runs: the runs of the tables (:func:`bayescomp.tables.find_runs`).
        out: the Markdown file the tables are written to.

    Returns:
        A ``## Figures`` section: a heading and one image link per figure, each link relative
        to ``out``'s directory (the file name), so the Markdown renders wherever it is moved
        along with its figures.
    """
    all_rows = rows(runs)
    lines = ["## Figures", ""]
    for kind, path in figure_paths(pathlib.Path(out)).items():
        atomic.write_bytes(path, render_png(kind, all_rows))
        lines += [f"![{FIGURES[kind]}]({path.name})", ""]
    return lines


def add_figures(text: str, runs: list[dict], out: pathlib.Path) -> str:
    """``text`` (the tables' Markdown) with the figures of ``runs`` drawn and linked.

    The figures go before the first ``## `` section, where a reader starts; the files are
    written beside ``out`` (see :func:`draw`).
    """
    section = "\n".join(draw(runs, out))
    head, marker, tail = text.partition("\n## ")
    if not marker:
        return text.rstrip("\n") + "\n\n" + section
    return f"{head}\n{section}\n## {tail}"
