"""Speed of the jitted training step, per experiment, on random data of the right shape.

Builds each experiment's model and optimizer through the library (Hydra compose of
``conf/config.yaml`` + ``+experiment=NAME``, then ``bayescomp.runs.build_model``,
``optim.make_optimizer``, ``step.choose_loop`` and ``step.make_chunk``), so what is timed is
exactly the step a run uses: ``--steps`` optimisation steps per call, as one jitted ``lax.scan`` or
as a jitted step in a Python loop (``trainer.loop``). No dataset is needed.

Every experiment is compiled first (one warm-up call each); then ``--repeats`` rounds time one
call of each experiment in turn. For each experiment it prints the images per second (median
over its timed calls), the projected seconds per Fashion-MNIST epoch (60,000 images), and the
ratio of its step time to the dense step of the same model: the median over rounds of the ratio
*within* a round, so that both sides of a ratio see the same spell of machine load (on the 2-core
development VM a process's speed drifts by up to ±15 %, which separate processes, or one
experiment timed after the other, put straight into the ratio).

Usage::

    python benchmarks/train_speed.py                       # the four LeNet experiments
    python benchmarks/train_speed.py --experiments lenet5_svd lenet5_dense --steps 100
    python benchmarks/train_speed.py --loop scan   # force one loop kind (default: auto, as runs)
    python benchmarks/train_speed.py --experiments lenet5_svd --profile /tmp/trace  # op table

``--loop auto`` (the default) uses the run's own choice: a Python loop of jitted steps for conv
models on CPU, where XLA runs convolution gradients inside a loop body an order of magnitude
slower (jax-ml/jax#12868), and ``lax.scan`` otherwise. ``--loop scan`` shows that cost.

``--profile DIR`` records one extra call after the timed ones with ``jax.profiler`` (a Perfetto
trace under DIR, to open in ui.perfetto.dev or TensorBoard) and prints, per experiment, the XLA
operations with the most self time per step: where to look before optimising.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import resource
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without `pip install -e .`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from bayescomp import optim, runs, step  # noqa: E402
from bayescomp.loop import train_view  # noqa: E402

DEFAULT_EXPERIMENTS = ["lenet300_dense", "lenet300_svd", "lenet5_dense", "lenet5_svd"]
FASHION_MNIST_TRAIN = 60_000
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=DEFAULT_EXPERIMENTS,
                        help="conf/experiment names (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20,
                        help="optimisation steps per timed jitted call (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="training batch size (default: each experiment's trainer.batch_size)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per experiment; the median is reported "
                             "(default: %(default)s)")
    parser.add_argument("--loop", choices=["auto", "scan", "python"], default="auto",
                        help="trainer.loop to time (default: %(default)s, as a run chooses)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="trace one extra call, after the timed ones, into DIR and print "
                             "the costliest XLA ops")
    parser.add_argument("--top", type=int, default=15,
                        help="operations listed per experiment with --profile "
                             "(default: %(default)s)")
    return parser.parse_args(argv)


def compose_experiment(name: str):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={name}"])


class ExperimentTimer:
    """One experiment's train step, compiled, with its state; ``time_call`` times one call.

    :func:`time_experiments` builds one timer per experiment and times them round-robin (one
    call of each per round), so that every experiment sees the same spells of machine noise and
    the ratio of two experiments can be taken within a round.
    """

    def __init__(self, name: str, steps: int, batch_size: int | None, repeats: int,
                 loop: str = "auto"):
        cfg = compose_experiment(name)
        batch_size = int(cfg.trainer.batch_size) if batch_size is None else batch_size
        self.name, self.steps, self.batch_size = name, steps, batch_size
        self.model_name, self.method = cfg.model.name, cfg.method.name
        model = runs.build_model(cfg, INPUT_SHAPE, NUM_CLASSES, seed=0)
        split = step.StateSplit()
        graphdef, self.params, self.batch_stats, self.frozen = split.split(
            train_view(model, "batch_stats"))
        optimizer = optim.make_optimizer(
            OmegaConf.to_container(cfg.optimizer, resolve=True), self.params,
            total_steps=(repeats + 2) * steps, steps_per_epoch=steps)
        self.opt_state = optimizer.init(self.params)
        # The KL is divided by the size of the real training set, as in a Fashion-MNIST run.
        self.loop = step.choose_loop(model, loop)
        self.train_chunk = step.make_chunk(graphdef, split, optimizer,
                                           n_train=FASHION_MNIST_TRAIN, loop=self.loop)
        self.key = jax.random.key(0)
        n = steps * batch_size  # every image is used once per call
        self.x = jax.random.normal(jax.random.fold_in(self.key, 1), (n, *INPUT_SHAPE),
                                   jnp.float32)
        self.y = jax.random.randint(jax.random.fold_in(self.key, 2), (n,), 0, NUM_CLASSES,
                                    jnp.int32)
        self.calls = 0
        self.compile_seconds = self.time_call()  # warm-up: traces and compiles
        self.times: list[float] = []

    def time_call(self) -> float:
        """Run one call of ``steps`` optimisation steps; return its wall time in seconds."""
        self.calls += 1
        n = self.steps * self.batch_size
        index = jax.random.permutation(jax.random.fold_in(self.key, 100 + self.calls), n)
        index = jax.block_until_ready(index.reshape(self.steps, self.batch_size))
        start = time.perf_counter()
        self.params, self.batch_stats, self.opt_state, sums = self.train_chunk(
            self.params, self.batch_stats, self.frozen, self.opt_state, None, self.x, self.y,
            index, jax.random.fold_in(self.key, 1000 + self.calls), jnp.float32(1.0))
        jax.block_until_ready((self.params, self.opt_state, sums))
        return time.perf_counter() - start

    def profile(self, profile_dir: str) -> dict[str, float]:
        """Trace one more call into ``profile_dir/NAME``; XLA op -> ms of self time per step."""
        trace_dir = pathlib.Path(profile_dir) / self.name
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            self.time_call()
        return xla_op_times(trace_dir, self.steps)

    def result(self) -> dict:
        compiled = self.train_chunk if self.loop == "scan" else self.train_chunk.jitted_step
        assert compiled._cache_size() == 1, "the train step was compiled more than once"
        step_seconds = statistics.median(self.times) / self.steps
        return dict(experiment=self.name, model=self.model_name, method=self.method,
                    loop=self.loop, batch_size=self.batch_size,
                    compile_seconds=self.compile_seconds,
                    step_seconds=step_seconds,
                    step_seconds_range=(min(self.times) / self.steps,
                                        max(self.times) / self.steps),
                    images_per_second=self.batch_size / step_seconds)


def ratio_within_rounds(times: list[float], reference_times: list[float]) -> float:
    """Median over rounds of ``times[r] / reference_times[r]`` (both lists indexed by round)."""
    if len(times) != len(reference_times) or not times:
        raise ValueError("need one time per round on both sides")
    return statistics.median(own / ref for own, ref in zip(times, reference_times))


def time_experiments(names: list[str], steps: int, batch_size: int | None, repeats: int,
                     loop: str = "auto", profile_dir: str | None = None) -> list[dict]:
    """Compile every experiment, then time ``repeats`` rounds of one call each, round-robin.

    Each result also holds ``vs_dense``: the median over rounds of this step's time divided by
    the dense step of the same model *in the same round* (None without a dense experiment of
    that model at the same batch size), and, with ``profile_dir``, ``op_ms_per_step`` (XLA
    operation -> milliseconds of self time per step, summed over threads) from one extra traced
    call.
    """
    timers = []
    for name in names:
        timers.append(ExperimentTimer(name, steps, batch_size, repeats, loop))
        print(f"  {name}: compiled", file=sys.stderr, flush=True)
    for _ in range(repeats):
        for timer in timers:
            timer.times.append(timer.time_call())
    dense = {t.model_name: t for t in timers if t.method == "dense"}
    results = []
    for timer in timers:
        result = timer.result()
        reference = dense.get(timer.model_name)
        if reference is not None and reference.batch_size != timer.batch_size:
            reference = None  # steps of different batch sizes are not comparable
        result["vs_dense"] = (None if reference is None
                              else ratio_within_rounds(timer.times, reference.times))
        if profile_dir is not None:  # after the timed calls, so tracing never slows them
            result["op_ms_per_step"] = timer.profile(profile_dir)
        results.append(result)
    return results


# Trace events that are not XLA operations: Python frames ("$file.py:line name"), dispatch
# (whose self time is mostly waiting for the worker threads), the thunk executor's own spans
# and compilation.
_NOT_AN_OP = ("$", "Pjit", "ThunkExecutor", "PjRt", "CommonPjRt", "Cpu", "backend_",
              "TaskDispatcher", "lower_", "trace_to_jaxpr", "FusionCompiler", "Codegen",
              "JitCompiler")


def xla_op_times(trace_dir: pathlib.Path, steps: int) -> dict[str, float]:
    """Milliseconds of *self time* per step of each XLA operation in the newest Perfetto trace.

    Complete ("X") events nest on a thread (a ``while`` or ``call`` thunk spans its body's
    operations; Python frames span everything), so each event's own time is its duration minus
    that of the events directly inside it, and only names that are operations are reported. Self
    times are summed per name over all threads: an operation split over two threads counts
    twice, so the numbers rank where CPU time goes rather than add up to the wall time.
    """
    files = sorted(trace_dir.rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no perfetto_trace.json.gz under {trace_dir}; did jax.profiler run?")
    with gzip.open(files[-1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    by_thread = collections.defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and "dur" in event:
            by_thread[(event.get("pid"), event.get("tid"))].append(event)
    micros = collections.Counter()
    for thread_events in by_thread.values():
        # Parents first: earlier start, and the longer of two that start together.
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [end, name, self-time so far]
        for event in thread_events:
            start, duration = event["ts"], event["dur"]
            while stack and stack[-1][0] <= start:
                _, done_name, own = stack.pop()
                micros[done_name] += own
            if stack:
                stack[-1][2] -= duration  # the enclosing event did not run this part itself
            stack.append([start + duration, event.get("name", "$"), duration])
        for _, done_name, own in stack:
            micros[done_name] += own
    ops = {name: us for name, us in micros.items() if not name.startswith(_NOT_AN_OP)}
    return {name: us / 1e3 / steps for name, us in sorted(ops.items(), key=lambda kv: -kv[1])}


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
          f"{os.cpu_count()} CPUs; batch {args.batch_size or 'of each recipe'}, "
          f"{args.steps} steps per call, "
          f"median of {args.repeats} calls", flush=True)
    rows = time_experiments(args.experiments, args.steps, args.batch_size, args.repeats,
                            args.loop, args.profile)
    # "first call s": the warm-up call, tracing and compilation plus one call's steps.
    header = (f"{'experiment':<18} {'batch':>5} {'ms/step':>9} {'images/s':>10} "
              f"{'s/epoch (FMNIST)':>17} {'vs dense':>9} {'first call s':>13} {'loop':>7} "
              f"{'ms/step min-max':>16}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "-" if r["vs_dense"] is None else f"{r['vs_dense']:.2f}x"
        steps_per_epoch = FASHION_MNIST_TRAIN // r["batch_size"]  # a run drops the remainder
        print(f"{r['experiment']:<18} {r['batch_size']:>5} {1e3 * r['step_seconds']:>9.2f} "
              f"{r['images_per_second']:>10.0f} {steps_per_epoch * r['step_seconds']:>17.1f} "
              f"{ratio:>9} {r['compile_seconds']:>13.1f} {r['loop']:>7} "
              f"{1e3 * r['step_seconds_range'][0]:>7.2f}-{1e3 * r['step_seconds_range'][1]:<8.2f}")
    for r in rows:
        ops = r.get("op_ms_per_step")
        if ops:
            total = sum(ops.values())
            print(f"\n{r['experiment']}: XLA operations, ms of self time per step summed over "
                  f"threads (all ops: {total:.2f}; trace in {args.profile}/{r['experiment']})")
            for op, ms in list(ops.items())[:args.top]:
                print(f"  {ms:8.3f}  {100 * ms / total:5.1f} %  {op}")
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    print(f"peak resident memory: {maxrss * scale:.0f} MiB")


if __name__ == "__main__":
    main()
