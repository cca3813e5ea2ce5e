r"""Batch-statistics batch normalisation (and a following ReLU) on CPU through oneDNN.

.. math::

    \mu = \tfrac1M\textstyle\sum x,\quad \sigma^2 = \tfrac1M\sum (x-\mu)^2,\quad
    y = \gamma\,\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta
    \quad(\text{then } \max(y, 0) \text{ with } \texttt{relu}),

over the :math:`M` positions of each channel (every axis but the last), with the gradient of
Ioffe & Szegedy (ICML 2015, §3), as in :func:`bayescomp.nn.norm.batch_norm_with_dot_sums`.

Why: in a ResNet-20 training step on XLA:CPU each BatchNorm costs separate passes over its
activation for the mean, for the squared deviations (materialised, as a dot cannot take a
fused producer), for their sum, for the normalisation and ReLU; the backward as many again.
oneDNN's ``batch_normalization`` primitives read the activation twice and write it once
forward, and make two passes backward, with the ReLU's mask kept in a workspace of oneDNN's own
format (a bit per element in its JIT kernels; :func:`_workspace_bytes` asks the primitive).
The ResNet-20 step takes 0.81 of the time (``benchmarks/README.md``). oneDNN's fused *add* and
ReLU (``fuse_norm_add_relu``, a residual block's second BatchNorm) has no implementation in the
wheel's build, so there the addition and ReLU stay XLA's.

One difference from ``jax.nn.relu`` beyond rounding: the fused ReLU maps NaN to 0 (oneDNN
compares ``y > 0``), where ``jax.nn.relu`` keeps it. A diverging step still shows in the batch
statistics (NaN) and so in the running averages, and the loop's end-of-epoch check of the
parameters and statistics stops the run; the loss itself may stay finite a little longer.

The primitives come with the convolutions' library (:mod:`bayescomp.nn.onednn_conv` builds
``csrc/onednn_batch_norm.cc`` beside ``csrc/onednn_conv.cc`` and checks both against NumPy
once per process); they are used where that module's :func:`~bayescomp.nn.onednn_conv.
cpu_conv_kernel` chose oneDNN (one CPU device) and :func:`applies` takes the operand.
"""

from __future__ import annotations

import ctypes
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from bayescomp.nn import onednn_conv


def applies(x) -> bool:
    """Whether :func:`batch_norm` takes ``x`` here: float32, ``(n, h, w, c)`` or ``(n, c)``
    with no empty axis, and oneDNN chosen for this process's CPU kernels."""
    return (jnp.dtype(x.dtype) == jnp.float32 and x.ndim in (2, 4)
            and all(int(d) > 0 for d in x.shape)
            and onednn_conv.cpu_conv_kernel() == "onednn")


def _positions(shape) -> tuple[int, int, int, int]:
    """``(n, h, w, c)`` of an activation ``(n, h, w, c)`` or ``(n, c)``."""
    return (shape[0], shape[1], shape[2], shape[3]) if len(shape) == 4 else (shape[0], 1, 1,
                                                                               shape[1])


@functools.cache
def _workspace_bytes(shape: tuple[int, ...], epsilon: float) -> int:
    """Bytes of oneDNN's ReLU mask for an activation of ``shape`` (its own format)."""
    function = onednn_conv.exported_function("BayescompOnednnBatchNormWorkspaceBytes")
    function.restype = ctypes.c_int64
    n, h, w, c = _positions(shape)
    size = function(ctypes.c_int64(n), ctypes.c_int64(h), ctypes.c_int64(w), ctypes.c_int64(c),
                    ctypes.c_float(epsilon))
    if size < 0:
        raise onednn_conv.OnednnUnavailable(f"oneDNN has no batch normalisation with a ReLU for "
                                            f"shape {shape}")
    return max(int(size), 1)


