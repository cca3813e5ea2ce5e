"""From a trained variational network to the pruned, bit-reduced network that is evaluated.

Louizos et al. (2017) evaluate the network whose kept weights are the posterior means rounded to
each layer's significand bits, with no fine-tuning (methods.md §3.4, §3.5). This module builds
exactly that network as a model of the same class with point weights (a ``Delta`` posterior), so
its error is measured by the same evaluation code as every other network.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp.bit_precision import BitPrecision, bit_precision, round_to_bits
from bayescomp.nn.factory import LayerFactory
from bayescomp.objectives import variational_layers


@dataclasses.dataclass
class QuantizedNetwork:
    """The kept, rounded weights of every layer (kernel layout of the model).

    Attributes:
        names: Layer paths, in definition order.
        kernels: Rounded posterior-mean kernels with removed weights set to exactly 0.
        biases: Biases (float32; zero for removed output channels).
        masks: Keep masks after propagation.
        precision: Bits per layer and exponent bits.
        codebooks: ``None`` for fixed-point weights (every kept weight is ``k·2^-t``, the
            Bayesian Compression rounding). Otherwise one entry per layer: ``None`` for a
            fixed-point layer, or the sorted distinct float32 values its kept weights take
            (weight sharing: Deep Compression's k-means centroids, soft weight-sharing's
            mixture means), which the file stores once and indexes.
    """

    names: list[str]
    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    masks: list[np.ndarray]
    precision: BitPrecision
    codebooks: list[np.ndarray | None] | None = None


def quantize(model: nnx.Module, masks: dict[str, np.ndarray]) -> QuantizedNetwork:
    """Bit precision from the posterior variances, then rounding of the kept posterior means.

    Args:
        model: A trained model of variational layers.
        masks: Propagated keep masks by layer path (:func:`bayescomp.pruning.propagated_masks`).

    Returns:
        The :class:`QuantizedNetwork`.
    """
    layers = variational_layers(model)
    names = [name for name, _ in layers]
    means = [np.asarray(layer.posterior.mean(), np.float64) for _, layer in layers]
    variances = [np.asarray(layer.posterior.variance(), np.float64) for _, layer in layers]
    mask_list = [masks[name] for name in names]
    precision = bit_precision(means, variances, mask_list)
    kernels, biases = [], []
    for (name, layer), mean, mask, bits in zip(layers, means, mask_list, precision.bits_per_layer):
        # np.where, not a product: a removed weight is +0.0 exactly (never -0.0), so the kernels
        # survive a round trip through the compressed file bit for bit.
        kernels.append(np.where(mask, np.asarray(round_to_bits(mean, bits)), 0.0).astype(
            np.float32))
        bias = np.asarray(layer.bias[...], np.float32)
        if layer.posterior.masks_bias:  # a removed output channel takes its bias with it
            bias = bias * mask.reshape(-1, mask.shape[-1]).any(axis=0)
        biases.append(bias)
    return QuantizedNetwork(names, kernels, biases, mask_list, precision)


def point_model(model_cls, kernels, biases, *, input_shape, num_classes) -> nnx.Module:
    """A model of ``model_cls`` with point weights set to ``kernels`` and ``biases``.

    Args:
        model_cls: A model class from :mod:`bayescomp.models`.
        kernels: One kernel per layer, in definition order, the model's layout.
        biases: One bias per layer.
        input_shape: ``(h, w, c)``.
        num_classes: Number of outputs.

    Returns:
        The deterministic model (point weights need no random key in any view).
    """
    model = model_cls(LayerFactory(), rngs=nnx.Rngs(params=0), input_shape=tuple(input_shape),
                      num_classes=num_classes)
    layers = variational_layers(model)
    if len(layers) != len(kernels):
        raise ValueError(f"{model_cls.__name__} has {len(layers)} layers, got {len(kernels)} kernels")
    for (_, layer), kernel, bias in zip(layers, kernels, biases):
        layer.posterior.weight[...] = jnp.asarray(kernel, jnp.float32)
        layer.bias[...] = jnp.asarray(bias, jnp.float32)
    return model
