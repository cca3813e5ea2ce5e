r"""2-D convolution on CPU through oneDNN, an XLA custom call with its own gradients.

XLA:CPU runs convolutions on Eigen's spatial-convolution kernels. On the development CPU they
reach about a third of XLA's own fp32 GEMM rate, and a ResNet-20 training step spends 440 of
its 677 CPU-ms in them (``benchmarks/README.md``); PyTorch's whole step, whose convolutions are
oneDNN's, takes ~480. oneDNN (Intel's deep-learning kernel library) generates its convolution
kernels at run time for the CPU it runs on; here the forward pass, the input gradient and the
kernel gradient of one 3x3 ResNet-20 layer at batch 128 took 3–4× less time than XLA's
(``benchmarks/README.md``). This module hands them to oneDNN:

.. math::

    y = x \star W,\qquad
    \frac{\partial L}{\partial x} = \bar y \star^{\top} W,\qquad
    \frac{\partial L}{\partial W_{ab\,io}}
    = \sum_{n,h,w} x_{n,\,s_h h + a - p_t,\,s_w w + b - p_l,\,i}\;\bar y_{n,h,w,o},

each one oneDNN primitive (``convolution_forward``, ``convolution_backward_data``,
``convolution_backward_weights``), called through ``jax.ffi`` (``csrc/onednn_conv.cc``) and
tied together with ``jax.custom_vjp``. Values equal ``lax.conv_general_dilated``'s up to
float32 summation order (another blocking of the same sums).

oneDNN comes from PyPI (``pip install 'bayescomp[onednn]'``: the ``onednn`` wheel, whose
CPU engine runs through SYCL on Intel's OpenCL CPU runtime, and ``onednn-devel``'s headers).
The handlers are compiled once with the system's C++ compiler against those headers and
jaxlib's XLA FFI headers, into ``$XDG_CACHE_HOME/bayescomp`` (``~/.cache/bayescomp``), keyed by
a hash of the sources and both versions; the same library holds the batch normalisation of
:mod:`bayescomp.nn.onednn_batch_norm` (``csrc/onednn_batch_norm.cc``), checked with the
convolution when it loads. Whether the library is used is
:func:`cpu_conv_kernel`'s answer; anything it cannot do (no wheel, no compiler, a failed self
check) leaves XLA's convolution in place, with the reason in :func:`unavailable_reason`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

#: Environment variable that picks the CPU convolution: ``auto`` (oneDNN where it loads, the
#: default), ``onednn`` (oneDNN or an error saying why not), ``xla`` (XLA's own).
KERNEL_ENV = "BAYESCOMP_CPU_CONV"
KERNELS = ("auto", "onednn", "xla")

#: The C++ sources of the one library: these convolutions, and the batch normalisation of
#: :mod:`bayescomp.nn.onednn_batch_norm`, which loads it through :func:`_load` too.
_SOURCES = (Path(__file__).with_name("csrc") / "onednn_conv.cc",
            Path(__file__).with_name("csrc") / "onednn_batch_norm.cc")
#: What both include: the shared engine, stream and lock (part of the build's fingerprint).
_HEADERS = (Path(__file__).with_name("csrc") / "onednn_runtime.h",)
#: XLA target name -> exported handler symbol.
_TARGETS = {
    "bayescomp_onednn_conv_forward": "BayescompOnednnConvForward",
    "bayescomp_onednn_conv_input_gradient": "BayescompOnednnConvInputGradient",
    "bayescomp_onednn_conv_kernel_gradient": "BayescompOnednnConvKernelGradient",
    "bayescomp_onednn_conv_forward_bias": "BayescompOnednnConvForwardBias",
    "bayescomp_onednn_conv_kernel_gradient_bias": "BayescompOnednnConvKernelGradientBias",
    "bayescomp_onednn_batch_norm_forward": "BayescompOnednnBatchNormForward",
    "bayescomp_onednn_batch_norm_forward_relu": "BayescompOnednnBatchNormForwardRelu",
    "bayescomp_onednn_batch_norm_backward": "BayescompOnednnBatchNormBackward",
    "bayescomp_onednn_batch_norm_backward_relu": "BayescompOnednnBatchNormBackwardRelu",
}


class OnednnUnavailable(RuntimeError):
    """oneDNN's convolution cannot be built or loaded here; the message says why."""


