r"""Standard normal noise for reparameterised samples, at half the cost of ``jax.random.normal``.

Every variational layer draws one ε ~ N(0, 1) per pre-activation and example (the local
reparameterization trick, Kingma, Salimans & Welling 2015, Eq. 6): 1.5 million normals per
LeNet-5 step at batch 100, most of them for conv1's 100 × 24 × 24 × 20 outputs. With JAX's
default ``jax_threefry_partitionable`` mode, ``jax.random.normal`` spends one whole
Threefry-2x32 block (two 32-bit output words) on every 32-bit sample and XORs the two words, so
that any element can be computed independently of the others. On this 2-core CPU that made noise
generation about 30 % of a LeNet-5 Sparse VD step (``benchmarks/train_speed.py``; 92 ms with the
noise, 64 ms with the noise replaced by a constant).

:func:`standard_normal` uses both words of every block instead, as JAX's original
(non-partitionable) Threefry scheme does: the counters 0 … n−1 are split into two halves that
form the two input words of n/2 blocks (Salmon et al. 2011, "Parallel random numbers: as easy as
1, 2, 3", Threefry-2x32 with 20 rounds), and the 2 × n/2 output words are the n samples' bits.
The block function is written out in :func:`threefry2x32` so that XLA fuses it with the
transform and the consumer (see there).
Bits become a uniform on [−1, 1) through the 23 mantissa bits and then
``√2 · erf⁻¹(u)`` — exactly ``jax.random.normal``'s transform. The result is bit-for-bit
``jax.random.normal(key, shape)`` under ``jax.threefry_partitionable(False)``
(``tests/nn/test_noise.py`` checks this), so the samples have the distribution and quality JAX
has always had; only the element-wise independence that sharded generation needs is given up,
which single-device training does not use.

Keys of other PRNG implementations (``jax_default_prng_impl=rbg``), non-float32 dtypes and
arrays of 2³² elements or more fall back to ``jax.random.normal``.

On the CPU backend the samples are drawn inside a ``lax.cond`` whose two branches are the same
draw (:func:`bayescomp.fusion.materialized`): a conditional is a fusion boundary, so ε is
computed once and written to memory. Without it XLA:CPU, which treats the hash and erf⁻¹ as
cheap elementwise work, fuses the whole generator into every consumer of ε — the forward output,
the gradient of σ and, after a conv, the max-pool gradient — and recomputes it in each. ``lax.optimization_barrier`` does not
survive to XLA:CPU's fusion passes and does not prevent this. Measured on this 2-core CPU (the
training step of ``benchmarks/train_speed.py``, old and new code called alternately in one
process): a LeNet-5 Sparse VD step 87 → 74 ms, a LeNet-5 BC-GHS step 86 → 71 ms; LeNet-300-100
Sparse VD, whose noise is small (100 × 410 values a step), 3.67 → 3.56 ms, within this VM's noise.
The values are unchanged (both branches draw the same ε). Other backends draw without the
conditional: there a conditional may cost a device-to-host read of the predicate.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bayescomp.fusion import materialized

# Threefry-2x32 (Salmon et al. 2011, Table 4; Random123's threefry.h): per-round rotation
# distances, alternating between two groups of four rounds, and the key-schedule parity constant.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)
_GROUPS = 5  # 5 groups of 4 rounds: Threefry-2x32-20, JAX's choice

_ONE_BITS = np.array(1.0, np.float32).view(np.uint32)  # exponent of [1, 2), mantissa zero
_MANTISSA_SHIFT = np.uint32(32 - 23)  # float32 has 23 mantissa bits
_LOWEST = np.nextafter(np.float32(-1.0), np.float32(0.0))  # erf⁻¹(−1) = −∞ is excluded
_SQRT2 = np.float32(np.sqrt(2.0))
_SPAN = np.float32(1.0) - _LOWEST  # maxval − minval of jax.random.uniform, in float32


def _is_threefry_key(key) -> bool:
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return False  # a raw uint32 key: its implementation is not recorded, let JAX decide
    return str(jax.random.key_impl(key)) == "threefry2x32" and key.shape == ()


def standard_normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Draw N(0, 1) samples, both Threefry output words used (see the module docstring).

    Args:
        key: A typed scalar PRNG key (``jax.random.key``).
        shape: Output shape.
        dtype: Output dtype; only float32 takes the fast path.

    Returns:
        An array of ``shape`` equal to ``jax.random.normal(key, shape, dtype)`` computed with
        ``jax_threefry_partitionable=False``.
    """
    shape = tuple(int(d) for d in shape)
    size = math.prod(shape)
    if (jnp.dtype(dtype) != jnp.float32 or size == 0 or size >= 2**32
            or not _is_threefry_key(key)):
        return jax.random.normal(key, shape, dtype)
    draw = functools.partial(_normal_from_key_words, shape=shape)
    return materialized(draw, jax.random.key_data(key))


def _normal_from_key_words(key_words: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The fast path of :func:`standard_normal`, from the raw Threefry key words."""
    size = math.prod(shape)
    half = (size + 1) // 2
    counter = lax.iota(np.uint32, half)
    second = counter + np.uint32(half)
    if size % 2:  # JAX pads an odd count with a zero counter, which pairs with the last block
        second = jnp.where(counter == half - 1, np.uint32(0), second)
    words = threefry2x32(key_words[0], key_words[1], counter, second)
    bits = jnp.concatenate(words)[:size]
    unit = lax.bitcast_convert_type((bits >> _MANTISSA_SHIFT) | _ONE_BITS, jnp.float32) - 1.0
    uniform = lax.max(_LOWEST, (unit * _SPAN + _LOWEST).reshape(shape))  # [lo, 1)
    return _SQRT2 * lax.erf_inv(uniform)


def _rotate_left(value: jax.Array, distance: int) -> jax.Array:
    return (value << np.uint32(distance)) | (value >> np.uint32(32 - distance))


def threefry2x32(key0, key1, count0, count1) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32-20 block function, written out (unrolled) in ``jnp`` operations.

    Each round adds the second word into the first and rotates the second by the round's
    distance before xor-ing the first into it; every four rounds the key schedule
    ``(k0, k1, k0 ^ k1 ^ 0x1BD11BDA)`` is injected with the group number (Salmon et al. 2011).
    The result equals ``jax.extend.random.threefry_2x32`` (tested). JAX lowers that primitive
    on CPU as a rolled ``while`` loop, to compile faster; there every group of rounds is a
    separate pass over the counter arrays in memory and nothing fuses with the consumer. Written
    out here, the hash fuses with what follows: alone, ``mean + std · ε`` for conv1's 1.15 M
    outputs runs as one loop, 3.5 ms against 4.3 ms with JAX's rolled hash and 8.5 ms with
    ``jax.random.normal`` (this 2-core CPU). Inside a training step, where ε has several
    consumers, the whole LeNet-5 Sparse VD step went from ~93 to ~87 ms, and to ~74 ms once the
    draw was also kept out of its consumers' fusions (:func:`bayescomp.fusion.materialized`).

    Args:
        key0: First key word, uint32 scalar.
        key1: Second key word, uint32 scalar.
        count0: First counter word, uint32 array.
        count1: Second counter word, uint32 array of the same shape.

    Returns:
        The two output words, each shaped like the counters.
    """
    schedule = (key0, key1, key0 ^ key1 ^ _KEY_PARITY)
    x0, x1 = count0 + schedule[0], count1 + schedule[1]
    for group in range(_GROUPS):
        for distance in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, distance) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1
