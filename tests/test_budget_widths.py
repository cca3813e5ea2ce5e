"""Channel widths at a multiply-add budget (``channel_selection.budget_widths``) and the counter
they search with (``counting.macs_of_widths``).

The counter is checked against the closed form of LeNet-5-Caffe's multiply-adds and against the
full count of random masks; the two allocation rules against brute-force enumeration of every
candidate network, so the bisection is tested by something that does not bisect.
"""

import numpy as np
import pytest
from flax import nnx

from bayescomp import channel_selection, counting
from bayescomp.errors import ConfigError
from bayescomp.models import LeNet5
from bayescomp.nn import LayerFactory


def lenet5_macs(widths):
    """LeNet-5-Caffe on 28x28x1, by hand: conv1 5x5 on 24x24, conv2 5x5xC1 on 8x8, fc1 reads
    C2·16, fc2 10 outputs."""
    c1, c2, f1 = widths["conv1"], widths["conv2"], widths["fc1"]
    return 25 * 576 * c1 + 25 * c1 * 64 * c2 + 16 * c2 * f1 + 10 * f1


@pytest.fixture(scope="module")
def lenet5():
    return LeNet5(LayerFactory(), rngs=nnx.Rngs(0))


def test_macs_of_widths_is_the_closed_form_and_the_full_count(lenet5):
    macs = counting.macs_of_widths(lenet5, (28, 28, 1))
    assert macs({}) == lenet5_macs({"conv1": 20, "conv2": 50, "fc1": 500}) == 2_293_000
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = {g: rng.random(n) < 0.5 for g, n in (("conv1", 20), ("conv2", 50), ("fc1", 500))}
        for g in keep:
            keep[g][0] = True
        widths = {g: int(k.sum()) for g, k in keep.items()}
        assert macs(widths) == lenet5_macs(widths) == counting.count(
            lenet5, (28, 28, 1), keep=keep).macs
    with pytest.raises(ConfigError, match="'logits' is not a prunable"):
        macs({"logits": 5})
    for bad in (0, 21, 2.5):
        with pytest.raises(ConfigError, match=r"width of 'conv1' must be an integer in \[1, 20\]"):
            macs({"conv1": bad})


SIZES = {"conv1": 4, "conv2": 6, "fc1": 9}


def small_macs(widths):
    """A cost with cross-layer products like a chain of layers (monotone in every width)."""
    w = {**SIZES, **widths}
    return 7 * w["conv1"] + 3 * w["conv1"] * w["conv2"] + 2 * w["conv2"] * w["fc1"] + w["fc1"]


def _scores(seed):
    rng = np.random.default_rng(seed)
    return {g: rng.dirichlet(np.ones(n)) for g, n in SIZES.items()}


@pytest.mark.parametrize("seed", range(4))
def test_uniform_budget_is_the_largest_share_that_fits(seed):
    scores = _scores(seed)
    dense = small_macs({})
    for budget in (small_macs({"conv1": 1, "conv2": 1, "fc1": 1}), dense // 3, dense // 2,
                   dense - 1, dense):
        got = channel_selection.budget_widths(scores, small_macs, budget, "uniform")
        # Brute force over a fine grid of shares: the widest fraction_widths network that fits.
        fitting = [w for f in np.linspace(1e-3, 1.0, 4001)
                   if small_macs(w := channel_selection.fraction_widths(scores, f)) <= budget]
        want = max(fitting, key=small_macs)
        assert got == want and small_macs(got) <= budget


@pytest.mark.parametrize("seed", range(4))
def test_global_budget_removes_the_lowest_relative_switches_first(seed):
    scores = _scores(seed)
    dense = small_macs({})
    for budget in (dense // 4, dense // 2, (3 * dense) // 4, dense):
        got = channel_selection.budget_widths(scores, small_macs, budget, "global")
        assert small_macs(got) <= budget
        # Independent: walk every channel in order of C·s (a Python sort of tuples), remove
        # while the network is over budget, never the last channel of a group.
        ranked = sorted((SIZES[g] * s, i, g) for i, g in enumerate(SIZES) for s in scores[g])
        widths = dict(SIZES)
        for _, _, g in ranked:
            if small_macs(widths) <= budget:
                break
            if widths[g] > 1:
                widths[g] -= 1
        assert got == widths


def test_budget_errors_and_edges():
    scores = _scores(0)
    smallest = small_macs({g: 1 for g in SIZES})
    assert channel_selection.budget_widths(scores, small_macs, smallest, "global") == {
        g: 1 for g in SIZES}
    with pytest.raises(ConfigError, match="no network within"):
        channel_selection.budget_widths(scores, small_macs, smallest - 1, "global")
    with pytest.raises(ConfigError, match="unknown budget allocation 'greedy'"):
        channel_selection.budget_widths(scores, small_macs, 100, "greedy")
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ConfigError, match="positive integer"):
            channel_selection.budget_widths(scores, small_macs, bad)


def test_uniform_scores_tie_by_group_order_whatever_the_rounding():
    # C·s/Σs of uniform scores is 1 up to rounding that differs with C (0.9999999999999998 for
    # C = 20 and 500, exactly 1 for C = 50); ties must still go to the earlier group first.
    sizes = {"a": 20, "b": 50, "c": 500}
    scores = {g: np.full(n, 1.0 / n) for g, n in sizes.items()}

    def cost(w):
        w = {**sizes, **w}
        return w["a"] + w["b"] + w["c"]

    got = channel_selection.budget_widths(scores, cost, 500, "global")
    assert got == {"a": 1, "b": 1, "c": 498}


def test_raw_scores_and_an_unreachable_uniform_budget():
    # relative=False ranks the scores as they are: group b's small values go first, even though
    # relative to its own mean they are average.
    scores = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([0.1, 0.1, 0.1])}

    def cost(w):
        return sum({"a": 3, "b": 3, **w}.values())

    assert channel_selection.budget_widths(scores, cost, 4, "global", relative=False) == {
        "a": 3, "b": 1}
    assert channel_selection.budget_widths(scores, cost, 4, "global") == {"a": 1, "b": 3}
    # zero scores are fine where nothing is relative to their sum
    zeros = {"a": np.zeros(3), "b": np.zeros(3)}
    assert channel_selection.budget_widths(zeros, cost, 4, "global", relative=False) == {
        "a": 1, "b": 3}
    assert channel_selection.budget_widths(zeros, cost, 4, "uniform") == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="sum to 0"):
        channel_selection.budget_widths(zeros, cost, 4, "global")
    # uniform cannot go below ⌈C/C_max⌉ channels per group: 1 + 1 here, so 1 is refused
    with pytest.raises(ConfigError, match=r"no network within 1 multiply-adds: the smallest the "
                                          r"uniform rule reaches, \{'a': 1, 'b': 1\}, has 2"):
        channel_selection.budget_widths(scores, cost, 1, "uniform")
