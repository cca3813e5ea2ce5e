"""The train step with glibc's default allocator against bayescomp's tuned one, A/B.

glibc reads its tunables when a process starts (:mod:`bayescomp.allocator`), so the two sides
cannot share a process: each round starts one child per side, in alternating order, and each
child builds the experiment's step (``train_speed.ExperimentTimer``), warms it up and times
``--calls`` calls of ``--steps`` steps, reporting its fastest and median milliseconds per step
and the minor page faults and kernel CPU time per step over the timed calls
(``resource.getrusage``). Printed: per side the median over rounds, and the ratio tuned/default
of the step time per round (median, min-max).

Usage::

    python benchmarks/allocator_ab.py resnet20_dense --rounds 3 --steps 2 --calls 3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bayescomp import allocator  # noqa: E402


def _child(experiment: str, steps: int, calls: int) -> None:
    from train_speed import ExperimentTimer

    timer = ExperimentTimer(experiment, steps, None, calls + 1)
    timer.time_call()  # beyond the warm-up call ExperimentTimer makes: the heap settles
    times, faults, system = [], 0, 0.0
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF)
        times.append(timer.time_call() / steps)
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults += after.ru_minflt - before.ru_minflt
        system += after.ru_stime - before.ru_stime
    print(json.dumps({"fastest_ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times),
                      "faults_per_step": faults / (calls * steps),
                      "system_ms_per_step": 1e3 * system / (calls * steps),
                      "allocator": allocator.description()}))


def _run_side(side: str, args) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", allocator.MARK, allocator.SWITCH)}
    if side == "tuned":
        env = allocator.tuned_environment(env)
        if env is None:
            raise SystemExit("error: glibc tunables need Linux with glibc; nothing to compare")
    result = subprocess.run(
        [sys.executable, __file__, args.experiment, "--child", "--steps", str(args.steps),
         "--calls", str(args.calls)], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: the {side} child failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed call")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per child")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        _child(args.experiment, args.steps, args.calls)
        return
    results = {"default": [], "tuned": []}
    for r in range(args.rounds):
        order = ("default", "tuned") if r % 2 == 0 else ("tuned", "default")
        for side in order:
            results[side].append(_run_side(side, args))
            print(f"round {r} {side}: {json.dumps(results[side][-1])}", flush=True)
    ratios = [t["median_ms"] / d["median_ms"] for d, t in zip(results["default"],
                                                               results["tuned"])]
    print(f"\n{args.experiment}: {args.rounds} rounds, {args.calls} calls of {args.steps} steps "
          "per child; medians over rounds")
    for side, rows in results.items():
        print(f"  {side:8s} {statistics.median(r['median_ms'] for r in rows):8.1f} ms/step "
              f"(fastest {min(r['fastest_ms'] for r in rows):.1f}), "
              f"{statistics.median(r['faults_per_step'] for r in rows):8.0f} page faults/step, "
              f"{statistics.median(r['system_ms_per_step'] for r in rows):6.1f} ms kernel CPU/step")
    print(f"  tuned/default step time: {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
