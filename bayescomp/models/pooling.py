"""Pooling for NHWC feature maps, shared by every model.

Both poolings are written as a reshape and a reduction rather than ``jax.lax.reduce_window``: on
XLA:CPU the gradient of ``reduce_window`` max (select-and-scatter) made a LeNet-5 training step
twice as slow (measured 94 ms vs 46 ms for the two pooled convs at batch 100;
benchmarks/train_speed.py), while the reshape's gradient is a cheap compare and broadcast.
"""

from __future__ import annotations

import jax


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, NHWC (odd trailing rows/columns dropped, as VALID pooling does)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def global_average_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: ``(n, h, w, c) -> (n, c)`` (Lin et al., "Network In Network",
    ICLR 2014; the classifier input of He et al.'s CIFAR ResNets)."""
    return x.mean(axis=(1, 2))
