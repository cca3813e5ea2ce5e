"""oneDNN's convolution (:mod:`bayescomp.nn.onednn_conv`) against XLA's, and how it is chosen.

The reference is ``lax.conv_general_dilated``, an independent implementation (Eigen's kernels).
Tolerance: relative to the largest value, 1e-5, far above float32 reorderings of the sums here
(at most 5·5·20 = 500 products, rounding ~500·6e-8 relative in the worst case, ~1e-6 in
practice) and far below an indexing or padding fault (O(1)). Tests of the library itself skip,
saying why, where oneDNN cannot be built or loaded (no wheel, no compiler, not CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from onednn_helpers import need_onednn as _need_onednn  # tests/nn is on sys.path

from bayescomp.nn import onednn_conv

RTOL = 1e-5


def _reference(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _relative(got, want) -> float:
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


@pytest.mark.parametrize("shape, kernel_hw, out, strides, padding", [
    ((3, 28, 28, 1), (5, 5), 20, (1, 1), "VALID"),            # LeNet-5-Caffe conv1
    ((3, 12, 12, 20), (5, 5), 50, (1, 1), "VALID"),           # LeNet-5-Caffe conv2
    ((4, 8, 8, 16), (3, 3), 16, (1, 1), ((1, 1), (1, 1))),    # a ResNet block conv
    ((4, 8, 8, 16), (3, 3), 32, (2, 2), ((1, 1), (1, 1))),    # a ResNet stage entry
    ((4, 8, 8, 16), (1, 1), 32, (2, 2), "VALID"),             # a projection shortcut
    ((2, 7, 6, 3), (3, 2), 4, (2, 1), ((1, 0), (0, 2))),      # odd sizes, asymmetric pads
    ((2, 5, 5, 6), (3, 3), 5, (2, 2), "SAME"),                # SAME with an odd pixel
    ((4, 2, 2, 64), (3, 3), 32, (1, 1), "SAME"),              # VGG-16's 2x2 block
])
def test_values_and_gradients_equal_xlas(shape, kernel_hw, out, strides, padding):
    _need_onednn()
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], shape)
    kernel = jax.random.normal(keys[1], (*kernel_hw, shape[-1], out))
    y_ref, vjp_ref = jax.vjp(lambda a, b: _reference(a, b, strides, padding), x, kernel)
    cotangent = jax.random.normal(keys[2], y_ref.shape)

    @jax.jit
    def ours(x, kernel, cotangent):
        y, vjp = jax.vjp(lambda a, b: onednn_conv.conv(a, b, strides, padding), x, kernel)
        return y, vjp(cotangent)

    y, (d_x, d_kernel) = ours(x, kernel, cotangent)
    d_x_ref, d_kernel_ref = vjp_ref(cotangent)
    assert y.shape == y_ref.shape
    assert _relative(y, y_ref) < RTOL
    assert _relative(d_x, d_x_ref) < RTOL
    assert _relative(d_kernel, d_kernel_ref) < RTOL

    # With a bias: added inside the call, its gradient summed beside the kernel's.
    bias = jax.random.normal(jax.random.key(4), (out,))

    @jax.jit
    def ours_bias(x, kernel, bias, cotangent):
        y, vjp = jax.vjp(lambda a, b, c: onednn_conv.conv(a, b, strides, padding, bias=c),
                         x, kernel, bias)
        return y, vjp(cotangent)

    y_b, (d_x_b, d_kernel_b, d_bias) = ours_bias(x, kernel, bias, cotangent)
    assert _relative(y_b, y_ref + bias) < RTOL
    assert _relative(d_x_b, d_x_ref) < RTOL
    assert _relative(d_kernel_b, d_kernel_ref) < RTOL
    assert _relative(d_bias, jnp.sum(cotangent, axis=(0, 1, 2))) < RTOL
    with pytest.raises(ValueError, match="bias"):
        onednn_conv.conv(x, kernel, strides, padding, bias=bias[:-1])


def test_vmap_and_a_chain_of_two_convolutions():
    """Under ``vmap`` (several weight draws) the call runs per element; a loss through two
    convolutions differentiates through both (reverse mode, each gradient a oneDNN call)."""
    _need_onednn()
    keys = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(keys[0], (2, 6, 6, 3))
    kernels = jax.random.normal(keys[1], (4, 3, 3, 3, 5))
    pad = ((1, 1), (1, 1))
    got = jax.vmap(lambda k: onednn_conv.conv(x, k, (1, 1), pad))(kernels)
    want = jax.vmap(lambda k: _reference(x, k, (1, 1), pad))(kernels)
    assert _relative(got, want) < RTOL

    second = jax.random.normal(keys[2], (3, 3, 5, 2))

    def loss(conv_fn, k):
        return jnp.sum(jnp.tanh(conv_fn(jnp.tanh(conv_fn(x, k, (1, 1), pad)), second, (1, 1),
                                        "VALID")))

    g = jax.grad(lambda k: loss(onednn_conv.conv, k))(kernels[0])
    g_ref = jax.grad(lambda k: loss(_reference, k))(kernels[0])
    assert _relative(g, g_ref) < RTOL

    # With a bias shared by the draws: the two-result kernel-gradient call runs per element and
    # the unbatched bias's gradient is summed over them.
    bias = jax.random.normal(jax.random.key(5), (5,))

    def drawn(conv_fn, bias):
        return jnp.sum(jnp.tanh(jax.vmap(lambda k: conv_fn(x, k, bias))(kernels)))

    ours = jax.grad(drawn, argnums=1)(
        lambda a, k, b: onednn_conv.conv(a, k, (1, 1), pad, bias=b), bias)
    theirs = jax.grad(drawn, argnums=1)(lambda a, k, b: _reference(a, k, (1, 1), pad) + b, bias)
    assert _relative(ours, theirs) < RTOL


def test_supports_only_what_it_can_do():
    f32 = jax.ShapeDtypeStruct
    x, kernel = f32((2, 8, 8, 3), jnp.float32), f32((3, 3, 3, 4), jnp.float32)
    assert onednn_conv.supports(x, kernel, (1, 1), "SAME")
    assert not onednn_conv.supports(f32((2, 8, 8, 3), jnp.bfloat16), kernel)
    assert not onednn_conv.supports(x, f32((3, 3, 3, 4), jnp.float16))
    assert not onednn_conv.supports(x, f32((3, 3, 3, 0), jnp.float32))   # pruned to nothing
    assert not onednn_conv.supports(x, f32((3, 3, 2, 4), jnp.float32))   # channels disagree
    assert not onednn_conv.supports(x, f32((9, 9, 3, 4), jnp.float32), (1, 1), "VALID")
    assert not onednn_conv.supports(x, kernel, (1, 1), ((-1, 0), (0, 0)))


def test_the_environment_variable_decides(monkeypatch):
    monkeypatch.setenv(onednn_conv.KERNEL_ENV, "xla")
    onednn_conv.cpu_conv_kernel.cache_clear()
    try:
        assert onednn_conv.cpu_conv_kernel() == "xla"
        monkeypatch.setenv(onednn_conv.KERNEL_ENV, "cudnn")
        onednn_conv.cpu_conv_kernel.cache_clear()
        with pytest.raises(ValueError, match="BAYESCOMP_CPU_CONV='cudnn' is not one of"):
            onednn_conv.cpu_conv_kernel()
        monkeypatch.setenv(onednn_conv.KERNEL_ENV, "auto")
        onednn_conv.cpu_conv_kernel.cache_clear()
        expected = "onednn" if (jax.default_backend() == "cpu"
                                and onednn_conv.unavailable_reason() is None) else "xla"
        assert onednn_conv.cpu_conv_kernel() == expected
    finally:
        onednn_conv.cpu_conv_kernel.cache_clear()


def _auto_is_xla_and_onednn_says(monkeypatch, reason: str) -> None:
    """Where oneDNN cannot be used, ``auto`` chooses XLA's convolution and ``onednn`` raises
    an error matching ``reason``."""
    for choice in ("auto", "onednn"):
        monkeypatch.setenv(onednn_conv.KERNEL_ENV, choice)
        onednn_conv.cpu_conv_kernel.cache_clear()
        if choice == "auto":
            assert onednn_conv.cpu_conv_kernel() == "xla"
        else:
            with pytest.raises(onednn_conv.OnednnUnavailable, match=reason):
                onednn_conv.cpu_conv_kernel()


def test_an_unavailable_library_falls_back_or_says_why(monkeypatch):
    """``auto`` keeps XLA's convolution when oneDNN cannot be used; ``onednn`` raises with the
    reason (here: the library is not installed, which is looked for before anything is built
    or loaded)."""
    if jax.default_backend() != "cpu":
        pytest.skip("the choice is made on CPU only")
    attempts = []

    def not_found():
        attempts.append(1)
        raise onednn_conv.OnednnUnavailable("oneDNN not found (pip install 'bayescomp[onednn]')")

    monkeypatch.setattr(onednn_conv, "_find_onednn", not_found)
    onednn_conv._forget()
    onednn_conv.cpu_conv_kernel.cache_clear()
    try:
        _auto_is_xla_and_onednn_says(monkeypatch, "BAYESCOMP_CPU_CONV=onednn, but oneDNN not")
        assert "oneDNN not found" in onednn_conv.unavailable_reason()
        assert len(attempts) == 1  # the failure is remembered, not retried on every call
    finally:
        monkeypatch.undo()
        onednn_conv._forget()
        onednn_conv.cpu_conv_kernel.cache_clear()


def test_several_cpu_devices_keep_xlas_convolution(monkeypatch):
    """The custom call has no sharding rule, so a process with several CPU devices (a sharded
    run) convolves with XLA's kernels, and says so where oneDNN is insisted on; what a run
    records as its kernel (``provenance.runtime``) is the one it uses."""
    if jax.default_backend() != "cpu":
        pytest.skip("the choice is made on CPU only")
    from bayescomp import provenance

    monkeypatch.setattr(jax, "device_count", lambda *args: 2)
    onednn_conv.cpu_conv_kernel.cache_clear()
    try:
        monkeypatch.setenv(onednn_conv.KERNEL_ENV, "auto")
        assert provenance.runtime()["cpu_conv_kernel"] == "xla"
        x = jnp.zeros((2, 8, 8, 3), jnp.float32)
        assert not onednn_conv.applies(x, jnp.zeros((3, 3, 3, 4), jnp.float32))
        _auto_is_xla_and_onednn_says(monkeypatch, "2 CPU devices")
    finally:
        monkeypatch.undo()
        onednn_conv.cpu_conv_kernel.cache_clear()


def test_a_failed_build_is_reported_with_the_compiler_output(monkeypatch, tmp_path):
    if jax.default_backend() != "cpu":
        pytest.skip("the library is built for CPU only")
    try:
        include, lib = onednn_conv._find_onednn()
    except onednn_conv.OnednnUnavailable as error:
        pytest.skip(str(error))
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(onednn_conv, "_SOURCES", (broken,))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(onednn_conv.OnednnUnavailable, match="building the oneDNN convolution "
                                                            "failed"):
        onednn_conv._build(include, lib)
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built left in the cache


def test_a_resnet_trains_the_same_with_either_kernel(monkeypatch):
    """A ResNet-8 with BatchNorm (strided and projection convs, both gradients): the loss and
    every parameter gradient of one step agree between oneDNN's and XLA's convolutions."""
    _need_onednn()
    from bayescomp import models
    from bayescomp.nn import LayerFactory

    traced = []
    real_conv = onednn_conv.conv
    monkeypatch.setattr(onednn_conv, "conv", lambda *args, **kwargs: traced.append(
        kwargs.get("bias") is not None) or real_conv(*args, **kwargs))

    def loss_and_grads(kernel):
        monkeypatch.setenv(onednn_conv.KERNEL_ENV, kernel)
        onednn_conv.cpu_conv_kernel.cache_clear()
        model = models.get("resnet8")(LayerFactory(), input_shape=(16, 16, 3), num_classes=10,
                                      rngs=nnx.Rngs(params=0), widths=[4, 8, 8])
        x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))
        labels = jnp.arange(4) % 10

        def loss(net):  # BatchNorm in training mode
            logits = net(x, rngs=nnx.Rngs(noise=0))
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

        # Traced anew for each kernel (the choice is read while tracing).
        value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
        return value, nnx.state(grads, nnx.Param)

    try:
        loss_onednn, grads_onednn = loss_and_grads("onednn")
        # the stem and two per block (three; the shortcuts subsample and pad, no conv), each
        # with its bias added inside the call
        assert traced == [True] * 7
        loss_xla, grads_xla = loss_and_grads("xla")
        assert len(traced) == 7  # none more
    finally:
        onednn_conv.cpu_conv_kernel.cache_clear()
    np.testing.assert_allclose(loss_onednn, loss_xla, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads_onednn), jax.tree.leaves(grads_xla)):
        scale = float(jnp.max(jnp.abs(want)))
        if scale > 1e-6:  # conv biases before a BatchNorm: true gradient zero, rounding only
            assert float(jnp.max(jnp.abs(got - want))) <= 1e-4 * scale


def test_an_unwritable_cache_says_where(monkeypatch, tmp_path):
    if jax.default_backend() != "cpu":
        pytest.skip("the library is built for CPU only")
    try:
        onednn_conv._find_onednn()
    except onednn_conv.OnednnUnavailable as error:
        pytest.skip(str(error))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where a folder must go
    onednn_conv._forget()
    try:
        with pytest.raises(onednn_conv.OnednnUnavailable, match="set XDG_CACHE_HOME to a "
                                                                "writable folder"):
            onednn_conv._load()
    finally:
        monkeypatch.undo()
        onednn_conv._forget()


def test_the_self_checks_reference_is_xlas_convolution():
    """The load-time check compares against a NumPy evaluation; that evaluation itself equals
    ``lax.conv`` and its gradients (float64 against float32: rounding of 18-term sums)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    strides, pads = (2, 1), ((1, 0), (0, 1))
    y, vjp = jax.vjp(lambda a, b: _reference(a, b, strides, pads), x, kernel)
    cotangent = rng.standard_normal(y.shape).astype(np.float32)
    for got, want in zip((y, *vjp(cotangent)),
                         onednn_conv._numpy_reference(x, kernel, cotangent, strides, pads)):
        assert got.shape == want.shape
        assert _relative(jnp.asarray(want, jnp.float32), got) < RTOL


def test_a_wrong_convolution_fails_the_self_check(monkeypatch):
    _need_onednn()
    real = onednn_conv._conv
    # a one-pixel shift: right shapes, wrong values
    monkeypatch.setattr(onednn_conv, "_conv", lambda x, k, s, p: jnp.roll(real(x, k, s, p), 1, 1))
    with pytest.raises(onednn_conv.OnednnUnavailable, match="output differs from the reference"):
        onednn_conv._self_check()
