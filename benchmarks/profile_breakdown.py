"""Where the time of one experiment's train step goes, by kind of work.

Builds the step as ``train_speed.py`` does (``ExperimentTimer``: the run's model, optimizer,
loop and, for CIFAR data, augmentation), times a few calls, traces one more with
``jax.profiler`` and sums the self time of each XLA operation (``train_speed.xla_op_times``)
into categories read from the compiled HLO: the operation's kind and the JAX source op in its
metadata (``op_name``, e.g. ``transpose(jvp(...))/conv_general_dilated`` for a conv gradient).

Categories: oneDNN convolutions (``bayescomp.nn.onednn_conv``'s custom calls; the caller's
wall time, while oneDNN's own threads do the work), other custom calls, XLA convolution
forward / input gradient / kernel gradient (a convolution whose output's leading dimension is
not the batch is a kernel gradient, so a layer with as many input channels as the batch size is
miscounted as forward or input gradient; one under ``transpose(`` otherwise
is an input gradient), layout transposes (``transpose``/``copy`` fusions), reductions (``reduce``,
``reduce-window``: BatchNorm statistics and their gradients, bias gradients, the pooling),
elementwise fusions by their JAX source (BatchNorm, augmentation, optimizer), other.

Usage::

    python benchmarks/profile_breakdown.py resnet20_dense --steps 2 --trace /tmp/trace
"""

from __future__ import annotations

import argparse
import collections
import os
import re

import jax
import jax.numpy as jnp
from train_speed import ExperimentTimer  # (importing it puts the checkout on sys.path)

def hlo_instructions(text: str) -> dict[str, tuple[str, str, str]]:
    """name -> (result shape, opcode, op_name) of every instruction of a compiled module."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        target = re.search(r'custom_call_target="([^"]*)"', line)
        out[name] = (shape, opcode, (op_name.group(1) if op_name else "")
                     + (f" custom_call_target={target.group(1)}" if target else ""))
    return out


def category(name: str, info: tuple[str, str, str] | None, batch_size: int) -> str:
    """The kind of work of the operation ``name`` (module docstring)."""
    shape, opcode, op_name = info if info else ("", "", "")
    base = re.sub(r"\.\d+$", "", name)
    text = f"{name} {opcode} {op_name}"
    if "custom_call_target=bayescomp_onednn_conv_" in op_name:
        return "oneDNN convolutions (custom calls: forward, input and kernel gradients)"
    if opcode == "custom-call":
        return "other custom calls"
    if "conv" in base or opcode == "convolution":
        dims = re.match(r"f32\[(\d+)", shape)
        # Forward and input-gradient convs produce a batch of maps; a kernel gradient
        # contracts the batch away.
        if dims and int(dims.group(1)) != batch_size:
            return "conv: kernel gradient"
        if "transpose(jvp" in op_name or "transpose(" in op_name:
            return "conv: input gradient"
        return "conv: forward"
    if "transpose" in base or base.startswith("copy") or opcode in ("transpose", "copy"):
        return "layout transposes/copies"
    if "reduce" in base or opcode in ("reduce", "reduce-window"):
        return "reductions (BatchNorm statistics and gradients, bias gradients, pooling)"
    if "augment" in op_name or "dynamic_slice" in text or "crop" in op_name:
        return "augmentation (crop, flip)"
    if any(s in op_name for s in ("optax", "apply_updates", "sgd", "trace", "momentum")):
        return "optimizer update"
    if "dot" in base or opcode == "dot":
        return "dense layers (dot)"
    return "elementwise fusions (BatchNorm normalise, ReLU, residual adds, optimizer, ...)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trace", default="/tmp/bayescomp_trace")
    args = parser.parse_args(argv)
    timer = ExperimentTimer(args.experiment, args.steps, args.batch_size, args.repeats + 2)
    times, cpu_seconds = [], []
    for _ in range(args.repeats):
        before = os.times()
        times.append(timer.time_call())
        after = os.times()
        cpu_seconds.append(after.user - before.user + after.system - before.system)
    ops = timer.profile(args.trace)
    index = jnp.zeros((args.steps, timer.batch_size), jnp.int32)
    step = timer.train_chunk.jitted_step if timer.loop == "python" else timer.train_chunk
    if timer.loop == "python":
        lowered = step.lower((timer.params, timer.batch_stats, timer.opt_state),
                             (index[0], jax.random.key(0)), timer.frozen, None, timer.x,
                             timer.y, jnp.float32(1.0))
    else:
        lowered = step.lower(timer.params, timer.batch_stats, timer.frozen, timer.opt_state,
                             None, timer.x, timer.y, index, jax.random.key(0), jnp.float32(1.0))
    instructions = hlo_instructions(lowered.compile().as_text())
    totals, counts = collections.Counter(), collections.Counter()
    for name, ms in ops.items():
        if name.startswith("end: "):
            continue
        kind = category(name, instructions.get(name), timer.batch_size)
        totals[kind] += ms
        counts[kind] += 1
    all_ms = sum(totals.values())
    fastest = min(range(len(times)), key=times.__getitem__)
    cpu_ms = 1e3 * cpu_seconds[fastest] / args.steps
    print(f"{args.experiment}: batch {timer.batch_size}, {1e3 * times[fastest] / args.steps:.0f} "
          f"ms per step (fastest timed call), {cpu_ms:.0f} ms of process CPU time in it "
          f"({cpu_seconds[fastest] / times[fastest]:.2f} cores busy); traced ops {all_ms:.0f} ms "
          "of self time per step")
    # The convolutions run on Eigen's intra-op pool and show in the trace only as their
    # launching thunk, so the CPU time the traced operations do not account for is theirs.
    print(f"  {max(cpu_ms - all_ms, 0.0):8.1f} ms  untraced CPU time (Eigen convolutions, "
          "waiting)")
    for kind, ms in totals.most_common():
        print(f"  {ms:8.1f} ms  {100 * ms / all_ms:5.1f} %  {counts[kind]:4d} ops  {kind}")


if __name__ == "__main__":
    main()
