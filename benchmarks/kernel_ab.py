"""A/B timing of one experiment's train step with and without bayescomp's XLA:CPU kernel choices.

Six switches select how a CPU train step is written (``conv``, ``norm`` and, where it loads,
``onednn``, ``bias`` and ``bnorm`` on by default in the library):

* ``conv``: :data:`bayescomp.nn.conv.MATERIALIZE_KERNEL_GRADIENT_OPERANDS`, the conv whose
  kernel gradient reads materialised operands (no BatchNorm/ReLU recomputation fused into the
  transposing copies);
* ``norm``: :data:`bayescomp.nn.norm.DOT_SUMS`, batch-statistics BatchNorm with its per-channel
  sums as dots (no ``reduce-window`` trees);
* ``patch``: every conv larger than 1x1 as a patch matmul (:func:`bayescomp.nn.conv.conv_as_matmul`,
  :data:`bayescomp.nn.conv.PATCH_MATMUL_MAX_POSITIONS` unlimited; off: the library's 2x2 limit).
  Off by default in the library beyond 2x2 maps; the switch is there to re-measure that choice.
* ``onednn``: convolutions through oneDNN (:mod:`bayescomp.nn.onednn_conv`; off: XLA's own),
  set through ``$BAYESCOMP_CPU_CONV`` while the step is traced;
* ``bias``: with ``onednn``, each conv's bias added inside oneDNN's call and its gradient summed
  by the kernel-gradient primitive (:data:`bayescomp.nn.conv.ONEDNN_BIAS`; off: added after);
* ``bnorm``: with ``onednn``, batch-statistics BatchNorm and the ReLU after it by oneDNN
  (:data:`bayescomp.nn.norm.ONEDNN`, :mod:`bayescomp.nn.onednn_batch_norm`; off: ``norm``'s
  choice).

The step is built twice in one process, exactly as ``benchmarks/train_speed.py`` does, once with
the switches of ``--a`` and once with those of ``--b``, and the two are called alternately, one
call each per round. Before timing, both start from the same initial state and their parameters
after one call are compared (largest difference relative to the largest value). It prints each
variant's median step time and the median over rounds of the within-round ratio B / A.

Usage::

    python benchmarks/kernel_ab.py resnet20_dense --a none --b conv,norm --steps 2 --rounds 7
    python benchmarks/kernel_ab.py lenet5_dense --a none --b conv --steps 10 --rounds 7
    python benchmarks/kernel_ab.py lenet5_ghs --a none --b patch --steps 10 --rounds 7
    python benchmarks/kernel_ab.py resnet20_dense --a conv,norm --b conv,norm,onednn --rounds 5
    python benchmarks/kernel_ab.py resnet20_dense --a conv,norm,onednn --b conv,norm,onednn,bias
    python benchmarks/kernel_ab.py resnet20_dense --a conv,norm,onednn,bias \
        --b conv,norm,onednn,bias,bnorm
    python benchmarks/kernel_ab.py resnet20_dense --rounds 3 --profile /tmp/kernel_ab_trace
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import statistics
import sys

import jax
import jax.numpy as jnp
from train_speed import ExperimentTimer  # importing it puts the checkout on sys.path

from bayescomp import allocator
from bayescomp.nn import conv as conv_lib
from bayescomp.nn import norm as norm_lib
from bayescomp.nn import onednn_conv

SWITCHES = ("conv", "norm", "patch", "onednn", "bias", "bnorm")


def switch_set(text: str) -> frozenset[str]:
    names = frozenset() if text == "none" else frozenset(text.split(","))
    unknown = names - set(SWITCHES)
    if unknown:
        raise SystemExit(f"unknown switches {sorted(unknown)}; known: {', '.join(SWITCHES)} "
                         "(comma-separated) or none")
    return names


def build(name: str, switches: frozenset[str], steps: int, rounds: int) -> ExperimentTimer:
    """The experiment's timer, its step traced with exactly ``switches`` on."""
    saved = (conv_lib.MATERIALIZE_KERNEL_GRADIENT_OPERANDS, norm_lib.DOT_SUMS,
             conv_lib.PATCH_MATMUL_MAX_POSITIONS, conv_lib.ONEDNN_BIAS, norm_lib.ONEDNN)
    conv_lib.MATERIALIZE_KERNEL_GRADIENT_OPERANDS = "conv" in switches
    conv_lib.ONEDNN_BIAS = "bias" in switches
    norm_lib.DOT_SUMS = "norm" in switches
    norm_lib.ONEDNN = "bnorm" in switches
    if "patch" in switches:
        conv_lib.PATCH_MATMUL_MAX_POSITIONS = sys.maxsize
    saved_kernel = os.environ.get(onednn_conv.KERNEL_ENV)
    os.environ[onednn_conv.KERNEL_ENV] = "onednn" if "onednn" in switches else "xla"
    onednn_conv.cpu_conv_kernel.cache_clear()
    try:
        return ExperimentTimer(name, steps, None, rounds)  # traces and compiles here
    finally:
        (conv_lib.MATERIALIZE_KERNEL_GRADIENT_OPERANDS, norm_lib.DOT_SUMS,
         conv_lib.PATCH_MATMUL_MAX_POSITIONS, conv_lib.ONEDNN_BIAS, norm_lib.ONEDNN) = saved
        if saved_kernel is None:
            os.environ.pop(onednn_conv.KERNEL_ENV, None)
        else:
            os.environ[onednn_conv.KERNEL_ENV] = saved_kernel
        onednn_conv.cpu_conv_kernel.cache_clear()


