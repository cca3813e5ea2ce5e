"""A/B timing of one experiment's train step under two sets of XLA compile options.

Builds the step twice in one process, exactly as ``benchmarks/train_speed.py`` does (through
``bayescomp.step``), once with each option set, and calls the two alternately, one call each
per round. It prints each variant's median step time and the median over rounds of the
within-round ratio B / A, the number that survives the 2-core VM's drifts in speed (separate
processes, or one variant timed after the other, put those drifts straight into the ratio).

Option sets are JSON objects of XLA debug options; ``"default"`` is
``bayescomp.xla_options.CPU_TRAIN_STEP_OPTIONS`` (what runs use on CPU) and ``"none"`` is
``{}`` (XLA's own defaults).

Usage::

    python benchmarks/compile_options_ab.py lenet5_svd --steps 20 --rounds 7
    python benchmarks/compile_options_ab.py lenet300_svd --a default \\
        --b '{"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_multi_thread_eigen": false}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import jax
from train_speed import ExperimentTimer  # importing it puts the checkout on sys.path

from bayescomp import xla_options  # noqa: E402


def option_set(text: str) -> dict:
    if text == "default":
        return dict(xla_options.CPU_TRAIN_STEP_OPTIONS)
    if text == "none":
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"option set {text!r} is neither default, none nor a JSON object: "
                         f"{error}") from None
    if not isinstance(options, dict):
        raise SystemExit(f"option set {text!r} is not a JSON object")
    return options


def build(name: str, options: dict, steps: int, rounds: int) -> ExperimentTimer:
    """The experiment's timer, its step compiled with exactly ``options``."""
    saved = xla_options.CPU_TRAIN_STEP_OPTIONS
    xla_options.CPU_TRAIN_STEP_OPTIONS = options
    try:
        if xla_options.train_step_compiler_options() != options:
            raise SystemExit(f"this XLA ({jax.default_backend()} backend) does not accept the "
                             f"options {options}; they are XLA:CPU debug options")
        return ExperimentTimer(name, steps, None, rounds)
    finally:
        xla_options.CPU_TRAIN_STEP_OPTIONS = saved


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="conf/experiment name")
    parser.add_argument("--a", default="none", help="option set A (default: %(default)s)")
    parser.add_argument("--b", default="default", help="option set B (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=100, help="steps per call")
    parser.add_argument("--rounds", type=int, default=15, help="alternated calls of each")
    args = parser.parse_args(argv)
    a_options, b_options = option_set(args.a), option_set(args.b)
    timers = [build(args.experiment, a_options, args.steps, args.rounds),
              build(args.experiment, b_options, args.steps, args.rounds)]
    times: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for timer, own in zip(timers, times):
            own.append(timer.time_call())
    ratios = [b / a for a, b in zip(*times)]
    for label, options, own in zip("AB", (a_options, b_options), times):
        print(f"{label}: {1e3 * statistics.median(own) / args.steps:8.2f} ms/step  {options}")
    print(f"{args.experiment}: B/A median within-round ratio {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}, {args.rounds} rounds of "
          f"{args.steps} steps)")


if __name__ == "__main__":
    sys.exit(main())
