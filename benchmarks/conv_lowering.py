"""Is a 3x3 conv faster on XLA:CPU as one matrix product over image patches ("im2col")?

Times the gradient (input and kernel) of ``sum(conv(x, W) * g)`` for the ResNet-20 conv shapes
at batch 128, once with ``lax.conv_general_dilated`` (NHWC/HWIO, what
:class:`bayescomp.nn.conv.VariationalConv` uses) and once with
:func:`bayescomp.nn.conv.conv_as_matmul` (the padded input's nine shifted windows concatenated
along the channels, times the HWIO kernel reshaped to ``(9·C, out)``), alternately in rounds, compiled with the train step's options
(:func:`bayescomp.xla_options.jit_train_step`). Also times the three parts of the XLA conv
alone: forward, input gradient, kernel gradient. Prints the median milliseconds and the median
within-round ratio im2col / XLA. ``--shapes vgg`` times VGG-16's smaller maps instead, where
:class:`~bayescomp.nn.conv.VariationalConv` switches to the patch matmul at 2x2.

Usage::

    python benchmarks/conv_lowering.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import train_speed  # noqa: F401  (importing it puts the checkout on sys.path)

from bayescomp import xla_options  # noqa: E402
from bayescomp.nn import conv as conv_lib  # noqa: E402

PAD_1 = ((1, 1), (1, 1))
# (map size, in channels, out channels, stride) of ResNet-20's convs.
SHAPES = {"resnet": [(32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (8, 64, 64, 1)],
          "vgg": [(8, 256, 256, 1), (4, 256, 512, 1), (4, 512, 512, 1), (2, 512, 512, 1)]}


def conv_xla(x, kernel, stride):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), PAD_1,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_as_matmul(x, kernel, stride):
    """:func:`bayescomp.nn.conv.conv_as_matmul` with ResNet's padding."""
    return conv_lib.conv_as_matmul(x, kernel, (stride, stride), PAD_1)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="resnet")
    args = parser.parse_args(argv)
    print(f"{'map':>4} {'in':>4} {'out':>4} {'s':>2} {'xla fwd':>8} {'xla dx':>7} "
          f"{'xla dW':>7} {'xla all':>8} {'im2col all':>10} {'im2col/xla':>10}")
    for size, cin, cout, stride in SHAPES[args.shapes]:
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (args.batch_size, size, size, cin))
        kernel = 0.1 * jax.random.normal(keys[1], (3, 3, cin, cout))
        y = conv_xla(x, kernel, stride)
        g = jax.random.normal(keys[2], y.shape)
        fns = {
            "fwd": (lambda x, k: conv_xla(x, k, stride), x, kernel),
            "dx": (lambda g, k: jax.vjp(lambda x: conv_xla(x, k, stride), x)[1](g)[0], g,
                   kernel),
            "dW": (lambda g, x: jax.vjp(lambda k: conv_xla(x, k, stride), kernel)[1](g)[0], g,
                   x),
        }
        for name, conv in (("xla", conv_xla), ("im2col", conv_as_matmul)):
            fns[name] = (jax.grad(lambda x, k, conv=conv: jnp.sum(conv(x, k, stride) * g),
                                  argnums=(0, 1)), x, kernel)
        compiled = {name: (xla_options.jit_train_step(fn), *a) for name, (fn, *a) in fns.items()}
        for fn, *a in compiled.values():
            jax.block_until_ready(fn(*a))  # compile
        times = {name: [] for name in compiled}
        for r in range(args.rounds):
            order = list(compiled) if r % 2 == 0 else list(reversed(compiled))
            for name in order:
                fn, *a = compiled[name]
                times[name].append(timed(fn, *a))
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        ratio = statistics.median(b / a for a, b in zip(times["xla"], times["im2col"]))
        print(f"{size:>4} {cin:>4} {cout:>4} {stride:>2} {ms['fwd']:>8.1f} {ms['dx']:>7.1f} "
              f"{ms['dW']:>7.1f} {ms['xla']:>8.1f} {ms['im2col']:>10.1f} {ratio:>10.2f}")


if __name__ == "__main__":
    main()