def largest_differences(a: ExperimentTimer, b: ExperimentTimer, count: int = 3) -> list[str]:
    """The ``count`` parameters that differ most between A and B, relative to the largest |A|
    of each: ``path: relative (absolute, scale)``. Conv biases before a BatchNorm have a zero
    true gradient, so their few-ulp values differ relatively most; read the weights' lines."""
    rows = []
    pairs = zip(jax.tree_util.tree_leaves_with_path(a.params), jax.tree.leaves(b.params))
    for (path, left), right in pairs:
        scale = float(jnp.max(jnp.abs(left)))
        absolute = float(jnp.max(jnp.abs(left - right)))
        rows.append((absolute / (scale or 1.0), jax.tree_util.keystr(path), absolute, scale))
    rows.sort(reverse=True)
    sizable = [row for row in rows if row[3] >= 1e-3][:1]  # the worst leaf of a sizable scale
    return [f"{name}: {rel:.2e} ({absolute:.2e} of {scale:.2e})"
            for rel, name, absolute, scale in rows[:count] + sizable]


def main(argv=None) -> None:
    if argv is None:  # as a command: with the allocator a run gets (bayescomp/allocator.py)
        allocator.reexec_with_tuned_allocator()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="conf/experiment name")
    parser.add_argument("--a", default="none", help="switches of A (default: %(default)s)")
    parser.add_argument("--b", default="conv,norm", help="switches of B (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="steps per call")
    parser.add_argument("--rounds", type=int, default=7, help="alternated calls of each")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="after the timing, trace one more call of each into DIR/A and "
                             "DIR/B and print XLA self time per step by kind of operation")
    args = parser.parse_args(argv)
    a_switches, b_switches = switch_set(args.a), switch_set(args.b)
    timers = [build(args.experiment, a_switches, args.steps, args.rounds),
              build(args.experiment, b_switches, args.steps, args.rounds)]
    # Same start (the constructors ran one warm-up call each from the same seed-0 state): align
    # B's state to A's, run one call of each with the same data, compare.
    # (copies: a step may donate its input buffers)
    timers[1].params, timers[1].batch_stats, timers[1].opt_state = jax.tree.map(
        jnp.copy, (timers[0].params, timers[0].batch_stats, timers[0].opt_state))
    timers[1].calls = timers[0].calls
    for timer in timers:
        timer.time_call()
    print("parameters after one call, largest differences B vs A:")
    for line in largest_differences(*timers):
        print("  ", line)
    times: list[list[float]] = [[], []]
    for round_index in range(args.rounds):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for i in order:
            times[i].append(timers[i].time_call())
    ratios = [b / a for a, b in zip(*times)]
    for label, switches, own in zip("AB", (a_switches, b_switches), times):
        print(f"{label}: {1e3 * statistics.median(own) / args.steps:8.2f} ms/step  "
              f"switches {sorted(switches) or 'none'}")
    print(f"{args.experiment}: B/A median within-round ratio {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}, {args.rounds} rounds of "
          f"{args.steps} steps, {jax.default_backend()})")
    if args.profile:
        for label, timer in zip("AB", timers):
            print_op_kinds(label, timer.profile(str(pathlib.Path(args.profile) / label)))


def print_op_kinds(label: str, op_ms: dict[str, float], top: int = 10) -> None:
    """Self time per step summed by kind of XLA operation (the name without its ``.N``)."""
    kinds: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for name, ms in op_ms.items():
        kind = re.sub(r"\.\d+$", "", name)
        kinds[kind] += ms
        counts[kind] += 1
    print(f"{label}: traced XLA self time {sum(op_ms.values()):.0f} ms/step (sum over threads)")
    for kind, ms in kinds.most_common(top):
        print(f"   {ms:8.1f} ms  {counts[kind]:4d} ops  {kind}")


if __name__ == "__main__":
    sys.exit(main())