def _library_roots() -> list[Path]:
    """Where the ``onednn`` wheels put ``lib/`` and ``include/``: this environment's prefix
    (a virtualenv's or the interpreter's), the user base, or ``$BAYESCOMP_ONEDNN_ROOT``."""
    roots = [os.environ.get("BAYESCOMP_ONEDNN_ROOT"), sys.prefix, sysconfig.get_paths()["data"],
             sys.base_prefix]
    try:
        import site
        roots.append(site.getuserbase())
    except Exception:  # site may be absent in embedded interpreters
        pass
    unique = []
    for root in roots:
        if root and Path(root) not in unique:
            unique.append(Path(root))
    return unique


def _find_onednn() -> tuple[Path, Path]:
    """``(include_dir, lib_dir)`` of the oneDNN wheels, or :class:`OnednnUnavailable`."""
    for root in _library_roots():
        include, lib = root / "include", root / "lib"
        if (include / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and (lib / "libdnnl.so").exists():
            return include, lib
    raise OnednnUnavailable(
        "oneDNN not found (pip install 'bayescomp[onednn]' installs the onednn and onednn-devel "
        f"wheels; searched {', '.join(str(r) for r in _library_roots())})")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bayescomp" / "onednn_conv"


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise OnednnUnavailable("no C++ compiler (set CXX or install g++) to build the oneDNN "
                            "convolution")


#: Seconds a build may take (it takes ~5 s on a 2-core VM) before it is given up.
BUILD_TIMEOUT_S = 600


def _build(include: Path, lib: Path) -> Path:
    """Compiles :data:`_SOURCES` into one library once per source, jaxlib, oneDNN, compiler and
    flags.

    Raises:
        OnednnUnavailable: a missing header or compiler, a failed or timed-out build, or a cache
            folder that cannot be written (each with its own message).
    """
    import jaxlib

    compiler = _compiler()
    ffi_include = Path(jax.ffi.include_dir())
    version_header = include / "oneapi" / "dnnl" / "dnnl_version.h"
    # DT_RPATH (not RUNPATH) so that libdnnl's own dependencies (TBB, SYCL, Intel's runtime
    # libraries, all in the wheels' lib/) are found without LD_LIBRARY_PATH.
    flags = ["-O2", "-std=c++17", "-shared", "-fPIC", f"-I{ffi_include}", f"-I{include}",
             f"-L{lib}", "-ldnnl", "-Wl,--disable-new-dtags", f"-Wl,-rpath,{lib}"]
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=60, check=False).stdout
        fingerprint = hashlib.sha256()
        for part in (*(source.read_bytes() for source in (*_SOURCES, *_HEADERS)),
                     jaxlib.__version__,
                     version_header.read_bytes(), str(lib.resolve()), compiler, version,
                     " ".join(flags)):
            fingerprint.update(part if isinstance(part, bytes) else part.encode())
    except (OSError, subprocess.SubprocessError) as error:
        raise OnednnUnavailable(f"cannot read what the oneDNN convolution is built from "
                                f"({error}); reinstall the onednn-devel wheel") from error
    target = _cache_dir() / fingerprint.hexdigest()[:16] / "onednn_conv.so"
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed into place: two processes (pytest-xdist workers)
        # building at once each produce a whole file, and the last rename wins.
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            built = Path(scratch) / target.name
            command = [compiler, *map(str, _SOURCES), *flags, "-o", str(built)]
            try:
                result = subprocess.run(command, capture_output=True, text=True,
                                        timeout=BUILD_TIMEOUT_S, check=False)
            except (OSError, subprocess.SubprocessError) as error:
                raise OnednnUnavailable(f"running the compiler ({' '.join(command)}) failed: "
                                        f"{error}") from error
            if result.returncode != 0:
                raise OnednnUnavailable(
                    f"building the oneDNN convolution failed ({' '.join(command)}): "
                    f"{result.stderr.strip()[-2000:]}")
            os.replace(built, target)
    except OSError as error:  # an unwritable or full cache folder
        raise OnednnUnavailable(f"cannot write the oneDNN convolution's build under "
                                f"{_cache_dir()} ({error}); set XDG_CACHE_HOME to a writable "
                                f"folder") from error
    return target


# What loading gave in this process: the library registered with XLA (handlers cannot be
# unregistered, and a second library's could not be registered under the same names), and the
# outcome of the last attempt (None: usable), so that a failure is not retried on every call.
_REGISTERED: Path | None = None
_LIBRARY: ctypes.CDLL | None = None
_OUTCOME: list[OnednnUnavailable | None] = []
_LOCK = threading.Lock()


