"""Per-layer histogram figures (log α, weights), drawn cheaply enough to write at every run's end.

Every variational run saves one histogram per layer, Deep Compression one per layer too. Drawn
the obvious way (``ax.hist`` of every value, one rectangle per bin, then ``tight_layout``) these
figures took half of a short run's end and minutes of the test suite. Here the counts come from
:func:`numpy.histogram`, each histogram is one ``stairs`` patch, and the axes sit at fixed
margins sized for these figures' labels: 0.46 of the time a figure (``benchmarks/
model_init_speed.py``, ``benchmarks/README.md``), most of what is left PNG rendering.
"""

from __future__ import annotations

import pathlib

import numpy as np

from bayescomp import atomic

#: Figure size (inches) and the axes' rectangle in figure fractions (left, bottom, width,
#: height): room for log-scale tick labels, an axis label on each side and a title.
FIGSIZE = (5.0, 3.2)
AXES_RECT = (0.14, 0.16, 0.82, 0.74)


def log_count_axes(*, title: str, xlabel: str, ylabel: str):
    """A new figure with one axes: log-scaled counts, fixed margins.

    Returns:
        ``(fig, ax)``; :func:`save` writes and closes the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=FIGSIZE)
    ax = fig.add_axes(AXES_RECT)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def add_histogram(ax, values: np.ndarray, bins, **style) -> None:
    """Draw the histogram of ``values`` over ``bins`` (a count or the edges) as one patch.

    The counts of ``ax.hist(values, bins)`` over the finite values (a log α of −∞, a group
    whose variance underflowed, has no bin; with no finite value nothing is drawn). An empty
    bin draws nothing on the log scale.
    """
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return
    counts, edges = np.histogram(values, bins=bins)
    ax.stairs(counts, edges, fill=True, **style)


def save(fig, path: str | pathlib.Path) -> None:
    """Write ``fig`` to ``path`` as PNG (atomically: a full disk leaves no truncated image)
    and close it."""
    import matplotlib.pyplot as plt

    try:
        atomic.save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
