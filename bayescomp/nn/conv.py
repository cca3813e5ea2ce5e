"""Variational 2-D convolution: ``contract(x, W) = conv(x, W)``, NHWC inputs, HWIO kernels.

With the local reparameterization trick a sampled conv costs two convolutions: one of x with
the kernel means and one of x² with the kernel variances (Molchanov et al. 2017, Eq. 18).

On CPU the convolutions go to oneDNN where it is installed (:mod:`bayescomp.nn.onednn_conv`:
a ResNet-20 training step in 0.72 of the time). Without it, on XLA:CPU a conv whose output
map is at most 2x2 (VGG-16's last block on CIFAR) is written as
one matrix product over image patches (:func:`conv_as_matmul`): XLA's own convolution kernel is
pathologically slow there (forward and input gradient; ``benchmarks/README.md`` has the
numbers), while the patch matrix is tiny and the product a well-shaped GEMM. On larger maps the
patch matmul loses, so every other conv (LeNet-5's, the ResNets', VGG's larger maps), and every
conv on other backends, stays ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.nn import onednn_conv
from bayescomp.nn.layer import VariationalLayer
from bayescomp.nn.onednn_conv import explicit_padding, output_hw
from bayescomp.posteriors.base import Posterior
from bayescomp.priors.base import Prior


class VariationalConv(VariationalLayer):
    """2-D convolution whose kernel has a variational posterior.

    Group posteriors put one scale per *output channel* (Louizos et al. 2017; the authors'
    ``Conv2dGroupNJ``).

    Args:
        in_features: Input channels.
        out_features: Output channels.
        kernel_size: ``(kh, kw)``.
        posterior_cls: Posterior class, constructed as ``posterior_cls((kh, kw, in, out),
            group_axis=-1, rngs=rngs, **posterior_kwargs)``.
        prior: Prior over the kernel.
        rngs: Random streams for initialisation.
        strides: Convolution strides ``(sh, sw)`` (2 where a ResNet stage halves the map).
        padding: ``"VALID"`` (LeNet-5-Caffe), ``"SAME"``, or explicit ``(low, high)`` pairs per
            spatial axis (the CIFAR ResNets' symmetric ``((1, 1), (1, 1))``).
        posterior_kwargs: Initialisation options of the posterior.
        prune_threshold: See :class:`VariationalLayer`.
        input_is_normalized: The input is computed by a BatchNorm (with ReLU, residual add), as
            in the ResNets and VGGs. On XLA:CPU the kernel gradient then reads materialised
            operands (:func:`conv_with_materialized_gradient_operands`); with BatchNorm's dot
            sums (:mod:`bayescomp.nn.norm`) a ResNet-20 step took 0.68-0.70 of the time. Where
            the input is data or a pooled map (LeNet-5) the extra copies cost ~6 % instead
            (``benchmarks/README.md``). Same values either way.
    """

    group_axis = -1  # output channels

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        *,
        posterior_cls: type[Posterior],
        prior: Prior,
        rngs: nnx.Rngs,
        strides: Sequence[int] = (1, 1),
        padding: str | Sequence[tuple[int, int]] = "VALID",
        posterior_kwargs: dict | None = None,
        prune_threshold: float | None = None,
        rng_collection: str = "noise",
        input_is_normalized: bool = False,
    ):
        self.in_features = in_features
        self.input_is_normalized = bool(input_is_normalized)
        self.out_features = out_features
        self.kernel_size = tuple(kernel_size)
        self.strides = tuple(strides)
        self.padding = padding
        posterior = posterior_cls(
            (*self.kernel_size, in_features, out_features), group_axis=self.group_axis,
            rngs=rngs, **(posterior_kwargs or {}),
        )
        super().__init__(
            posterior, prior, out_features, prune_threshold=prune_threshold,
            rng_collection=rng_collection,
        )

    def contract(self, x: jax.Array, kernel: jax.Array,
                 bias: jax.Array | None = None) -> jax.Array:
        """``conv(x, kernel)`` (``(batch, h', w', out)``), plus ``bias`` where given: inside
        oneDNN's call where it applies (:func:`bayescomp.nn.onednn_conv.conv`), else added."""
        if onednn_conv.applies(x, kernel, self.strides, self.padding):
            if (bias is not None and ONEDNN_BIAS and bias.dtype == jnp.float32
                    and bias.shape == kernel.shape[3:]):
                return onednn_conv.conv(x, kernel, self.strides, self.padding, bias=bias)
            y = onednn_conv.conv(x, kernel, self.strides, self.padding)
        else:
            y = self._contract(x, kernel)
        return y if bias is None else y + bias

    def _contract(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        if _patch_matmul_is_faster(x.shape, kernel.shape, self.strides, self.padding):
            return conv_as_matmul(x, kernel, self.strides, self.padding)
        padding = self.padding if isinstance(self.padding, str) else tuple(
            tuple(pair) for pair in self.padding)
        if (self.input_is_normalized and MATERIALIZE_KERNEL_GRADIENT_OPERANDS
                and jax.default_backend() == "cpu"):
            return conv_with_materialized_gradient_operands(x, kernel, self.strides, padding)
        return _conv(x, kernel, self.strides, padding)  # (batch, h', w', out)


def _conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def materialized(a: jax.Array) -> jax.Array:
    """``a`` itself, as an exact identity matrix product over its last axis.

    XLA fuses cheap elementwise producers into their consumers, even when that recomputes them:
    a dot is an operation it cannot fuse a producer into, so its output is an array in memory.
    Exact: each output is ``1·a + 0·(others)`` in float32 (``HIGHEST`` precision); only an
    infinite input would turn into NaN (``0·inf``), and training stops at non-finite values anyway.
    """
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    return jax.lax.dot_general(a, eye, (((a.ndim - 1,), (0,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_with_materialized_gradient_operands(x: jax.Array, kernel: jax.Array,
                                             strides: tuple[int, ...],
                                             padding: str | tuple[tuple[int, int], ...]):
    r"""``lax.conv_general_dilated`` (NHWC, HWIO) whose kernel gradient reads materialised operands.

    The kernel gradient :math:`\partial L/\partial W_{ab\,io} = \sum_{n,h,w} x_{n,h+a,w+b,i}\,
    g_{n,h,w,o}` contracts over the batch, so XLA:CPU's convolution wants both operands with the
    batch as their minor axis and copies them into that layout. Where the operand is the output
    of a BatchNorm, ReLU and residual add, XLA fuses the *recomputation* of those into the
    transposing copy, which then reads five or six arrays in transposed order with strides of
    64 KiB (cache-set conflicts): up to ~20x the time of a plain transpose of the stored array
    (``benchmarks/README.md``). Here the backward passes :func:`materialized` copies of ``x``
    and of the output gradient to the kernel gradient's convolution, so the transposes read one
    stored array each. Values are exactly those of the plain convolution's gradients; the input
    gradient is the plain one.
    """
    return _conv(x, kernel, strides, padding)


def _conv_forward(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_backward(strides, padding, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda xx: _conv(xx, kernel, strides, padding), x)
    (d_x,) = input_vjp(g)
    x_stored, g_stored = materialized(x), materialized(g)
    _, kernel_vjp = jax.vjp(lambda kk: _conv(x_stored, kk, strides, padding), kernel)
    (d_kernel,) = kernel_vjp(g_stored)
    return d_x, d_kernel


conv_with_materialized_gradient_operands.defvjp(_conv_forward, _conv_backward)


#: Whether convs on XLA:CPU use :func:`conv_with_materialized_gradient_operands` (a switch for
#: ``benchmarks/kernel_ab.py``; the results are identical either way).
MATERIALIZE_KERNEL_GRADIENT_OPERANDS = True

#: Whether a conv's bias goes into oneDNN's call (:meth:`VariationalConv.contract`) rather than
#: being added after it (a switch for ``benchmarks/kernel_ab.py``; the values agree to float32
#: rounding).
ONEDNN_BIAS = True

#: Largest output map (positions) that :class:`VariationalConv` computes as a patch matmul on CPU.
PATCH_MATMUL_MAX_POSITIONS = 4


def _patch_matmul_is_faster(x_shape, kernel_shape, strides, padding) -> bool:
    """On CPU: a kernel larger than 1x1 and an output map of at most
    :data:`PATCH_MATMUL_MAX_POSITIONS` positions (module docstring)."""
    if jax.default_backend() != "cpu" or kernel_shape[0] * kernel_shape[1] == 1:
        return False
    pads = explicit_padding(padding, x_shape[1:3], kernel_shape[:2], strides)
    ho, wo = output_hw(x_shape[1:3], kernel_shape[:2], strides, pads)
    return ho * wo <= PATCH_MATMUL_MAX_POSITIONS


def conv_as_matmul(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
                   padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC, HWIO) as one matrix product over image patches.

    The padded input's ``kh·kw`` shifted (and strided) windows are concatenated along the
    channels, ``(n, h', w', kh·kw·c)``, in the order of the kernel's ``(kh, kw, c)`` axes, so the
    HWIO kernel reshaped to ``(kh·kw·c, out)`` multiplies them directly. Equal to the convolution
    up to float32 rounding (another summation order); its gradients are a matmul each and, for
    the input, the windows' shifted adds.

    Args:
        x: Inputs ``(n, h, w, c)``.
        kernel: ``(kh, kw, c, out)``.
        strides: ``(sh, sw)``.
        padding: ``"VALID"``, ``"SAME"`` or ``(low, high)`` per spatial axis.

    Returns:
        ``(n, h', w', out)``.
    """
    n, h, w, c = x.shape
    kh, kw, kc, out = kernel.shape
    if kc != c:
        raise ValueError(f"kernel expects {kc} input channels, got {c}")
    sh, sw = strides
    pads = explicit_padding(padding, (h, w), (kh, kw), (sh, sw))
    ho, wo = output_hw((h, w), (kh, kw), (sh, sw), pads)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    windows = [jax.lax.slice(x, (0, i, j, 0),
                             (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
               for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(windows, axis=-1).reshape(n * ho * wo, kh * kw * c)
    return (patches @ kernel.reshape(kh * kw * c, out)).reshape(n, ho, wo, out)