def _load() -> None:
    """Builds, loads and registers the handlers, then checks the convolution and the batch
    normalisation and their gradients against NumPy (:func:`_self_check`): once per process, the
    outcome remembered (:func:`_forget` starts over). One outcome for both: the library is one.

    Raises:
        OnednnUnavailable: why the library cannot be used here (the same each time).
    """
    with _LOCK:
        if not _OUTCOME:
            try:
                _load_once()
                _OUTCOME.append(None)
            except OnednnUnavailable as error:
                _OUTCOME.append(error)
        if _OUTCOME[0] is not None:
            raise _OUTCOME[0]


def _forget() -> None:
    """Forget the outcome of :func:`_load` (tests that change what it finds)."""
    with _LOCK:
        _OUTCOME.clear()


def exported_function(name: str):
    """The library's C function ``name`` (ctypes), loading the library first.

    Raises:
        OnednnUnavailable: the library cannot be used here.
    """
    if _LIBRARY is None:  # (not _load() while it runs: the self check asks for these too)
        _load()
    return getattr(_LIBRARY, name)


def _load_once() -> None:
    global _REGISTERED, _LIBRARY
    if jax.default_backend() != "cpu":
        raise OnednnUnavailable(f"the default backend is {jax.default_backend()}, not cpu")
    include, lib = _find_onednn()
    # oneDNN's CPU engine in these wheels runs through SYCL on Intel's OpenCL CPU runtime, which
    # the OpenCL loader finds through this variable (read when the first engine is created).
    icd = lib / "libintelocl.so"
    if icd.exists():
        os.environ.setdefault("OCL_ICD_FILENAMES", str(icd))
    path = _build(include, lib)
    if _REGISTERED is None:
        try:
            library = ctypes.CDLL(str(path))
            for name, symbol in _TARGETS.items():
                jax.ffi.register_ffi_target(name,
                                            jax.ffi.pycapsule(getattr(library, symbol)),
                                            platform="cpu")
        except Exception as error:  # a library that does not load, a rejected registration
            raise OnednnUnavailable(f"loading {path} into XLA failed: {error}") from error
        _REGISTERED, _LIBRARY = path, library
    _self_check()


def _self_check() -> None:
    """One strided, asymmetrically padded convolution and both gradients, without and with a
    bias (and its gradient), against a float64 NumPy evaluation of the sums in the module
    docstring; then the batch normalisation
    (:func:`bayescomp.nn.onednn_batch_norm.compare_with_numpy`).

    NumPy, not XLA, is the reference so that the check costs one small compilation per process
    (it runs in every process that trains a conv net, subprocesses of the tests included). The
    tolerance, 1e-4 of the largest value, is far above float32 rounding of these 18-term sums
    (~1e-6) and far below any indexing or padding fault (O(1))."""
    from bayescomp.nn import onednn_batch_norm  # (it imports this module)

    with jax.ensure_compile_time_eval():  # also when first asked while a step is traced
        _compare_with_numpy()
        onednn_batch_norm.compare_with_numpy()


def _numpy_reference(x, kernel, cotangent, strides, pads):
    """Forward, input gradient and kernel gradient, tap by tap, in float64."""
    x, kernel, cotangent = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
    (sh, sw), ((top, bottom), (left, right)) = strides, pads
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    _, ho, wo, _ = cotangent.shape
    y = np.zeros(cotangent.shape)
    d_padded = np.zeros(padded.shape)
    d_kernel = np.zeros(kernel.shape)
    for a in range(kernel.shape[0]):
        for b in range(kernel.shape[1]):
            window = (slice(None), slice(a, a + sh * (ho - 1) + 1, sh),
                      slice(b, b + sw * (wo - 1) + 1, sw), slice(None))
            y += padded[window] @ kernel[a, b]
            d_padded[window] += cotangent @ kernel[a, b].T
            d_kernel[a, b] = np.einsum("nhwi,nhwo->io", padded[window], cotangent)
    d_x = d_padded[:, top:top + x.shape[1], left:left + x.shape[2], :]
    return y, d_x, d_kernel


