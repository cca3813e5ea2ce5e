"""Speed of the jitted training step, per experiment, on random data of the right shape.

Builds each experiment's model and optimizer through the library (Hydra compose of
``conf/config.yaml`` + ``+experiment=NAME``, then ``bayescomp.runs.build_model``,
``optim.make_optimizer``, ``step.choose_loop`` and ``step.make_chunk``), so what is timed is
exactly the step a run uses: ``--steps`` optimisation steps per call, as one jitted ``lax.scan`` or
as a jitted step in a Python loop (``trainer.loop``). No dataset is needed: experiments on the
CIFAR family get random 32x32x3 images and, as their runs do by default, the crop-and-flip
augmentation inside the step (``bayescomp.data.augment``); the others 28x28x1 images.

Every experiment is compiled first (one warm-up call each); then ``--repeats`` rounds time one
call of each experiment in turn. For each experiment it prints the images per second (median
over its timed calls), the projected seconds per epoch of its dataset (Fashion-MNIST's 60,000
images, CIFAR's 50,000), and the
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

``--torch`` times, beside each experiment, the same network's train step in PyTorch
(``torch_reference.py``: channels-last, the same augmentation as tensor operations, SGD with
momentum and weight decay, or Adam for LeNet-5) in a worker subprocess under ``--torch-python``
(PyTorch is never a dependency of bayescomp), kept alive and told to run ``--steps`` steps
between our calls, the order alternating by round. It prints both sides' images per second,
seconds per epoch and memory, and the ratio of our images per second to PyTorch's per round
(median, min-max). ``--torch-modes eager compile`` adds ``torch.compile``, and
``--torch-allocators default tuned`` (the default: both) runs each PyTorch mode once with glibc's
default allocator and once with the tunables bayescomp's own processes use
(:mod:`bayescomp.allocator`, which this script applies to itself as ``python -m bayescomp.run``
does), so that PyTorch is compared at its best of the two::

    TORCH_PYTHON=/path/to/venv/bin/python python benchmarks/train_speed.py \
        --experiments resnet20_dense --batch-size 128 --steps 2 --repeats 7 --torch

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
import subprocess
import sys
import time
import types

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without `pip install -e .`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from bayescomp import allocator, optim, runs, step  # noqa: E402
from bayescomp.data import augment as augment_lib  # noqa: E402
from bayescomp.loop import train_view  # noqa: E402

DEFAULT_EXPERIMENTS = ["lenet300_dense", "lenet300_svd", "lenet5_dense", "lenet5_svd"]
FASHION_MNIST_TRAIN = 60_000
CIFAR_TRAIN = 50_000
INPUT_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def data_shape(data_name: str) -> tuple[tuple[int, int, int], int, int, bool]:
    """``(input_shape, classes, train size, augmented by default)`` of an experiment's data.

    The CIFAR family (``cifar10``, ``cifar10_jpeg``, ``cifar100``) gets 32x32x3 images and, as a
    run does by default, the crop-and-flip augmentation inside the step; everything else is timed
    on Fashion-MNIST-shaped images without augmentation.
    """
    if str(data_name).startswith("cifar"):
        return CIFAR_SHAPE, 100 if "100" in str(data_name) else 10, CIFAR_TRAIN, True
    return INPUT_SHAPE, NUM_CLASSES, FASHION_MNIST_TRAIN, False


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
    parser.add_argument("--torch", action="store_true",
                        help="also time the same network's train step in PyTorch "
                             "(benchmarks/torch_reference.py), alternated with ours round by "
                             "round, and report the ratio of images per second")
    parser.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", "python"),
                        help="interpreter with PyTorch for --torch (default: $TORCH_PYTHON, "
                             "else python)")
    parser.add_argument("--torch-modes", nargs="+", default=["eager"],
                        choices=["eager", "compile"],
                        help="PyTorch variants to time, each in its own worker: channels-last "
                             "eager, torch.compile (default: %(default)s)")
    parser.add_argument("--torch-allocators", nargs="+", default=["default", "tuned"],
                        choices=["default", "tuned"],
                        help="glibc allocator settings of the PyTorch workers, each a worker "
                             "per mode: glibc's defaults, or bayescomp.allocator's tunables "
                             "(default: %(default)s)")
    parser.add_argument("--torch-omp-wait", choices=["passive", "active"], default="passive",
                        help="OMP_WAIT_POLICY of the PyTorch worker (default: %(default)s: on "
                             "a loaded 2-core machine OpenMP's spinning threads make PyTorch's "
                             "steps several times slower)")
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
        shape, classes, self.n_train, augment_default = data_shape(cfg.data.name)
        model = runs.build_model(cfg, shape, classes, seed=0)
        # The step a run compiles includes its augmentation; the fill value (the preprocessed
        # black pixel) does not change the cost, so zeros stand in for the dataset's.
        self.augment = augment_lib.from_config(
            OmegaConf.to_container(cfg.data, resolve=True),
            types.SimpleNamespace(black_pixel=(0.0,) * shape[2]),
            augment_by_default=augment_default)
        split = step.StateSplit()
        graphdef, self.params, self.batch_stats, self.frozen = split.split(
            train_view(model, "batch_stats"))
        optimizer = optim.make_optimizer(
            OmegaConf.to_container(cfg.optimizer, resolve=True), self.params,
            total_steps=(repeats + 2) * steps, steps_per_epoch=steps)
        self.opt_state = optimizer.init(self.params)
        # The KL is divided by the size of the real training set, as in a Fashion-MNIST run.
        self.loop = step.choose_loop(model, loop)
        self.train_chunk = step.make_chunk(graphdef, split, optimizer, n_train=self.n_train,
                                           loop=self.loop, augment=self.augment)
        self.key = jax.random.key(0)
        n = steps * batch_size  # every image is used once per call
        self.x = jax.random.normal(jax.random.fold_in(self.key, 1), (n, *shape), jnp.float32)
        self.y = jax.random.randint(jax.random.fold_in(self.key, 2), (n,), 0, classes,
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

    def step_mib(self) -> float:
        """MiB of the compiled step's arguments, outputs and temporaries (XLA's memory
        analysis of one more, ahead-of-time, compilation); NaN where XLA gives none."""
        index = jnp.zeros((self.steps, self.batch_size), jnp.int32)
        key, beta = jax.random.key(0), jnp.float32(1.0)
        if self.loop == "scan":
            lowered = self.train_chunk.lower(self.params, self.batch_stats, self.frozen,
                                             self.opt_state, None, self.x, self.y, index, key,
                                             beta)
        else:
            lowered = self.train_chunk.jitted_step.lower(
                (self.params, self.batch_stats, self.opt_state), (index[0], key), self.frozen,
                None, self.x, self.y, beta)
        memory = lowered.compile().memory_analysis()
        if memory is None:
            return float("nan")
        # Donated or aliased buffers are counted once.
        total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                 + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
        return total / 2**20

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
                    images_per_second=self.batch_size / step_seconds,
                    n_train=self.n_train, augment=self.augment is not None,
                    step_mib=self.step_mib())


def ratio_within_rounds(times: list[float], reference_times: list[float]) -> float:
    """Median over rounds of ``times[r] / reference_times[r]`` (both lists indexed by round)."""
    if len(times) != len(reference_times) or not times:
        raise ValueError("need one time per round on both sides")
    return statistics.median(own / ref for own, ref in zip(times, reference_times))


def time_experiments(names: list[str], steps: int, batch_size: int | None, repeats: int,
                     loop: str = "auto", profile_dir: str | None = None,
                     torch_python: str | None = None,
                     torch_modes: tuple[str, ...] = ("eager",),
                     torch_omp_wait: str = "passive",
                     torch_allocators: tuple[str, ...] = ("default",)) -> list[dict]:
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
    references = {}  # experiment -> {mode: TorchReference}
    if torch_python is not None:
        for timer in timers:
            references[timer.name] = {}
            for mode in torch_modes:
                for malloc in torch_allocators:
                    label = mode if malloc == "default" else f"{mode}+{malloc}"
                    try:
                        references[timer.name][label] = TorchReference(
                            torch_python, timer.model_name, timer.batch_size, mode,
                            torch_omp_wait, malloc)
                    except RuntimeError as error:  # e.g. torch.compile without a toolchain
                        print(f"  {timer.name}: PyTorch {label} unavailable: {error}",
                              file=sys.stderr, flush=True)
            print(f"  {timer.name}: PyTorch reference built", file=sys.stderr, flush=True)
    for r in range(repeats):
        for timer in timers:
            # Ours and PyTorch's steps back to back, the order alternating by round, so both
            # sides of a ratio see the same spell of machine load.
            refs = list(references.get(timer.name, {}).values())
            calls = [timer] + refs if r % 2 == 0 else refs + [timer]
            for call in calls:
                if call is timer:
                    timer.times.append(timer.time_call())
                else:
                    call.times.append(call.time_call(steps))
    dense = {t.model_name: t for t in timers if t.method == "dense"}
    results = []
    for timer in timers:
        result = timer.result()
        reference = dense.get(timer.model_name)
        if reference is not None and reference.batch_size != timer.batch_size:
            reference = None  # steps of different batch sizes are not comparable
        result["vs_dense"] = (None if reference is None
                              else ratio_within_rounds(timer.times, reference.times))
        result["torch"] = {}
        for mode, ref in references.get(timer.name, {}).items():
            ref_step = statistics.median(ref.times) / steps
            # Images per second ours / theirs, per round: their time over ours.
            per_round = [theirs / ours for ours, theirs in zip(timer.times, ref.times)]
            result["torch"][mode] = dict(
                step_seconds=ref_step, images_per_second=timer.batch_size / ref_step,
                ratio=statistics.median(per_round), ratio_range=(min(per_round),
                                                                 max(per_round)),
                **ref.close())
        if profile_dir is not None:  # after the timed calls, so tracing never slows them
            result["op_ms_per_step"] = timer.profile(profile_dir)
        results.append(result)
    return results


class TorchReference:
    """A PyTorch worker (``torch_reference.py``) with one network built, kept alive so that its
    steps can be timed between ours.

    Args:
        python: Interpreter with PyTorch.
        model: bayescomp model name (``resnet20``, ``resnet56``, ``vgg16``, ``lenet5``).
        batch_size: Images per step.
        mode: ``"eager"`` (channels-last) or ``"compile"`` (``torch.compile`` of the step).
        omp_wait: The worker's ``OMP_WAIT_POLICY``.
        malloc: ``"default"``: glibc's allocator as it starts; ``"tuned"``:
            :data:`bayescomp.allocator.TUNABLES` (this process's own settings).

    Raises:
        RuntimeError: The worker could not build the network (its message).
    """

    def __init__(self, python: str, model: str, batch_size: int, mode: str,
                 omp_wait: str = "passive", malloc: str = "default"):
        self.mode = mode
        env = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", allocator.MARK, allocator.SWITCH)}
        env["OMP_WAIT_POLICY"] = omp_wait.upper()
        if malloc == "tuned":
            tuned = allocator.tuned_environment(env)
            if tuned is None:
                raise RuntimeError("glibc tunables need Linux with glibc (and no GPU JAX)")
            env = tuned
        self.process = subprocess.Popen(
            [python, str(pathlib.Path(__file__).with_name("torch_reference.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        answer = self._ask(cmd="build", model=model, batch=batch_size, mode=mode)
        if not answer.get("ok"):
            self.close()
            raise RuntimeError(answer.get("error", "no answer"))
        self.compile_seconds = answer["seconds"]
        self.times: list[float] = []

    def _ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            return {"ok": False, "error": f"worker exited ({self.process.wait()})"}
        return json.loads(line)

    def time_call(self, steps: int) -> float:
        """Seconds of ``steps`` PyTorch train steps, timed inside the worker."""
        return self._ask(cmd="run", steps=steps)["seconds"]

    def close(self) -> dict:
        """Stop the worker; its torch version, threads and peak resident memory (MiB)."""
        info = {}
        if self.process.poll() is None:
            info = self._ask(cmd="info")
            self.process.stdin.close()
            self.process.wait(timeout=60)
        return info


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
    if argv is None:  # as a command: with the allocator a run gets (bayescomp/allocator.py)
        allocator.reexec_with_tuned_allocator()
    args = parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
          f"{os.cpu_count()} CPUs, allocator {allocator.description()}; "
          f"batch {args.batch_size or 'of each recipe'}, "
          f"{args.steps} steps per call, "
          f"median of {args.repeats} calls", flush=True)
    rows = time_experiments(args.experiments, args.steps, args.batch_size, args.repeats,
                            args.loop, args.profile,
                            torch_python=args.torch_python if args.torch else None,
                            torch_modes=tuple(args.torch_modes),
                            torch_omp_wait=args.torch_omp_wait,
                            torch_allocators=tuple(args.torch_allocators))
    # "first call s": the warm-up call, tracing and compilation plus one call's steps.
    header = (f"{'experiment':<18} {'batch':>5} {'ms/step':>9} {'images/s':>10} "
              f"{'s/epoch':>17} {'vs dense':>9} {'first call s':>13} {'loop':>7} "
              f"{'ms/step min-max':>16}")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "-" if r["vs_dense"] is None else f"{r['vs_dense']:.2f}x"
        steps_per_epoch = r["n_train"] // r["batch_size"]  # a run drops the remainder
        print(f"{r['experiment']:<18} {r['batch_size']:>5} {1e3 * r['step_seconds']:>9.2f} "
              f"{r['images_per_second']:>10.0f} {steps_per_epoch * r['step_seconds']:>17.1f} "
              f"{ratio:>9} {r['compile_seconds']:>13.1f} {r['loop']:>7} "
              f"{1e3 * r['step_seconds_range'][0]:>7.2f}-{1e3 * r['step_seconds_range'][1]:<8.2f}")
    if any(r["torch"] for r in rows):
        print(f"\nPyTorch reference ({args.torch_python}, OMP_WAIT_POLICY="
              f"{args.torch_omp_wait}), alternated with ours round by round; "
              "ratio = our images/s over PyTorch's, per round: median (min-max)")
        header = (f"{'experiment':<18} {'batch':>5} {'ours img/s':>10} {'s/epoch':>8} "
                  f"{'ours MiB':>9} {'torch':>11} {'img/s':>7} {'s/epoch':>8} {'MiB':>6} "
                  f"{'ratio':>6} {'min-max':>11}")
        print(header)
        print("-" * len(header))
        for r in rows:
            steps_per_epoch = r["n_train"] // r["batch_size"]
            for mode, t in r["torch"].items():
                print(f"{r['experiment']:<18} {r['batch_size']:>5} "
                      f"{r['images_per_second']:>10.0f} "
                      f"{steps_per_epoch * r['step_seconds']:>8.1f} "
                      f"{r['step_mib']:>9.0f} {mode:>11} {t['images_per_second']:>7.0f} "
                      f"{steps_per_epoch * t['step_seconds']:>8.1f} "
                      f"{t.get('maxrss_mib', float('nan')):>6.0f} {t['ratio']:>6.2f} "
                      f"{t['ratio_range'][0]:>5.2f}-{t['ratio_range'][1]:<5.2f}")
        print("ours MiB: the compiled step's arguments, outputs and temporaries "
              "(XLA memory analysis); PyTorch MiB: the worker process's peak resident memory "
              "(its interpreter and libraries included)")
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
