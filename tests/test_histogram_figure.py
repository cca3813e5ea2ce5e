"""Histogram figures (bayescomp/histogram_figure.py): the counts ``ax.hist`` would draw."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bayescomp import histogram_figure  # noqa: E402


def _drawn_counts(ax):
    (patch,) = ax.patches  # one stairs patch per histogram
    return np.asarray(patch.get_data().values), np.asarray(patch.get_data().edges)


def test_counts_and_edges_are_matplotlibs_own_hist():
    values = np.random.default_rng(0).standard_t(3, size=5000)
    fig, ax = histogram_figure.log_count_axes(title="t", xlabel="x", ylabel="y")
    histogram_figure.add_histogram(ax, values, 37)
    counts, edges = _drawn_counts(ax)
    want_counts, want_edges, _ = plt.subplots()[1].hist(values, bins=37)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(edges, want_edges, rtol=0, atol=0)
    assert counts.sum() == values.size
    plt.close("all")


def test_non_finite_values_have_no_bin_and_all_non_finite_draws_nothing(tmp_path):
    fig, ax = histogram_figure.log_count_axes(title="t", xlabel="x", ylabel="y")
    histogram_figure.add_histogram(ax, np.array([1.0, -np.inf, np.nan, 2.0, 2.0, np.inf]), 4)
    counts, edges = _drawn_counts(ax)
    assert counts.sum() == 3 and edges[0] == 1.0 and edges[-1] == 2.0
    histogram_figure.add_histogram(ax, np.array([np.nan, -np.inf]), 4)
    assert len(ax.patches) == 1
    histogram_figure.save(fig, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)  # save closes it
