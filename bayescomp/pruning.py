"""Pruning masks from posterior statistics, propagated across layers, and what remains.

A weight (or a group of weights) is removed when its log dropout rate reaches the layer's
threshold, ``log α >= t``. Sparse VD uses t = 3 per weight (Molchanov et al. 2017, §5.1: dropout
rate above 0.95; the log α histogram is bimodal around it). Bayesian Compression prunes groups
with per-layer thresholds picked from the histograms (the authors' example: −2.8, −3, −5 for
LeNet-300-100's three layers; methods.md §3.3) — :func:`save_log_alpha_histograms` draws them.

Removing a unit has consequences across layers (Louizos et al. 2017, §3; methods.md §3.3):

* **backward**: when every outgoing weight of a unit is removed in layer l+1 (e.g. its group z in
  a dense layer with scales on the inputs), the unit is unused and its incoming weights in layer l
  go too (its row there);
* **forward**: when a unit's output is exactly zero (a conv channel whose group scale removed its
  kernel *and* its bias), its outgoing weights in layer l+1 go too;
* at the conv → dense boundary one channel is ``H·W`` inputs of the dense layer (NHWC flatten:
  input ``j`` of fc1 is channel ``j mod C``);
* the outputs of the last layer are never removed.

These rules never change the network's predictions; they only make the count of what must be
stored honest. Per-weight (unstructured) masks propagate backward only: a unit with no incoming
weights still outputs ``relu(bias)``.
"""

from __future__ import annotations

import pathlib

import numpy as np
from flax import nnx

from bayescomp.objectives import variational_layers


def own_masks(model: nnx.Module) -> dict[str, np.ndarray]:
    """Each layer's keep mask from its own log α and threshold, kernel-shaped (bool)."""
    masks = {}
    for name, layer in variational_layers(model):
        kernel_shape = layer.posterior.mean().shape
        mask = layer.keep_mask()
        masks[name] = np.ones(kernel_shape, bool) if mask is None else np.array(
            np.broadcast_to(np.asarray(mask) > 0, kernel_shape))
    return masks


def _input_to_unit(n_inputs: int, n_prev_units: int) -> np.ndarray:
    """Map each input of a layer to the unit of the previous layer that feeds it."""
    if n_inputs % n_prev_units:
        raise ValueError(f"cannot map {n_inputs} inputs onto {n_prev_units} previous units")
    return np.arange(n_inputs) % n_prev_units  # identity, or NHWC flatten (channel fastest)


def propagated_masks(model: nnx.Module) -> dict[str, np.ndarray]:
    """Keep masks after cross-layer propagation (see the module docstring), by layer path.

    Layers are taken in definition order and assumed to feed each other in that order (true of
    the LeNets and VGG-like chains; a residual model needs its own wiring).
    """
    layers = variational_layers(model)
    masks = own_masks(model)
    names = [name for name, _ in layers]
    zero_output = {name: layer.posterior.masks_bias for name, layer in layers}
    for _ in range(len(names)):  # reaches a fixed point in at most one pass per boundary
        changed = False
        for prev, nxt in zip(names[:-1], names[1:]):
            prev_mask, next_mask = masks[prev], masks[nxt]
            n_prev_units = prev_mask.shape[-1]
            to_unit = _input_to_unit(next_mask.shape[-2], n_prev_units)
            # An input of `nxt` is used if any of its weights is kept.
            input_used = next_mask.reshape(-1, *next_mask.shape[-2:]).any(axis=(0, 2))
            unit_used = np.zeros(n_prev_units, bool)
            np.logical_or.at(unit_used, to_unit, input_used)
            new_prev = prev_mask & unit_used  # backward: unused units lose their weights
            new_next = next_mask
            if zero_output[prev]:  # forward: a removed channel outputs exactly zero
                unit_alive = prev_mask.reshape(-1, n_prev_units).any(axis=0)
                shape = [1] * next_mask.ndim
                shape[-2] = next_mask.shape[-2]
                new_next = next_mask & unit_alive[to_unit].reshape(shape)
            if (new_prev != prev_mask).any() or (new_next != next_mask).any():
                changed = True
            masks[prev], masks[nxt] = new_prev, new_next
        if not changed:
            break
    return masks


def kept_weight_counts(masks: dict[str, np.ndarray]) -> tuple[int, int, list[int], list[int]]:
    """Count weights (kernels only, no biases) before and after pruning.

    Returns:
        ``(weights_total, weights_kept, total_per_layer, kept_per_layer)``.
    """
    total_per_layer = [int(m.size) for m in masks.values()]
    kept_per_layer = [int(m.sum()) for m in masks.values()]
    return sum(total_per_layer), sum(kept_per_layer), total_per_layer, kept_per_layer


def save_log_alpha_histograms(model: nnx.Module, directory: str | pathlib.Path) -> list[str]:
    """Save one PNG per layer: the histogram of log α with the layer's threshold marked.

    A bimodal histogram with the threshold in the gap is what a well-chosen threshold looks like
    (Molchanov's answer in bayesgroup/variational-dropout-sparsifies-dnn#9).

    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, layer in variational_layers(model):
        log_alpha = layer.log_alpha()
        if log_alpha is None:
            continue
        values = np.asarray(log_alpha).ravel()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(values, bins=100, color="tab:blue")
        ax.set_yscale("log")
        ax.set_xlabel("log α")
        ax.set_ylabel("count (weights or groups)")
        if layer.prune_threshold is not None:
            kept = int((values < layer.prune_threshold).sum())
            ax.axvline(layer.prune_threshold, color="tab:red", linestyle="--",
                       label=f"threshold {layer.prune_threshold:g}: {kept}/{values.size} kept")
            ax.legend(fontsize=8)
        ax.set_title(f"{name}")
        fig.tight_layout()
        path = directory / f"log_alpha_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(path))
    return paths
