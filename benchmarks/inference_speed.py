"""Prediction speed of each compressed run: full-size quantized model vs exported pruned model.

For every ``.bcz`` file (``results/**/model.bcz`` by default, or the paths given), decodes it,
builds the full-size quantized model (:func:`bayescomp.compression.codec.load`: the original
shapes, removed weights zero) and the physically pruned model
(:func:`bayescomp.compression.export.export_decoded`: only the kept units), and times a jitted
forward pass of each on random inputs of the file's input shape (no dataset needed). After one
warm-up call of each that compiles, the models are timed side by side: each of ``--repeats``
rounds runs ``--calls`` forward calls (``jax.block_until_ready`` after each) of the full-size
model and then of every exported one, so that all see the same machine load; the median round
gives images per second, and the speed-up is the median over rounds of the ratio within a round
(steadier than the ratio of medians on a loaded machine). It also checks that both models give
the same logits on the timed batch and prints the parameter counts. Each file is exported once
per ``--channel-multiple`` (conv channels zero-padded to that multiple,
:mod:`bayescomp.compression.export`; 1 = none), one row each: XLA's CPU convolutions run much
slower on channel counts that are not a multiple of the vector width.

Models with BatchNorms (VGG, ResNet; format version 3 files) are timed the same way: both the
full-size model and the exported one run their BatchNorms in running-average mode (the exported
one over the kept channels only). The backend is JAX's default (CPU here; a GPU where one is
visible, named in the first line of the output).

Usage::

    python benchmarks/inference_speed.py                        # every results/**/model.bcz
    python benchmarks/inference_speed.py results/fashion_mnist/lenet300_svd/seed0/model.bcz
    python benchmarks/inference_speed.py --batch-size 1000 100 --repeats 7 --calls 20
    python benchmarks/inference_speed.py RUN/model.bcz --batch-size 8 --repeats 2 --calls 1  # smoke
    python benchmarks/inference_speed.py RUN/model.bcz --channel-multiple 1 --record

``--record`` writes what was measured beside each file, ``inference_speed.json`` (:data:`RECORD`:
the speed-ups, images per second, the command, the commit, the device and the load before the
timing), which ``python -m bayescomp.tables`` puts beside the run's multiply-add ratio in
``cifar.md``. It refuses a checkout with local changes (the commit must say what was timed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without `pip install -e .`

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bayescomp import allocator, atomic, provenance  # noqa: E402
from bayescomp.compression import codec  # noqa: E402
from bayescomp.compression.export import export_decoded  # noqa: E402
from bayescomp.errors import BayescompError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=pathlib.Path,
                        help="model.bcz files (default: results/**/model.bcz)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1000, 100],
                        help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed repeats; the median is reported (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=10,
                        help="forward calls per timed repeat (default: %(default)s)")
    parser.add_argument("--channel-multiple", type=int, nargs="+", default=[1, 8],
                        help="export with conv channels zero-padded to these multiples, one "
                             "row each; 1 = no padding (default: %(default)s)")
    parser.add_argument("--record", action="store_true",
                        help=f"write {RECORD} beside each file (a clean checkout only)")
    return parser.parse_args(argv)


#: The file ``--record`` writes beside each ``model.bcz``.
RECORD = "inference_speed.json"


def record(path: pathlib.Path, rows: list[dict], args: argparse.Namespace, commit: str,
           load: tuple[float, float, float]) -> pathlib.Path:
    """Write ``rows`` (one file's) to :data:`RECORD` beside ``path``, atomically."""
    target = path.parent / RECORD
    atomic.write_text(target, json.dumps({
        "benchmark": "benchmarks/inference_speed.py",
        "command": " ".join(["python", "benchmarks/inference_speed.py",
                             *map(str, sys.argv[1:])]),
        "git_commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runtime": provenance.runtime(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load],
        "repeats": args.repeats, "calls": args.calls,
        "rows": [{"batch": r["batch"], "channel_multiple": r["multiple"],
                  "full_images_per_second": round(r["full_ips"], 1),
                  "exported_images_per_second": round(r["pruned_ips"], 1),
                  "speedup": round(r["speedup"], 4),
                  "speedup_min": round(r["speedup_range"][0], 4),
                  "speedup_max": round(r["speedup_range"][1], 4),
                  "max_rel_diff": r["max_rel_diff"]} for r in rows],
    }, indent=1) + "\n")
    return target


def jitted_forward(model: nnx.Module):
    """``(forward, state)``: a jitted pure function of the model's state and a batch."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return forward, state


def images_per_second(forward, state, x, repeats: int, calls: int) -> float:
    """Median over ``repeats`` of ``calls`` blocked forward calls, after a compiling warm-up."""
    return x.shape[0] / statistics.median(timed_rounds([(forward, state)], x, repeats, calls)[0])


def timed_rounds(models, x, repeats: int, calls: int) -> list[list[float]]:
    """Seconds per call of each ``(forward, state)``, per round, the models alternated.

    Every model is called once first (compilation). Then each of ``repeats`` rounds times
    ``calls`` blocked calls of every model in turn, so that a model's round and its neighbours'
    share the machine's load.

    Returns:
        ``times[m][r]``: model ``m``'s seconds per call in round ``r``.
    """
    for forward, state in models:
        jax.block_until_ready(forward(state, x))
    times = [[] for _ in models]
    for _ in range(repeats):
        for index, (forward, state) in enumerate(models):
            start = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(forward(state, x))
            times[index].append((time.perf_counter() - start) / calls)
    return times


def param_count(model: nnx.Module) -> int:
    """Kernels, biases and BatchNorm γ, β, running means and variances."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))) + sum(
        int(leaf.size) for leaf in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))