def _forward_call(x, scale, bias, epsilon: float, relu: bool):
    channels = (x.shape[-1],)
    workspace = _workspace_bytes(tuple(x.shape), epsilon) if relu else 1
    results = (jax.ShapeDtypeStruct(x.shape, jnp.float32),
               jax.ShapeDtypeStruct(channels, jnp.float32),
               jax.ShapeDtypeStruct(channels, jnp.float32),
               jax.ShapeDtypeStruct((workspace,), jnp.uint8))
    target = "bayescomp_onednn_batch_norm_forward" + ("_relu" if relu else "")
    # vmap (several weight draws at once) runs the call once per element.
    return jax.ffi.ffi_call(target, results, vmap_method="sequential")(
        x, scale, bias, epsilon=np.float32(epsilon))


def _backward_call(x, mean, var, cotangent, scale, workspace, epsilon: float, relu: bool):
    channels = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
    target = "bayescomp_onednn_batch_norm_backward" + ("_relu" if relu else "")
    return jax.ffi.ffi_call(target, (jax.ShapeDtypeStruct(x.shape, jnp.float32), channels,
                                     channels), vmap_method="sequential")(
        x, mean, var, cotangent, scale, workspace, epsilon=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm(x, scale, bias, epsilon, relu):
    y, mean, var, _ = _forward_call(x, scale, bias, epsilon, relu)
    return y, mean, var


def _forward(x, scale, bias, epsilon, relu):
    # symbolic_zeros=True: the differentiable arguments arrive as CustomVJPPrimal.
    x, scale, bias = x.value, scale.value, bias.value
    y, mean, var, workspace = _forward_call(x, scale, bias, epsilon, relu)
    return (y, mean, var), (x, mean, var, scale, workspace)


def _backward(epsilon, relu, residuals, cotangents):
    x, mean, var, scale, workspace = residuals
    g, g_mean, g_var = cotangents
    if isinstance(g, SymbolicZero):
        g = jnp.zeros(x.shape, jnp.float32)
    d_x, d_scale, d_bias = _backward_call(x, mean, var, g, scale, workspace, epsilon, relu)
    # The statistics' own cotangents (symbolic zeros where only the running averages read them,
    # through stop_gradient): ∂μ/∂x = 1/M, ∂σ²/∂x = 2(x − μ)/M.
    count = x.size // x.shape[-1]
    if not isinstance(g_mean, SymbolicZero):
        d_x = d_x + g_mean / count
    if not isinstance(g_var, SymbolicZero):
        d_x = d_x + (2.0 * g_var / count) * (x - mean)
    return d_x, d_scale, d_bias


_batch_norm.defvjp(_forward, _backward, symbolic_zeros=True)


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
               relu: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(y, μ_B, σ²_B)``: batch-statistics BatchNorm of ``x`` by oneDNN (module docstring),
    ``y`` through a ReLU where ``relu``; σ²_B is the biased batch variance.

    Args:
        x: ``(n, h, w, c)`` or ``(n, c)`` float32 (:func:`applies`).
        scale: γ, ``(c,)``.
        bias: β, ``(c,)``.
        epsilon: Added to the variance.
        relu: Whether ``y`` is ``max(γx̂ + β, 0)``.

    Returns:
        ``y`` (``x``'s shape) and the batch mean and variance ``(c,)``; reverse-mode
        differentiable once in ``x``, ``scale`` and ``bias`` (through all three outputs).

    Raises:
        OnednnUnavailable: oneDNN cannot be built or loaded here.
        ValueError: an operand :func:`applies` would not take (other than the process check).
    """
    onednn_conv._load()
    if (jnp.dtype(x.dtype) != jnp.float32 or x.ndim not in (2, 4)
            or not all(int(d) > 0 for d in x.shape)):
        raise ValueError(f"oneDNN's batch normalisation takes a non-empty float32 (n, h, w, c) "
                         f"or (n, c) array, got {x.shape} {x.dtype}")
    channels = (x.shape[-1],)
    if scale.shape != channels or bias.shape != channels:
        raise ValueError(f"scale and bias must have shape {channels}, got {scale.shape} and "
                         f"{bias.shape}")
    return _batch_norm(x, scale.astype(jnp.float32), bias.astype(jnp.float32), float(epsilon),
                       bool(relu))


def _numpy_reference(x, scale, bias, cotangent, epsilon, relu):
    """Forward (y, μ, σ²) and gradients (x, γ, β) in float64, by the textbook formulas."""
    x, cotangent = (np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in (x, cotangent))
    mean, var = x.mean(axis=0), x.var(axis=0)
    rstd = 1.0 / np.sqrt(var + epsilon)
    x_hat = (x - mean) * rstd
    y = x_hat * scale + bias
    if relu:
        cotangent = np.where(y > 0, cotangent, 0.0)
        y = np.maximum(y, 0.0)
    count = x.shape[0]
    d_bias = cotangent.sum(axis=0)
    d_scale = (cotangent * x_hat).sum(axis=0)
    d_x = scale * rstd / count * (count * cotangent - d_bias - x_hat * d_scale)
    return y, mean, var, d_x, d_scale, d_bias


def compare_with_numpy() -> None:
    """The forward and backward, with and without the ReLU, of a small ``(n, h, w, c)`` batch
    and an ``(n, c)`` one against :func:`_numpy_reference`; part of
    :mod:`~bayescomp.nn.onednn_conv`'s self check.

    Both have 16 or more channels: oneDNN picks its kernel by the channel count, and below one
    vector of channels (16 floats with AVX-512) it runs other code than the networks' layers do.
    The tolerance, 1e-4 of each result's largest value, is far above float32 rounding of these
    30-term sums (~1e-6) and far below a wrong statistic, layout or mask (O(1)). The values
    keep every pre-ReLU output at least 0.01 from zero, so no ReLU decision rests on rounding.

    Raises:
        OnednnUnavailable: a result that differs, or a runtime that fails.
    """
    rng = np.random.default_rng(0)
    epsilon = 1e-5
    for shape in ((2, 3, 5, 16), (8, 64)):
        x = (1.5 + 2.0 * rng.standard_normal(shape)).astype(np.float32)
        scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
        bias = rng.uniform(-0.5, 0.5, shape[-1]).astype(np.float32)
        cotangent = rng.standard_normal(shape).astype(np.float32)
        # Move inputs whose output would sit within 0.01 of the ReLU's kink.
        flat = x.reshape(-1, shape[-1])
        pre = (x - flat.mean(0)) / np.sqrt(flat.var(0) + epsilon) * scale + bias
        x = np.where(np.abs(pre) < 0.01, x + 0.1, x).astype(np.float32)
        _compare_one(x, scale, bias, cotangent, epsilon)


def _compare_one(x, scale, bias, cotangent, epsilon) -> None:
    @jax.jit
    def ours(x, scale, bias, cotangent):
        out = []
        zero = jnp.zeros(x.shape[-1:], jnp.float32)
        for relu in (False, True):
            outputs, vjp = jax.vjp(lambda a, b, c, r=relu: _batch_norm(a, b, c, epsilon, r), x,
                                   scale, bias)
            out.append((*outputs, *vjp((cotangent, zero, zero))))
        return out

    try:
        got = jax.device_get(ours(x, scale, bias, cotangent))
    except Exception as error:  # the runtime failed (no OpenCL CPU device, a missing library)
        raise onednn_conv.OnednnUnavailable(
            f"running oneDNN's batch normalisation failed: {error}") from error
    names = ("output", "mean", "variance", "input gradient", "scale gradient", "shift gradient")
    for relu, results in zip((False, True), got):
        want = _numpy_reference(x, scale, bias, cotangent, epsilon, relu)
        for name, ours_, theirs in zip(names, results, want):
            ours_ = np.asarray(ours_, np.float64).reshape(theirs.shape)
            scale_ = float(np.max(np.abs(theirs)))
            error = float(np.max(np.abs(ours_ - theirs)))
            if not error <= 1e-4 * scale_:
                raise onednn_conv.OnednnUnavailable(
                    f"oneDNN's batch normalisation{' with ReLU' if relu else ''} of "
                    f"{x.shape}: its {name} differs from the reference by {error:.3g} "
                    f"(scale {scale_:.3g})")
