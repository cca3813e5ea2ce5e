r"""A channel method's network as the plain network it equals in evaluation, and back.

The channel-pruning methods train a network with extra per-channel factors: a saliency
BatchNorm y = γ(x̂ + β̃) (variational CNN pruning), a BatchNorm with an L1 on γ (network
slimming), or, in a network without BatchNorm (LeNet-5), a per-channel factor γ_c after the
channel's ReLU (:mod:`bayescomp.nn.saliency_scale`, :mod:`bayescomp.nn.slimming_scale`). In the
evaluation view each is a fixed affine map per channel, so the trained network *is* a plain
network of the same architecture (point weights, plain BatchNorms, no channel modules), which is
what pruning masks, fine-tuning, quantization, the ``.bcz`` file and export all work on:

* a saliency BatchNorm becomes the BatchNorm with scale μ and shift μβ̃
  (:meth:`~bayescomp.nn.saliency_norm.SaliencyBatchNorm.eval_affine`), the same statistics and ε;
* a slimming BatchNorm is a BatchNorm already; its γ, β, statistics and ε are copied;
* a channel module of group g with factor a (``eval_scale()``: μ or γ) multiplies channel c of g
  by a_c right before g's consumers read it, so it is multiplied into their input rows: row
  p·C + c of every consumer (every flatten position p) times a_c. A linear map of the rows, so
  exact up to float rounding.

:func:`load_plain` goes the other way: a finished dense run's weights, biases and BatchNorms
loaded into the network with channel modules (saliency BatchNorms take μ = γ, β̃ = β/γ; the
channel modules stay at their identity initialisation), or into a variational network (each
posterior's mean set to the dense kernel: :meth:`~bayescomp.posteriors.base.Posterior.load_mean`),
so training can start from it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp.models.graph import batch_norms, channel_graph, weight_layers
from bayescomp.nn.saliency_norm import SaliencyBatchNorm


def channel_modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """The model's per-channel modules by channel group (``model.channel_modules()``; none for a
    model without the ``layers.channel`` hook)."""
    modules = getattr(model, "channel_modules", None)
    return dict(modules()) if callable(modules) else {}


def norm_affine(norm) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` of a BatchNorm's evaluation view, y = x̂·scale + shift."""
    if isinstance(norm, SaliencyBatchNorm):
        scale, shift = norm.eval_affine()
    else:
        scale, shift = norm.scale[...], norm.bias[...]
    return np.asarray(scale, np.float32), np.asarray(shift, np.float32)


def fold_into(source: nnx.Module, plain: nnx.Module) -> nnx.Module:
    """Set ``plain`` (same class and widths, no channel modules) to ``source``'s evaluation view.

    Args:
        source: A trained network with saliency or slimming BatchNorms and/or channel modules.
        plain: The same architecture built by a plain factory (``LayerFactory()``).

    Returns:
        ``plain``, whose evaluation view equals ``source``'s (module docstring).

    Raises:
        ValueError: the two networks do not have the same layers and BatchNorms.
    """
    layers, targets = dict(weight_layers(source)), dict(weight_layers(plain))
    if list(layers) != list(targets):
        raise ValueError(f"cannot fold {list(layers)} into {list(targets)}")
    kernels = {name: np.asarray(layer.posterior.mean(), np.float32)
               for name, layer in layers.items()}
    graph = channel_graph(plain)
    for group_name, module in channel_modules(source).items():
        factor = np.asarray(module.eval_scale(), np.float32)
        for consumer in graph.group(group_name).consumers:
            rows = np.tile(factor, consumer.positions)  # row p·C + c is channel c at position p
            kernels[consumer.layer] = kernels[consumer.layer] * rows[:, None]
    for name, layer in layers.items():
        targets[name].posterior.weight[...] = jnp.asarray(kernels[name])
        targets[name].bias[...] = jnp.asarray(np.asarray(layer.mean_bias(), np.float32))
    norms, plain_norms = batch_norms(source), batch_norms(plain)
    if sorted(norms) != sorted(plain_norms):
        raise ValueError(f"cannot fold BatchNorms {sorted(norms)} into {sorted(plain_norms)}")
    for path, norm in norms.items():
        target = plain_norms[path]
        scale, shift = norm_affine(norm)
        target.scale[...] = jnp.asarray(scale)
        target.bias[...] = jnp.asarray(shift)
        target.mean[...] = norm.mean[...]
        target.var[...] = norm.var[...]
        target.epsilon = norm.epsilon
    return plain


def load_plain(model: nnx.Module, plain: nnx.Module) -> nnx.Module:
    """Load a plain (dense) network's weights, biases and BatchNorms into ``model`` in place.

    Saliency BatchNorms start from the plain one (:meth:`~bayescomp.nn.saliency_norm.
    SaliencyBatchNorm.load_batch_norm`), other BatchNorms take its γ, β and statistics; the
    channel modules of ``model`` keep their values (the identity at initialisation).

    Returns:
        ``model``.
    """
    layers, sources = dict(weight_layers(model)), dict(weight_layers(plain))
    if list(layers) != list(sources):
        raise ValueError(f"cannot load {list(sources)} into {list(layers)}")
    for name, layer in layers.items():
        want, have = np.shape(layer.posterior.mean()), np.shape(sources[name].posterior.mean())
        if want != have:
            raise ValueError(f"layer {name} has a {have} kernel, this model's is {want}")
        layer.bias[...] = layer.posterior.load_mean(
            jnp.asarray(sources[name].posterior.mean(), jnp.float32),
            jnp.asarray(sources[name].mean_bias(), jnp.float32))
    norms, plain_norms = batch_norms(model), batch_norms(plain)
    if sorted(norms) != sorted(plain_norms):
        raise ValueError(f"cannot load BatchNorms {sorted(plain_norms)} into {sorted(norms)}")
    for path, norm in norms.items():
        source = plain_norms[path]
        if isinstance(norm, SaliencyBatchNorm):
            norm.load_batch_norm(source)
            continue
        for field in ("scale", "bias", "mean", "var"):
            getattr(norm, field)[...] = getattr(source, field)[...]
    return model