def _module(root: nnx.Module, path: str):
    """The module at dotted ``path`` (integer parts index lists: ``stage1.0.conv1``)."""
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def bench_file(path: pathlib.Path, batch_sizes, repeats: int, calls: int,
               channel_multiples=(1,)) -> list[dict]:
    full, network = codec.load(path)
    # The full-size model needs the deterministic view (posterior means, no sampling, BatchNorm
    # running averages).
    full_forward, full_state = jitted_forward(
        nnx.view(full, deterministic=True, use_running_average=True))
    exported = {}  # channel multiple -> (pruned model, its jitted forward, its state)
    for multiple in channel_multiples:
        pruned = export_decoded(network, channel_multiple=multiple)
        exported[multiple] = (pruned, *jitted_forward(pruned))
    rows = []
    for batch in batch_sizes:
        x = jax.random.normal(jax.random.key(0), (batch, *network.input_shape))
        expected = np.asarray(full_forward(full_state, x))
        times = timed_rounds([(full_forward, full_state)]
                             + [(forward, state) for _, forward, state in exported.values()],
                             x, repeats, calls)
        full_ips = batch / statistics.median(times[0])
        for index, (multiple, (pruned, pruned_forward, pruned_state)) in enumerate(
                exported.items(), start=1):
            got = np.asarray(pruned_forward(pruned_state, x))
            max_diff = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))
            ratios = [full / mine for full, mine in zip(times[0], times[index])]
            rows.append(dict(file=path, model=network.model_name, batch=batch,
                             multiple=multiple, full_ips=full_ips,
                             pruned_ips=batch / statistics.median(times[index]),
                             speedup=statistics.median(ratios), speedup_range=(min(ratios),
                                                                               max(ratios)),
                             full_params=param_count(full), pruned_params=pruned.num_params(),
                             kept_weights=int(sum(m.sum() for m in network.masks)),
                             arch=", ".join(
                                 f"{name} {tuple(_module(pruned.network, name).kernel.shape)}"
                                 for name in pruned.kept_units),
                             max_rel_diff=max_diff))
    return rows


def main(argv=None) -> int:
    if argv is None:  # as a command: with the allocator a run gets (bayescomp/allocator.py)
        allocator.reexec_with_tuned_allocator()
    args = parse_args(argv)
    files = args.files or sorted(REPO_ROOT.glob("results/**/model.bcz"))
    if not files:
        print("no model.bcz files found; run `python -m bayescomp.compress RUN_DIR` first")
        return 1
    commit = provenance.git_commit()
    if args.record and commit.endswith("-dirty"):
        print(f"error: --record needs a clean checkout (local changes: "
              f"{', '.join(provenance.dirty_files())}); commit or stash them", file=sys.stderr)
        return 2
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{len(jax.devices())} device(s), allocator {allocator.description()}; "
          f"{args.repeats} rounds of {args.calls} calls, full-size "
          "and exported models alternated; speed-up = median within-round ratio [min-max]")
    header = (f"{'run':<44} {'batch':>5} {'pad':>3} {'full img/s':>11} {'pruned img/s':>12} "
              f"{'speed-up':>8} {'range':>11} "
              f"{'full params':>11} {'pruned params':>13} {'kept w':>7} {'max rel diff':>12}")
    print(header)
    print("-" * len(header))
    status = 0
    for path in files:
        try:
            label = str(pathlib.Path(path).resolve().relative_to(REPO_ROOT))
        except ValueError:
            label = str(path)
        label = label.removeprefix("results/").removesuffix("/model.bcz")
        arch = {}
        load = os.getloadavg()
        try:
            rows = bench_file(pathlib.Path(path), args.batch_size, args.repeats, args.calls,
                              args.channel_multiple)
        except BayescompError as error:  # a bad file, or a model export cannot shrink
            print(f"{label:<44} not timed: {error}")
            status = 1
            continue
        for row in rows:
            arch[row["multiple"]] = row["arch"]
            low, high = row["speedup_range"]
            print(f"{label:<44} {row['batch']:>5} {row['multiple']:>3} {row['full_ips']:>11,.0f} "
                  f"{row['pruned_ips']:>12,.0f} {row['speedup']:>7.2f}x "
                  f"{f'{low:.2f}-{high:.2f}':>11} "
                  f"{row['full_params']:>11,} {row['pruned_params']:>13,} "
                  f"{row['kept_weights']:>7,} {row['max_rel_diff']:>12.1e}")
        for multiple, kernels in arch.items():
            print(f"{'':<44} exported kernels (pad {multiple}): {kernels}")
        if args.record:
            try:
                written = record(pathlib.Path(path), rows, args, commit, load)
                print(f"{'':<44} recorded in {written}")
            except OSError as error:
                print(f"error: cannot write {RECORD} beside {path}: {error}", file=sys.stderr)
                return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
