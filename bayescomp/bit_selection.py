r"""Per-layer bit widths raised above the posterior rule until rounding changes few predictions.

The posterior rule of Louizos, Ullrich & Welling (NeurIPS 2017, arXiv:1705.08665, "Bit
precision"; :mod:`bayescomp.bit_precision`) gives layer ``l`` the significand bits ``t_l`` that
the *mean* of its kept weights' posterior variances allows, and the network is then rounded to the
fixed-point grid ``2^-t_l``. Two things make that rounding a larger perturbation than the posterior
says the network tolerates:

* the mean over a layer gives weights whose posterior is tighter than the layer's average fewer
  bits than their own variance allows (the reference's ``dist_fun=np.mean``);
* under a group scale (BC-GNJ, BC-GHS) the marginal variance of ``w = z·w̃`` is dominated by the
  group's shared scale uncertainty, ``Var[z]·E[w̃]²``: the posterior allows the whole group to
  be scaled together, not each weight to move independently, which is what rounding does.

Measured on Fashion-MNIST (``results/tradeoff/``): BC-GHS with local scales gets 2 significand
bits for LeNet-5's conv2 and fc2 and rounding adds 0.04–0.40 points of test error to the pruned
network; LeNet-300-100's fc2 gets 2–3 bits and rounding adds 0.1–0.35 points; Sparse VD's
10-6-5-8 bits cost nothing. The paper's own Table 2 prints 10-10-14-13 bits for its BC-GHS
LeNet-5, far more than this rule gives here.

**What is measured: disagreement, not error.** The rounded network should compute the function
the posterior-mean network computes, so the check is the share (%) of examples of a seeded
training subset (:func:`bayescomp.threshold_selection.selection_subset`; never the test set) whose
predicted class rounding changes. The subset's *error* cannot see the damage: the network fits
its training data with margin, and on LeNet-5 BC-GHS (seed 0) rounding to the posterior bits
*lowered* the training-subset error (4.60 → 4.53 %) while it raised the test error by 0.40
points. The disagreement transfers: it changed 1.89 % of the training subset's predictions and
2.51 % of the test set's (seeds 1, 2: 1.35 / 1.79 % and 1.67 / 1.86 %).

**Selection.** The posterior bits are a floor, never lowered. ``disagreement_of`` takes one
entry per layer: its bits, or ``None`` for the layer unrounded.

1. *Each layer alone*, in turn, the others unrounded: the fewest bits ``≥`` its posterior bits
   at which it changes at most ``tolerance / L`` % of the subset's predictions (the budget spread
   evenly over the ``L`` layers with kept weights, as threshold selection spreads its own),
   found by bisection on ``[posterior bits, 23]`` (the disagreement is assumed to fall as bits
   grow, true up to the subset's noise; a violated assumption can only cost bits, as the chosen
   width is one that was evaluated and met its budget, or 23). A layer's bits therefore follow
   its own sensitivity, not the noise of the others'.
2. *All together*: if the combined rounding still changes more than ``tolerance`` %, one layer
   at a time gains one bit, the one whose extra bit lowers the disagreement most per kept weight
   (a bit costs one bit per kept weight of the file), or, where none lowers it, the one that
   leaves the smallest disagreement (among equals the coarsest: fewest bits, then fewest kept
   weights), until the bound holds or every layer has 23 bits.

3. *Trim*: the bound met, each layer in turn (most kept weights first: a bit there saves the
   most) gives back one bit at a time, down to its posterior bits, while the combined rounding
   stays within ``tolerance``: step 1's even split is conservative (layers rarely add up their
   budgets), and this spends what is left where it saves most. Every accepted step meets the
   bound, so noise in the subset can cost bits here but never the bound.

No network is evaluated twice. At 23 bits the rounding step is ``2^-23``, float32's own spacing at
magnitude 1; a search that still ends above the bound is recorded, not hidden: ``met`` is false
in the trace.

(A first version raised bits one at a time from the posterior bits by the greedy rule of step 2
alone. Gains of one or two examples in 10,000 then decided, and a LeNet-300-100 sweep point
raised fc1, the largest layer, to 23 bits for a change of 0.01 %.)

The result and its trace go to ``metrics.json`` (``bit_selection``); ``bits_per_layer`` there is
the selected widths, which the compressed file stores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from bayescomp.bit_precision import MAX_SIGNIFICAND_BITS

log = logging.getLogger(__name__)


def select_bits(
    posterior_bits: Sequence[int],
    kept_weights: Sequence[int],
    disagreement_of: Callable[[tuple[int | None, ...]], float],
    *,
    tolerance: float,
    names: Sequence[str] | None = None,
) -> tuple[list[int], dict]:
    """Raise per-layer bits from the posterior rule's until rounding meets the bound.

    Args:
        posterior_bits: ``t_l`` of the posterior rule per layer (the floor).
        kept_weights: Kept weights per layer (the file's cost of one more bit there); a layer
            with none is never raised (it stores nothing).
        disagreement_of: ``disagreement_of(bits)`` → the share (%) of the selection subset
            whose predicted class differs between the pruned network with each layer rounded
            to its entry of ``bits`` (``None``: left unrounded) and the pruned network
            unrounded.
        tolerance: The largest disagreement (%) accepted.
        names: Layer names for the trace (default ``0 … L-1``).

    Returns:
        ``(bits, trace)``: the selected bits per layer and ``{"posterior_bits", "bits",
        "tolerance", "posterior_disagreement", "disagreement", "met", "evaluations",
        "layers", "steps", "trims"}``: ``layers`` maps each layer to its step-1 search
        (``bits``, ``disagreement`` alone, ``budget``), ``steps`` and ``trims`` list each
        step-2 raise and step-3 return as ``{"layer", "bits", "disagreement"}``.

    Raises:
        ValueError: If the lists differ in length or the tolerance is negative or not finite.
    """
    if len(posterior_bits) != len(kept_weights):
        raise ValueError(f"{len(posterior_bits)} posterior bit widths for "
                         f"{len(kept_weights)} layers")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"the bit-selection tolerance must be a finite number >= 0, got "
                         f"{tolerance!r}")
    names = [str(n) for n in (names if names is not None else range(len(posterior_bits)))]
    count = len(posterior_bits)
    seen: dict[tuple[int | None, ...], float] = {}

    def evaluate(candidate: tuple[int | None, ...]) -> float:
        if candidate not in seen:
            seen[candidate] = float(disagreement_of(candidate))
        return seen[candidate]

    floor = tuple(int(b) for b in posterior_bits)
    first = evaluate(floor)
    stored = [i for i in range(count) if kept_weights[i] > 0]
    budget = tolerance / max(len(stored), 1)
    chosen = list(floor)
    layers = {}
    if first > tolerance:
        for i in stored:  # step 1: each layer alone, the others unrounded

            def alone(b: int, i=i) -> float:
                return evaluate(tuple(b if j == i else None for j in range(count)))

            lo, hi = floor[i], MAX_SIGNIFICAND_BITS
            if alone(lo) > budget:
                while hi - lo > 1:  # invariant: lo misses the budget; hi meets it (or is 23)
                    mid = (lo + hi) // 2
                    if alone(mid) <= budget:
                        hi = mid
                    else:
                        lo = mid
                chosen[i] = hi
            layers[names[i]] = {"bits": chosen[i], "disagreement": alone(chosen[i]),
                                "budget": budget}
    bits = tuple(chosen)
    current = evaluate(bits)
    steps = []
    while current > tolerance:  # step 2: all together
        raisable = [i for i in stored if bits[i] < MAX_SIGNIFICAND_BITS]
        if not raisable:
            break
        tried = {i: evaluate(bits[:i] + (bits[i] + 1,) + bits[i + 1:]) for i in raisable}
        gains = {i: (current - d) / kept_weights[i] for i, d in tried.items() if d < current}
        if gains:
            layer = max(gains, key=lambda i: (gains[i], -i))
        else:  # no single bit helps: the least harmful, and among equals the coarsest layer
            layer = min(raisable, key=lambda i: (tried[i], bits[i], kept_weights[i], i))
        bits = bits[:layer] + (bits[layer] + 1,) + bits[layer + 1:]
        current = tried[layer]
        steps.append({"layer": names[layer], "bits": list(bits), "disagreement": current})
    trims = []
    if current <= tolerance:  # step 3: give back what the even split did not need
        for i in sorted(stored, key=lambda i: (-kept_weights[i], i)):
            while bits[i] > floor[i]:
                trial = bits[:i] + (bits[i] - 1,) + bits[i + 1:]
                disagreement = evaluate(trial)
                if disagreement > tolerance:
                    break
                bits, current = trial, disagreement
                trims.append({"layer": names[i], "bits": list(bits),
                              "disagreement": current})
    log.info("bit selection: %s bits (posterior rule: %s); rounding changes %.2f %% of the "
             "subset's predictions (tolerance %.2f %%)", list(bits), list(floor), current,
             tolerance)
    trace = {"posterior_bits": list(floor), "bits": list(bits),
             "tolerance": float(tolerance), "posterior_disagreement": first,
             "disagreement": current, "met": current <= tolerance, "evaluations": len(seen),
             "layers": layers, "steps": steps, "trims": trims}
    return list(bits), trace