def _compare_with_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    strides, pads = (2, 1), ((1, 0), (0, 1))
    ho, wo = output_hw(x.shape[1:3], kernel.shape[:2], strides, pads)
    cotangent = rng.standard_normal((2, ho, wo, 4)).astype(np.float32)

    bias = rng.standard_normal(4).astype(np.float32)

    @jax.jit
    def ours(x, kernel, bias, cotangent):
        y, vjp = jax.vjp(lambda a, b: _conv(a, b, strides, pads), x, kernel)
        y_b, vjp_b = jax.vjp(lambda a, b, c: _conv_bias(a, b, c, strides, pads), x, kernel, bias)
        return (y, *vjp(cotangent), y_b, *vjp_b(cotangent))

    try:
        got = jax.device_get(ours(x, kernel, bias, cotangent))
    except Exception as error:  # the runtime failed (no OpenCL CPU device, a missing library)
        raise OnednnUnavailable(f"running the oneDNN convolution failed: {error}") from error
    y, d_x, d_kernel = _numpy_reference(x, kernel, cotangent, strides, pads)
    want = (y, d_x, d_kernel, y + bias, d_x, d_kernel, cotangent.sum(axis=(0, 1, 2)))
    names = ("output", "input gradient", "kernel gradient", "output with bias",
             "input gradient with bias", "kernel gradient with bias", "bias gradient")
    for name, ours_, theirs in zip(names, got, want):
        scale = float(np.max(np.abs(theirs)))
        error = float(np.max(np.abs(ours_ - theirs)))
        if not error <= 1e-4 * scale:
            raise OnednnUnavailable(f"the oneDNN convolution's {name} differs from the "
                                    f"reference by {error:.3g} (scale {scale:.3g})")


def unavailable_reason() -> str | None:
    """Why oneDNN's convolution cannot be used here, or ``None`` where it can."""
    try:
        _load()
    except OnednnUnavailable as error:
        return str(error)
    return None


@functools.cache
def cpu_conv_kernel() -> str:
    """``"onednn"`` or ``"xla"``: the convolution that CPU training steps use in this process.

    ``$BAYESCOMP_CPU_CONV`` decides (:data:`KERNEL_ENV`): ``auto`` (default) takes oneDNN
    where it builds, loads and passes its self check, and XLA's otherwise (logged once);
    ``onednn`` insists; ``xla`` keeps XLA's. Off CPU, and on several CPU devices (the custom
    call has no sharding rule: XLA would gather a batch-sharded input and convolve all of it on
    each device), the answer is ``"xla"`` (and ``onednn`` raises there, saying why).

    Raises:
        ValueError: An unknown value of the variable.
        OnednnUnavailable: ``onednn`` was asked for and cannot be used.
    """
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV}={choice!r} is not one of {', '.join(KERNELS)}; "
                         f"unset it or pick one")
    if choice == "xla" or jax.default_backend() != "cpu":
        return "xla"
    reason = (f"the process has {jax.device_count()} CPU devices and the oneDNN call has no "
              "sharding rule" if jax.device_count() > 1 else unavailable_reason())
    if reason is None:
        return "onednn"
    if choice == "onednn":
        raise OnednnUnavailable(f"{KERNEL_ENV}=onednn, but {reason}")
    log.info("CPU convolutions use XLA's kernels: %s", reason)
    return "xla"


def supports(x, kernel, strides: Sequence[int] = (1, 1),
             padding: str | Sequence[tuple[int, int]] = "VALID") -> bool:
    """Whether :func:`conv` takes these operands (arrays or shape-dtype structs):
    float32 NHWC/HWIO with matching channels, no empty axis in or out (a layer pruned to
    nothing keeps XLA's convolution), non-negative padding."""
    if (jnp.dtype(x.dtype) != jnp.float32 or jnp.dtype(kernel.dtype) != jnp.float32
            or x.ndim != 4 or kernel.ndim != 4 or x.shape[3] != kernel.shape[2]):
        return False
    pads = explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
    if any(p < 0 for pair in pads for p in pair):
        return False
    out_hw = output_hw(x.shape[1:3], kernel.shape[:2], strides, pads)
    return all(int(d) > 0 for d in (*x.shape, *kernel.shape, *out_hw))


def applies(x, kernel, strides: Sequence[int] = (1, 1),
            padding: str | Sequence[tuple[int, int]] = "VALID") -> bool:
    """Whether a convolution of these operands goes to oneDNN: on one CPU device, where
    :func:`cpu_conv_kernel` chose it and :func:`supports` takes them (XLA's otherwise)."""
    # cpu_conv_kernel() is "xla" off CPU and on several devices (no sharding rule).
    return cpu_conv_kernel() == "onednn" and supports(x, kernel, strides, padding)


def output_hw(in_hw, kernel_hw, strides, pads) -> tuple[int, int]:
    """Output map ``(h', w')`` of a convolution with explicit ``(low, high)`` pads."""
    return tuple((size + lo + hi - k) // s + 1
                 for size, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, pads))


