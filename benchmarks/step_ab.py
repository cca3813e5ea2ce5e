"""One-process A/B of a base commit's train step (A) against this tree's (B).

A is the step as the base commit's ``benchmarks/train_speed.py`` built it: its ``bayescomp``
package is extracted (``git archive BASE bayescomp``) into a temporary directory, renamed to
``bayescomp_base`` with its absolute imports rewritten, and the step is made by its
``train.build_model``, ``train.build_optimizer``, ``train.choose_loop`` and
``train.make_train_chunk``. B is the step exactly as ``train_speed.ExperimentTimer`` builds it now
(``runs.build_model``, ``step.StateSplit``, ``optim.make_optimizer``, ``step.make_chunk``). Both
get the experiment's config composed with Hydra from this tree's ``conf/``, the same batch size,
the same random images and labels, the same batch indices and noise keys per call, and the same
``--steps`` optimisation steps per call.

Both are compiled (one warm-up call each); then both are reset to the same initial variables
(this tree's initialisation, written into A's state leaf by leaf) and run ``--check-calls`` calls
side by side, and their variables, optimiser states and chunk sums are compared leaf by leaf
(bit-identical, or the largest difference in float32 ULPs). Then ``--rounds`` rounds each call A
once and B once, in alternating order (A, B, then B, A) so that neither side always runs
second, with ``jax.block_until_ready`` around every call; the variables are compared once more
after the last round. It prints each side's median ms/step and the median over rounds of the
within-round ratio B / A (new / old) with its range: the number that survives the 2-core VM's
drifts in speed (separate processes, or one side timed after the other, put those drifts
straight into a ratio). Neither step may compile again while timed (asserted). Last (unless
``--no-hlo``) both steps are compiled once more and their optimised HLO modules compared: op
counts, and whether the instructions form the same sequence of result types and opcodes.

Usage::

    python benchmarks/step_ab.py lenet300_svd --rounds 15
    python benchmarks/step_ab.py lenet5_svd --steps 20 --rounds 7 --json /tmp/ab.json
    python benchmarks/step_ab.py lenet300_dense --base HEAD~3

Exit status 0 after a run (whatever the ratio), 2 on bad input: an unknown experiment, a commit
git cannot resolve, a base without the old step.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import OmegaConf
from train_speed import (  # importing it puts the checkout on sys.path
    FASHION_MNIST_TRAIN,
    INPUT_SHAPE,
    NUM_CLASSES,
    REPO_ROOT,
    ExperimentTimer,
    compose_experiment,
)

from bayescomp import optim, runs, step
from bayescomp.loop import train_view

BASE_PACKAGE = "bayescomp_base"

#: ``from bayescomp...`` / ``import bayescomp...`` at the start of a line (any indentation).
_IMPORT = re.compile(r"^(\s*(?:from|import)\s+)bayescomp(?=[.\s]|$)", re.MULTILINE)
#: A module path in a string literal (``procedures.py``'s ``"bayescomp.train:..."`` registry).
_STRING = re.compile(r"""(["'])bayescomp(?=[.:])""")


class BadInput(Exception):
    """A problem with the command line: printed on one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# The base commit's package, importable under another name


def resolve_commit(base: str) -> str:
    """The full hash of ``base``, or :class:`BadInput`."""
    result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BadInput(f"git cannot resolve {base!r} to a commit of {REPO_ROOT}")
    return result.stdout.strip()


def rewrite_package(package_dir: pathlib.Path, old: str = "bayescomp",
                    new: str = BASE_PACKAGE) -> int:
    """Rewrite the absolute self-imports of every ``.py`` under ``package_dir`` from ``old`` to
    ``new`` (and module paths in string literals, for ``importlib``); return the files changed.

    Raises:
        RuntimeError: an import of ``old`` is left (a form the patterns do not know).
    """
    assert old == "bayescomp", "the patterns are written for bayescomp"
    changed = 0
    for path in sorted(package_dir.rglob("*.py")):
        text = path.read_text()
        rewritten = _STRING.sub(rf"\g<1>{new}", _IMPORT.sub(rf"\g<1>{new}", text))
        leftover = re.search(rf"^\s*(?:from|import)\s+{old}\b(?!_)", rewritten, re.MULTILINE)
        if leftover:
            raise RuntimeError(f"{path}: import left unrewritten: {leftover.group(0).strip()}")
        if rewritten != text:
            path.write_text(rewritten)
            changed += 1
    return changed


@contextlib.contextmanager
def base_package(commit: str) -> Iterator[Any]:
    """The base commit's ``bayescomp`` imported as ``bayescomp_base``; yields its ``train``.

    The temporary copy and the modules are removed on exit.
    """
    if BASE_PACKAGE in sys.modules:
        raise RuntimeError(f"{BASE_PACKAGE} is already imported")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="step_ab_"))
    try:
        archive = subprocess.run(["git", "archive", commit, "bayescomp"], cwd=REPO_ROOT,
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            raise BadInput(f"git archive {commit[:12]} bayescomp failed: "
                           f"{archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        if not (tmp / "bayescomp" / "train.py").is_file():
            raise BadInput(f"commit {commit[:12]} has no bayescomp/train.py (the old step)")
        (tmp / "bayescomp").rename(tmp / BASE_PACKAGE)
        rewrite_package(tmp / BASE_PACKAGE)
        sys.path.insert(0, str(tmp))
        try:
            train = importlib.import_module(f"{BASE_PACKAGE}.train")
            missing = [name for name in ("build_model", "build_optimizer", "choose_loop",
                                         "make_train_chunk") if not hasattr(train, name)]
            if missing:
                raise BadInput(f"commit {commit[:12]}'s bayescomp.train lacks {missing}")
            # Every module of either package comes from its own tree.
            for name, module in list(sys.modules.items()):
                file = getattr(module, "__file__", None) or ""
                if name.split(".")[0] == BASE_PACKAGE:
                    assert file.startswith(str(tmp)), (name, file)
                elif name.split(".")[0] == "bayescomp":
                    assert not file.startswith(str(tmp)), (name, file)
            yield train
        finally:
            sys.path.remove(str(tmp))
            for name in [n for n in sys.modules if n.split(".")[0] == BASE_PACKAGE]:
                del sys.modules[name]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The two steps


class BaseTimer:
    """The base commit's train step, built as its ``benchmarks/train_speed.py`` built it.

    Same interface as :class:`train_speed.ExperimentTimer` (``time_call``, ``times``, ``calls``,
    ``params``, ``opt_state``, ``train_chunk``, ``loop``) and the same data and keys per call.
    """

    def __init__(self, train, cfg, steps: int, batch_size: int, repeats: int,
                 x: jax.Array, y: jax.Array):
        self.train, self.cfg = train, cfg
        self.steps, self.batch_size, self.repeats = steps, batch_size, repeats
        model = train.build_model(cfg, INPUT_SHAPE, NUM_CLASSES, seed=0)
        self.optimizer = train.build_optimizer(cfg, total_steps=(repeats + 2) * steps)
        graphdef, self.params = nnx.split(nnx.view(model, deterministic=False, pruned=False))
        self.opt_state = self.optimizer.init(self.params)
        self.loop = train.choose_loop(model, "auto")
        self.train_chunk = train.make_train_chunk(graphdef, self.optimizer, FASHION_MNIST_TRAIN,
                                                  batch_size, self.loop)
        self.key = jax.random.key(0)
        self.x, self.y = x, y
        self.calls = 0
        self.compile_seconds = self.time_call()
        self.times: list[float] = []

    def initial_params(self):
        model = self.train.build_model(self.cfg, INPUT_SHAPE, NUM_CLASSES, seed=0)
        return nnx.split(nnx.view(model, deterministic=False, pruned=False))[1]

    def time_call(self) -> float:
        self.calls += 1
        n = self.steps * self.batch_size
        index = jax.random.permutation(jax.random.fold_in(self.key, 100 + self.calls), n)
        index = jax.block_until_ready(index.reshape(self.steps, self.batch_size))
        start = time.perf_counter()
        self.params, self.opt_state, self.sums = self.train_chunk(
            self.params, self.opt_state, self.x, self.y, index,
            jax.random.fold_in(self.key, 1000 + self.calls), jnp.float32(1.0))
        jax.block_until_ready((self.params, self.opt_state, self.sums))
        return time.perf_counter() - start

    def compiled(self):
        return self.train_chunk if self.loop == "scan" else self.train_chunk.jitted_step


class NewTimer(ExperimentTimer):
    """:class:`train_speed.ExperimentTimer`, keeping each call's chunk sums for the check."""

    def time_call(self) -> float:
        chunk, sums = self.train_chunk, []

        def recording(*args):
            out = chunk(*args)
            sums.append(out[3])
            return out

        self.train_chunk = recording
        try:
            seconds = super().time_call()
        finally:
            self.train_chunk = chunk
        self.sums = sums[0]
        return seconds

    def compiled(self):
        return self.train_chunk if self.loop == "scan" else self.train_chunk.jitted_step


def check_no_recompilation(old: BaseTimer, new: NewTimer) -> None:
    for label, timer in (("old", old), ("new", new)):
        size = timer.compiled()._cache_size()
        assert size == 1, f"the {label} train step was compiled {size} times, not once"


def reset_to_common_start(old: BaseTimer, new: NewTimer, cfg, repeats: int) -> dict:
    """Give both timers this tree's initial variables and fresh optimiser states.

    Returns what the check found about the two initialisations.
    """
    model = runs.build_model(cfg, INPUT_SHAPE, NUM_CLASSES, seed=0)
    trainable, batch_stats, frozen = step.StateSplit().split(
        train_view(model, "batch_stats"))[1:]
    excluded = len(jax.tree.leaves(batch_stats)) + len(jax.tree.leaves(frozen))
    if excluded:
        raise RuntimeError(f"the new step leaves {excluded} arrays out of its trainable state; "
                           "the leaf-by-leaf comparison with the old step needs none")
    new_leaves = jax.tree.leaves(trainable)
    old_init = old.initial_params()
    old_leaves, old_def = jax.tree.flatten(old_init)
    shapes = [(a.shape, a.dtype) for a in old_leaves]
    if shapes != [(a.shape, a.dtype) for a in new_leaves]:
        raise RuntimeError(f"the old and new parameters differ in shape or order: {shapes} vs "
                           f"{[(a.shape, a.dtype) for a in new_leaves]}")
    same_init = compare_leaves(old_leaves, new_leaves)["bit_identical"]
    old.params = jax.tree.unflatten(old_def, new_leaves)
    old.opt_state = old.optimizer.init(old.params)
    new.params, new.batch_stats = trainable, batch_stats
    new.opt_state = optim.make_optimizer(
        OmegaConf.to_container(cfg.optimizer, resolve=True), trainable,
        total_steps=(repeats + 2) * new.steps, steps_per_epoch=new.steps).init(trainable)
    return {"initialisations_bit_identical": same_init}


def _ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float32 ULPs between ``a`` and ``b`` (ordered-integer distance; +0 and -0 are 1 apart)."""
    def ordered(x):
        i = x.astype(np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(2**31) - i, i)
    return np.abs(ordered(a) - ordered(b))


def compare_leaves(old_leaves, new_leaves) -> dict:
    """Leaf-by-leaf comparison: bit-identical, or how far apart (ULPs, relative difference)."""
    different = max_ulp = 0
    max_rel = 0.0
    total = 0
    for a, b in zip(old_leaves, new_leaves, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        total += a.size
        if a.dtype != b.dtype or a.shape != b.shape:
            raise RuntimeError(f"leaf {a.dtype}{a.shape} against {b.dtype}{b.shape}")
        if a.dtype == np.float32:
            unequal = a.view(np.uint32) != b.view(np.uint32)
        else:
            unequal = a != b
        n = int(np.sum(unequal))
        if not n:
            continue
        different += n
        if a.dtype == np.float32:
            max_ulp = max(max_ulp, int(_ulp_distance(a, b).max()))
            scale = max(float(np.max(np.abs(a))), np.finfo(np.float32).tiny)
            max_rel = max(max_rel, float(np.max(np.abs(a - b))) / scale)
        else:
            max_ulp = -1  # a non-float leaf differs: not rounding
    return {"bit_identical": different == 0, "elements": total, "elements_different": different,
                "max_ulp": max_ulp, "max_diff_relative_to_leaf_max": max_rel}


def compare_states(old: BaseTimer, new: NewTimer) -> dict:
    """Variables, optimiser state and last chunk sums of the two timers, leaf by leaf."""
    return {
        "steps": old.calls * old.steps if old.calls == new.calls else None,
        "params": compare_leaves(jax.tree.leaves(old.params), jax.tree.leaves(new.params)),
        "opt_state": compare_leaves(jax.tree.leaves(old.opt_state),
                                 jax.tree.leaves(new.opt_state)),
        "sums": compare_leaves([old.sums], [new.sums]),
    }


def describe(comparison: dict) -> str:
    p = comparison["params"]
    if p["bit_identical"]:
        text = "parameters bit-identical"
    else:
        text = (f"parameters differ in {p['elements_different']} of {p['elements']} elements, "
                f"at most {p['max_ulp']} ULP ({p['max_diff_relative_to_leaf_max']:.1e} of the "
                "leaf's largest value)")
    o, s = comparison["opt_state"], comparison["sums"]
    text += ("; optimiser state " + ("bit-identical" if o["bit_identical"]
                                     else f"at most {o['max_ulp']} ULP apart"))
    text += "; chunk sums " + ("bit-identical" if s["bit_identical"]
                               else f"at most {s['max_ulp']} ULP apart")
    if "initialisations_bit_identical" in comparison:
        text += (" (the two initialisations were " + ("" if comparison[
            "initialisations_bit_identical"] else "not ") + "bit-identical)")
    return text


_HLO_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\(", re.MULTILINE)
_FUSION_KIND = re.compile(r"\sfusion\(.*?kind=(\w+)")
#: An instruction's result type and opcode (names, operands and attributes left out).
_HLO_TYPED_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s([a-z][\w\-]*)\(",
                           re.MULTILINE)


def hlo_op_counts(text: str) -> collections.Counter:
    """Instructions of a compiled HLO module by opcode (fusions also by kind, ``fusion:kLoop``)."""
    counts = collections.Counter(_HLO_OP.findall(text))
    counts.update(f"fusion:{kind}" for kind in _FUSION_KIND.findall(text))
    return counts


def compiled_hlo(old: BaseTimer, new: NewTimer) -> tuple[str, str]:
    """The optimised HLO of what each side compiles (the chunk, or the step of a Python loop)."""
    n = old.steps * old.batch_size
    index = jnp.arange(n, dtype=jnp.int32).reshape(old.steps, old.batch_size)
    key, beta = jax.random.key(0), jnp.float32(1.0)
    if old.loop == "scan":
        a = old.train_chunk.lower(old.params, old.opt_state, old.x, old.y, index, key, beta)
        b = new.train_chunk.lower(new.params, new.batch_stats, new.frozen, new.opt_state, None,
                                  new.x, new.y, index, key, beta)
    else:
        inputs = (index[0], jax.random.split(key, old.steps)[0])
        a = old.train_chunk.jitted_step.lower((old.params, old.opt_state), inputs, old.x,
                                              old.y, beta)
        b = new.train_chunk.jitted_step.lower((new.params, new.batch_stats, new.opt_state),
                                              inputs, new.frozen, None, new.x, new.y, beta)
    return a.compile().as_text(), b.compile().as_text()


def compare_hlo(old_text: str, new_text: str) -> dict:
    """Op counts of the two compiled modules, and whether their instructions are the same
    sequence of result types and opcodes."""
    a, b = hlo_op_counts(old_text), hlo_op_counts(new_text)
    differences = {op: (a[op], b[op]) for op in sorted(set(a) | set(b)) if a[op] != b[op]}
    same_text = _HLO_TYPED_OP.findall(old_text) == _HLO_TYPED_OP.findall(new_text)
    return {"instructions": (sum(v for k, v in a.items() if ":" not in k),
                             sum(v for k, v in b.items() if ":" not in k)),
            "op_count_differences": differences, "same_typed_op_sequence": same_text}


def describe_hlo(hlo: dict) -> str:
    old_n, new_n = hlo["instructions"]
    if not hlo["op_count_differences"]:
        return (f"compiled HLO: the same op counts ({old_n} instructions each)"
                + ("; the same sequence of instructions (result types and opcodes)"
                   if hlo["same_typed_op_sequence"] else
                   "; the instructions' order or result types differ"))
    diff = ", ".join(f"{op} {a}->{b}" for op, (a, b) in hlo["op_count_differences"].items())
    return f"compiled HLO: {old_n} instructions old, {new_n} new; op counts old->new: {diff}"


# --------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="conf/experiment name")
    parser.add_argument("--base", default="63d41cb",
                        help="commit whose bayescomp/train.py step is A (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=100, help="steps per call (default: 100)")
    parser.add_argument("--rounds", type=int, default=15,
                        help="timed rounds, one call of each step per round (default: 15)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size (default: the experiment's trainer.batch_size)")
    parser.add_argument("--check-calls", type=int, default=1,
                        help="calls run side by side from one initial state before timing, "
                             "then compared (default: %(default)s)")
    parser.add_argument("--no-hlo", action="store_true",
                        help="skip the comparison of the two compiled HLO modules (one more "
                             "compilation of each step, after the timing)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the numbers here")
    parser.add_argument("--cpu-conv", choices=("xla", "onednn", "auto"), default="xla",
                        help="BAYESCOMP_CPU_CONV for both sides (default: %(default)s: a base "
                             "from before bayescomp/nn/onednn_conv.py has only XLA's "
                             "convolutions, which oneDNN's differ from in float32 rounding)")
    args = parser.parse_args(argv)
    # Read by both steps while they are traced (the choice is cached per process).
    os.environ["BAYESCOMP_CPU_CONV"] = args.cpu_conv
    for name in ("steps", "rounds", "check_calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict:
    experiments = sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml"))
    if args.experiment not in experiments:
        raise BadInput(f"unknown experiment {args.experiment!r}; known: "
                       f"{', '.join(experiments)}")
    commit = resolve_commit(args.base)
    load_before = os.getloadavg()
    cfg = compose_experiment(args.experiment)
    batch_size = int(cfg.trainer.batch_size) if args.batch_size is None else args.batch_size
    with base_package(commit) as train:
        print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
              f"load {load_before[0]:.2f}; {args.experiment}: A = {commit[:12]} "
              f"(bayescomp.train), B = this tree (bayescomp.step); batch {batch_size}, "
              f"{args.steps} steps per call", flush=True)
        new = NewTimer(args.experiment, args.steps, batch_size, args.rounds)
        old = BaseTimer(train, cfg, args.steps, batch_size, args.rounds, new.x, new.y)
        if old.loop != new.loop:
            raise RuntimeError(f"the old step loops with {old.loop}, the new with {new.loop}")
        print(f"  compiled: A {old.compile_seconds:.1f} s, B {new.compile_seconds:.1f} s "
              f"(first call); loop {new.loop}", file=sys.stderr, flush=True)

        # The same numbers? Both from this tree's initial variables, same data and keys.
        old.calls = new.calls = 0
        init = reset_to_common_start(old, new, cfg, args.rounds)
        for _ in range(args.check_calls):
            old.time_call()
            new.time_call()
        check = {**init, **compare_states(old, new)}
        print(f"  after {check['steps']} steps from the same start: {describe(check)}",
              file=sys.stderr, flush=True)

        times: dict[str, list[float]] = {"old": [], "new": []}
        order = []
        for r in range(args.rounds):
            pair = (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))
            order.append("".join("AB"[label == "new"] for label, _ in pair))
            for label, timer in pair:
                times[label].append(timer.time_call())
        check_no_recompilation(old, new)
        final = compare_states(old, new)
        load_after = os.getloadavg()
        hlo = None if args.no_hlo else compare_hlo(*compiled_hlo(old, new))

    ratios = [b / a for a, b in zip(times["old"], times["new"])]
    ms = {label: [1e3 * t / args.steps for t in own] for label, own in times.items()}
    return {
        "experiment": args.experiment, "base_commit": commit, "base": args.base,
        "jax_version": jax.__version__, "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
        "batch_size": batch_size, "steps_per_call": args.steps, "rounds": args.rounds,
        "loop": new.loop,
        "compile_seconds": {"old": old.compile_seconds, "new": new.compile_seconds},
        "order": order, "ms_per_step": ms,
        "median_ms_per_step": {label: statistics.median(v) for label, v in ms.items()},
        "ratios_new_over_old": ratios, "median_ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "same_numbers_check": check, "same_numbers_after_timing": final, "hlo": hlo}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except BadInput as error:
        print(f"step_ab.py: error: {error}", file=sys.stderr)
        return 2
    for label, side in (("A", "old"), ("B", "new")):
        v = result["ms_per_step"][side]
        print(f"{label} ({side}): {result['median_ms_per_step'][side]:8.2f} ms/step "
              f"(min-max {min(v):.2f}-{max(v):.2f})")
    low, high = result["ratio_range"]
    print(f"{result['experiment']}: new/old median within-round ratio "
          f"{result['median_ratio']:.3f} (range {low:.3f}-{high:.3f}, {result['rounds']} rounds "
          f"of {result['steps_per_call']} steps, order alternated)")
    print(f"same numbers after {result['same_numbers_check']['steps']} steps: "
          f"{describe(result['same_numbers_check'])}; after "
          f"{result['same_numbers_after_timing']['steps']} steps: "
          f"{describe(result['same_numbers_after_timing'])}")
    if result["hlo"] is not None:
        print(describe_hlo(result["hlo"]))
    print(f"load average {result['loadavg_before'][0]:.2f} before, "
          f"{result['loadavg_after'][0]:.2f} after")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
