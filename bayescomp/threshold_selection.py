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
  the error bound, because the chosen threshold is always one that was evaluated and met it).
* Masks are propagated through the model's channel groups exactly as for the final report
  (:func:`bayescomp.pruning.propagated_masks`), so a unit that loses every outgoing weight loses
  its incoming ones too.

The result is a ``{layer: threshold}`` mapping; the run stores it as ``prune_thresholds`` in
``metrics.json``, and :func:`bayescomp.runs.load_trained_model` applies it, so the compressed
file and every later evaluation prune exactly the same groups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp import pruning
from bayescomp.models.graph import weight_layers

log = logging.getLogger(__name__)


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
        kernels, biases = masked_mean_params(model, pruning.propagated_masks(model))
        return float(error_of(kernels, biases))

    reference = error_at(thresholds)
    trace = {"reference_error": reference, "tolerance": float(tolerance), "layers": {}}
    evaluations = 1
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
        best_error = error_at({**thresholds, name: None})
        evaluations += 1
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
        trace["layers"][name] = {"threshold": thresholds[name], "error": best_error,
                                 "bound": bound}
        log.info("threshold selection: %s log alpha < %s (selection error %.3f %%, bound %.3f %%)",
                 name, thresholds[name], best_error, bound)
    set_thresholds(model, thresholds)
    trace["evaluations"] = evaluations
    return thresholds, trace


def selection_subset(x_train, y_train, examples: int, seed: int):
    """A fixed, seeded subset of ``examples`` training examples (all of them if fewer)."""
    n = int(x_train.shape[0])
    if examples >= n:
        return x_train, y_train
    index = jax.random.permutation(jax.random.key(seed), n)[:examples]
    return jnp.asarray(x_train)[index], jnp.asarray(y_train)[index]