def explicit_padding(padding, in_hw, kernel_hw, strides) -> tuple[tuple[int, int], ...]:
    """``(low, high)`` per spatial axis of ``"VALID"``, ``"SAME"`` or explicit pairs (XLA's
    rules: ``"SAME"`` puts an odd pixel on the high side)."""
    if isinstance(padding, str):
        return tuple(tuple(int(p) for p in pair) for pair in jax.lax.padtype_to_pads(
            in_hw, kernel_hw, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _attributes(strides, pads) -> dict[str, np.ndarray]:
    return {"strides": np.asarray(strides, np.int64),
            "padding": np.asarray([p for pair in pads for p in pair], np.int64)}


def _call(target: str, shape, *operands, strides, pads):
    """The custom call ``target``; ``shape`` is the result's, or a list of the results'."""
    results = (jax.ShapeDtypeStruct(tuple(shape), jnp.float32) if not isinstance(shape, list)
               else [jax.ShapeDtypeStruct(tuple(s), jnp.float32) for s in shape])
    # vmap (sampling several weight draws at once) runs the call once per element.
    return jax.ffi.ffi_call(f"bayescomp_onednn_conv_{target}", results,
                            vmap_method="sequential")(*operands, **_attributes(strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
    return _forward(x, kernel, strides, pads)[0]


def _forward(x, kernel, strides, pads):
    ho, wo = output_hw(x.shape[1:3], kernel.shape[:2], strides, pads)
    y = _call("forward", (x.shape[0], ho, wo, kernel.shape[3]), x, kernel, strides=strides,
              pads=pads)
    return y, (x, kernel)


def _backward(strides, pads, residuals, cotangent):
    x, kernel = residuals
    d_x = _call("input_gradient", x.shape, cotangent, kernel, strides=strides, pads=pads)
    d_kernel = _call("kernel_gradient", kernel.shape, x, cotangent, strides=strides, pads=pads)
    return d_x, d_kernel


_conv.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_bias(x, kernel, bias, strides, pads):
    return _forward_bias(x, kernel, bias, strides, pads)[0]


def _forward_bias(x, kernel, bias, strides, pads):
    ho, wo = output_hw(x.shape[1:3], kernel.shape[:2], strides, pads)
    y = _call("forward_bias", (x.shape[0], ho, wo, kernel.shape[3]), x, kernel, bias,
              strides=strides, pads=pads)
    return y, (x, kernel)


def _backward_bias(strides, pads, residuals, cotangent):
    x, kernel = residuals
    d_x = _call("input_gradient", x.shape, cotangent, kernel, strides=strides, pads=pads)
    d_kernel, d_bias = _call("kernel_gradient_bias", [kernel.shape, kernel.shape[3:]], x,
                             cotangent, strides=strides, pads=pads)
    return d_x, d_kernel, d_bias


_conv_bias.defvjp(_forward_bias, _backward_bias)


def conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
         padding: str | Sequence[tuple[int, int]] = "VALID",
         bias: jax.Array | None = None) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, strides, padding)`` (NHWC, HWIO, float32) by oneDNN,
    plus ``bias`` where given.

    With a bias, oneDNN adds it while writing the output, and sums its gradient, Σ over batch
    and positions of the output gradient, in the same pass as the kernel gradient: a
    ResNet-20 step then makes no separate pass over 19 activations for the add and 19 for the
    sum (``benchmarks/README.md``).

    Args:
        x: Inputs ``(n, h, w, c)``, float32.
        kernel: ``(kh, kw, c, out)``, float32.
        strides: ``(sh, sw)``.
        padding: ``"VALID"``, ``"SAME"`` or ``(low, high)`` per spatial axis, non-negative.
        bias: ``(out,)`` float32, or ``None``.

    Returns:
        ``(n, h', w', out)``; reverse-mode differentiable in ``x``, ``kernel`` (and ``bias``)
        once (oneDNN's gradients; no ``jvp``, no gradient of a gradient: training needs
        neither).

    Raises:
        OnednnUnavailable: oneDNN cannot be built or loaded here.
        ValueError: operands :func:`supports` does not take.
    """
    _load()
    strides = tuple(int(s) for s in strides)
    if not supports(x, kernel, strides, padding):
        raise ValueError(f"the oneDNN convolution takes float32 NHWC/HWIO operands with matching "
                         f"channels, non-negative padding and a non-empty output; got {x.shape} "
                         f"{x.dtype}, {kernel.shape} {kernel.dtype}, padding {padding}")
    pads = explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
    if bias is None:
        return _conv(x, kernel, strides, pads)
    if bias.shape != kernel.shape[3:] or bias.dtype != jnp.float32:
        raise ValueError(f"the oneDNN convolution's bias must be float32 of shape "
                         f"{kernel.shape[3:]}, got {bias.shape} {bias.dtype}")
    return _conv_bias(x, kernel, bias, strides, pads)
