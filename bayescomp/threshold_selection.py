r"""Per-layer pruning thresholds chosen from the training data, with an error tolerance.

Bayesian Compression prunes a group when its log dropout rate reaches a per-layer threshold, and the
authors pick the thresholds by hand from the log α histograms (Louizos et al., NIPS 2017,
arXiv:1705.08665; their LeNet-300-100 example, ``example.py`` of
github.com/KarenUllrich/Tutorial_BayesianCompressionForDL, uses −2.8 / −3 / −5). Where the histogram
is bimodal the choice is easy; where it is not (the group horseshoe's, whose log-normal q(z) gives a
continuum of noise levels) a hand choice is arbitrary, and choosing on the *test* set would leak it
into the result. This module makes the choice reproducible and honest:

* **Selection set.** ``examples`` training examples (a fixed, seeded subset of the training
  set; never the test set).
* **Reference.** e₀, the selection-set error (%) of the posterior-mean network with nothing
  pruned.
* **Greedy, layer by layer** in the model's declared order (``layer_names``): layer k (of L)
  gets the *smallest* threshold among its candidates (the most pruning) whose pruned network —
  layers before k at their chosen thresholds, layers after k unpruned — has selection error
  ``≤ e₀ + tolerance · k / L``. The tolerance budget is spread evenly over the layers so the first
  layer cannot spend all of it. Candidates lie between the layer's consecutive distinct log α
  values (pruning one more group per step, and never on a value, so no group sits exactly at
  its threshold), searched by bisection: the error is assumed to grow with the number of
  pruned groups (true up to selection noise; a violated assumption can only cost pruning, never
  the error bound, because the chosen threshold is always one that was evaluated and met it;
  "prune nothing" in layer k is the network layer k − 1 chose, whose evaluated error it keeps,
  and no network is evaluated twice).
* Masks are propagated through the model's channel groups exactly as for the final report
  (:func:`bayescomp.pruning.propagated_masks`), so a unit that loses every outgoing weight loses
  its incoming ones too.
* A candidate that leaves some layer with no weight fails, whatever its error: such a network
  computes the same output for every input. Its error is therefore at least that of always
  predicting the most frequent class, above every bound a sensible tolerance sets, so the rule
  changes no choice made under such a bound (the candidates, and so the bisection's path, are
  unchanged); it only stops an absurd tolerance from emptying a layer. Emptying is monotone in
  the threshold, so bisection stays exact.

The result is a ``{layer: threshold}`` mapping; the run stores it as ``prune_thresholds`` in
``metrics.json``, and :func:`bayescomp.runs.load_trained_model` applies it, so the compressed
file and every later evaluation prune exactly the same groups.

**The check of fixed thresholds** (:func:`pruning_check`, :func:`ruin`). Thresholds nobody chose
on this data (a paper's, e.g. the BC tutorial's −2.8 / −3 / −5, kept as an explicit recipe where
a table reproduces it) can wreck a network trained on other data: on a held-out MNIST subset the
tutorial's thresholds left 4 of a BC-GNJ fc2's 100 units and raised the error from 5.6 % to
64 % (issue 23). So every run that prunes measures, on the same selection subset, the error of
the pruned posterior-mean network against the unpruned one, and a run with fixed thresholds
stops, before writing anything, when they empty a layer or raise that error by more than
``max_error_rise`` percentage points (default :data:`DEFAULT_MAX_ERROR_RISE`), with one line
naming the layer that lost most and the fix (:mod:`bayescomp.procedures.variational`). Refusing,
rather than silently re-selecting, keeps a fixed-threshold recipe what it says it is: a table
row never reports selected thresholds under a fixed recipe's name. Selected thresholds are
measured too (``pruning_check`` in ``metrics.json``) but need no bound: they meet their own
tolerance and never empty a layer. The default bound is loose on purpose: it separates ruin
from the cost of a published recipe (BC-GNJ's fixed thresholds cost at most 1.14 points of test
error in ``results/``, studies included), where selection's ``tolerance`` (0.5) is what
selection may spend.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp import pruning
from bayescomp.models.graph import weight_layers

log = logging.getLogger(__name__)

#: Training examples thresholds are selected and checked on, where ``prune.select.examples``
#: does not say (``conf/method/bc_ghs.yaml``'s value).
DEFAULT_EXAMPLES = 10_000

#: Largest rise (percentage points) of the selection-subset error that fixed thresholds may
#: cause, where ``prune.max_error_rise`` does not say (a run configured before the key existed).
DEFAULT_MAX_ERROR_RISE = 3.0


def set_thresholds(model: nnx.Module, thresholds: Mapping[str, float | None]) -> None:
    """Set ``prune_threshold`` of the named layers of ``model`` (in place)."""
    layers = dict(weight_layers(model))
    unknown = sorted(set(thresholds) - set(layers))
    if unknown:
        raise ValueError(f"thresholds name unknown layers {unknown}; layers: {list(layers)}")
    for name, threshold in thresholds.items():
        layers[name].prune_threshold = None if threshold is None else float(threshold)


def masked_mean_params(model: nnx.Module, masks: Mapping[str, np.ndarray]):
    """Parameters of a point-weight copy of ``model``: posterior means with ``masks`` applied.

    A removed output channel of a layer whose posterior scales its bias (conv group scales)
    loses its bias too, as in the pruned view and the compressed file.

    Returns:
        ``(kernels, biases)`` lists in layer order (float32 numpy arrays).
    """
    kernels, biases = [], []
    for name, layer in weight_layers(model):
        mask = masks[name]
        kernels.append(np.where(mask, np.asarray(layer.posterior.mean(), np.float32), 0.0)
                       .astype(np.float32))
        biases.append(pruning.masked_bias(layer, mask))
    return kernels, biases


def select_thresholds(
    model: nnx.Module,
    error_of: Callable[[list[np.ndarray], list[np.ndarray]], float],
    *,
    tolerance: float,
) -> tuple[dict[str, float | None], dict]:
    """Choose per-layer thresholds greedily (see the module docstring).

    Args:
        model: The trained model; its layers' ``prune_threshold`` is left at the chosen values.
        error_of: ``error_of(kernels, biases)`` → selection-set error in percent of the point
            network with these kernels and biases (layer order).
        tolerance: Allowed rise of the selection error over the unpruned network, in percentage
            points, spread evenly over the layers.

    Returns:
        ``(thresholds, trace)``: the chosen threshold per layer (``None`` for a layer without
        log α) and a record of the search (reference error, per-layer chosen error, number of
        evaluations) for ``metrics.json``.
    """
    layers = weight_layers(model)
    names = [name for name, _ in layers]
    thresholds: dict[str, float | None] = {name: None for name in names}
    set_thresholds(model, thresholds)

    def error_at(candidate: dict[str, float | None]) -> float:
        set_thresholds(model, candidate)
        masks = pruning.propagated_masks(model)
        if not all(np.asarray(mask).any() for mask in masks.values()):
            return math.inf  # an emptied layer never meets the bound (module docstring)
        return float(error_of(*masked_mean_params(model, masks)))

    reference = error_at(thresholds)
    trace = {"reference_error": reference, "tolerance": float(tolerance), "layers": {}}
    evaluations = 1
    # The error of the network as chosen so far (layers before k at their thresholds, the rest
    # unpruned): layer k unpruned is that same network, so it is never evaluated again.
    current_error = reference
    for k, (name, layer) in enumerate(layers, start=1):
        log_alpha = layer.log_alpha()
        if log_alpha is None:
            continue
        # Candidate t_i prunes every group with log α ≥ t_i. The candidates sit between
        # consecutive distinct values (midpoints), one below the smallest (prune everything)
        # and +inf (prune nothing), never on a value: a threshold equal to a group's log α would
        # make that group's fate hang on the last bit of a log α recomputed by another program
        # (the jitted pruned view, another device or XLA version).
        values = np.unique(np.asarray(log_alpha, np.float64).ravel())
        candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2,
                                     [np.inf]])
        bound = reference + tolerance * k / len(layers)
        lo, hi = 0, len(candidates) - 1  # hi (prune nothing here) always meets the bound
        best_error = current_error
        while lo < hi:
            mid = (lo + hi) // 2
            err = error_at({**thresholds, name: float(candidates[mid])})
            evaluations += 1
            if err <= bound:
                hi, best_error = mid, err
            else:
                lo = mid + 1
        chosen = float(candidates[hi])
        thresholds[name] = None if np.isinf(chosen) else chosen
        current_error = best_error
        trace["layers"][name] = {"threshold": thresholds[name], "error": best_error,
                                 "bound": bound}
        log.info("threshold selection: %s log alpha < %s (selection error %.3f %%, bound %.3f %%)",
                 name, thresholds[name], best_error, bound)
    set_thresholds(model, thresholds)
    trace["evaluations"] = evaluations
    return thresholds, trace


def pruning_check(
    model: nnx.Module,
    error_of: Callable[[list[np.ndarray], list[np.ndarray]], float],
) -> dict:
    """Measure what the model's current thresholds do, on the selection subset.

    Args:
        model: The trained model with its layers' ``prune_threshold`` set (left unchanged).
        error_of: As for :func:`select_thresholds`: selection-subset error (%) of a point network.

    Returns:
        ``{"reference_error", "pruned_error", "error_rise", "emptied", "layers"}``: the error of
        the unpruned and of the pruned posterior-mean network, their difference (percentage
        points), the layers the thresholds empty (:func:`bayescomp.pruning.emptied_layers`) and
        what each layer's own threshold keeps (:func:`bayescomp.pruning.kept_groups`).
    """
    masks = pruning.propagated_masks(model)
    everything = {name: np.ones_like(mask, bool) for name, mask in masks.items()}
    reference = float(error_of(*masked_mean_params(model, everything)))
    pruned = float(error_of(*masked_mean_params(model, masks)))
    return {"reference_error": reference, "pruned_error": pruned,
            "error_rise": pruned - reference,
            "emptied": pruning.emptied_layers(model, masks),
            "layers": pruning.kept_groups(model)}


def _keeps(name: str, layer: Mapping) -> str:
    threshold = layer["threshold"]
    at = "" if threshold is None else f" (log α < {threshold:g})"
    return f"{name} keeps {layer['kept']} of {layer['groups']} {layer['unit']}{at}"


def ruin(check: Mapping, max_error_rise: float | None) -> tuple[str, list[str]] | None:
    """What is wrong with the thresholds :func:`pruning_check` measured, if anything.

    Args:
        check: From :func:`pruning_check`.
        max_error_rise: Largest allowed rise of the selection-subset error (percentage points);
            ``None``: only an emptied layer is wrong.

    Returns:
        ``None`` when the thresholds are acceptable, else ``(problem, layers)``: one clause
        naming the emptied layers, or the error rise and the layer whose own threshold kept
        the smallest share of its groups, and the layers whose thresholds to raise.
    """
    layers = check["layers"]
    if check["emptied"]:
        named = [_keeps(name, layers[name]) if name in layers else f"{name} keeps no weight"
                 for name in check["emptied"]]
        return f"the thresholds empty a layer: {'; '.join(named)}", list(check["emptied"])
    if max_error_rise is None or check["error_rise"] <= max_error_rise:
        return None
    worst = min(layers, key=lambda name: layers[name]["kept"] / layers[name]["groups"])
    return (f"the thresholds raise the training-subset error from "
            f"{check['reference_error']:.2f} % to {check['pruned_error']:.2f} %, more than "
            f"{max_error_rise:g} points: {_keeps(worst, layers[worst])}"), [worst]


def selection_subset(x_train, y_train, examples: int, seed: int):
    """A fixed, seeded subset of ``examples`` training examples (all of them if fewer)."""
    n = int(x_train.shape[0])
    if examples >= n:
        return x_train, y_train
    index = jax.random.permutation(jax.random.key(seed), n)[:examples]
    return jnp.asarray(x_train)[index], jnp.asarray(y_train)[index]
