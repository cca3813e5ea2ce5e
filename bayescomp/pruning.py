"""Pruning masks from posterior statistics, and counts of the weights that remain.

A weight (or a group of weights) is removed when its log dropout rate reaches the layer's
threshold, ``log α >= t``: Molchanov et al. (2017) use t = 3 for sparse variational dropout
(binary dropout rate above 0.95; the log α histogram is bimodal around it).
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from bayescomp.objectives import variational_layers


def weight_masks(model: nnx.Module) -> dict[str, np.ndarray]:
    """Boolean keep mask of every layer's kernel, by layer path.

    Args:
        model: A model built from variational layers.

    Returns:
        ``{layer_path: bool array of the kernel's shape}``; a layer with no threshold (or a point
        posterior) keeps everything.
    """
    masks = {}
    for name, layer in variational_layers(model):
        kernel_shape = layer.posterior.mean().shape
        mask = layer.keep_mask()
        keep = np.ones(kernel_shape, bool) if mask is None else np.broadcast_to(
            np.asarray(mask) > 0, kernel_shape)
        masks[name] = np.array(keep)
    return masks


def kept_weight_counts(model: nnx.Module) -> tuple[int, int, list[int], list[int]]:
    """Count weights (kernels only, no biases) before and after pruning.

    Returns:
        ``(weights_total, weights_kept, total_per_layer, kept_per_layer)``.
    """
    masks = weight_masks(model)
    total_per_layer = [int(m.size) for m in masks.values()]
    kept_per_layer = [int(m.sum()) for m in masks.values()]
    return sum(total_per_layer), sum(kept_per_layer), total_per_layer, kept_per_layer
