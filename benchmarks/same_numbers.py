"""Same numbers before and after a change: smoke runs of every experiment at two versions.

Runs each experiment of ``conf/experiment/`` for a few steps on synthetic data
(``python -m bayescomp.run +experiment=NAME +debug=smoke``) once with the code of a given commit
(checked out as a detached ``git worktree`` in a temporary directory) and once with the code of
this working tree, then compares the two ``metrics.json`` leaf by leaf. A refactor that changes
no number shows every experiment within ``--rtol`` (relative, default 1e-6); otherwise the table
and the JSON report name exactly which numbers moved.

Usage::

    python benchmarks/same_numbers.py --base HEAD
    python benchmarks/same_numbers.py --base main~3 --experiments lenet300_dense lenet300_dc
    python benchmarks/same_numbers.py --base v0.1 --rtol 1e-5 --workdir /tmp/sn --keep

Deep Compression and soft weight-sharing experiments retrain a finished dense run; the dense
smoke run of the same model in the same tree is run first and passed as
``method.pretrained_run`` (and compared as well). Exit status: 0 when every number agrees within
``--rtol``, 1 when some differ, 2 on bad input (an unknown experiment, a commit git cannot
resolve, a run that failed).

Each run imports the ``bayescomp`` of its own tree, not the editable install: a ``pip install
-e`` installs, from a ``.pth`` file of site-packages, a meta-path finder that maps ``bayescomp``
to the installed checkout. This setuptools appends it after the ``sys.path`` finder, so a tree
put on ``sys.path`` wins, but anything that leaves the tree off it (``python -I`` or ``-P`` in
the tree drop the current directory) silently imports the installed checkout instead, and other
setuptools versions or old-style installs order things differently. Runs therefore start
through a small bootstrap
(:data:`BOOTSTRAP`) that removes such finders, puts the tree first on ``sys.path``, checks where
``bayescomp`` was imported from, runs ``bayescomp.run`` as ``__main__`` (Hydra then reads the
tree's own ``conf/``) and finally checks that every ``bayescomp`` module loaded lives in the
tree. The commit recorded in each ``metrics.json`` is checked against the tree's ``HEAD`` too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Keys compared nowhere: timings, memory, provenance and paths, which differ between any two
#: runs or any two checkouts without the computation having changed.
IGNORED_KEYS = frozenset({
    # timing and memory
    "seconds", "seconds_per_epoch", "images_per_second", "peak_memory_mib", "train_seconds",
    "includes_compilation",
    # provenance (git_* keys are matched by prefix, see _ignored)
    "code_history",
    # bayescomp.provenance.runtime(): the software and device of the process
    "jax_backend", "jax_version", "jaxlib_version", "flax_version", "device_kind",
    "device_count", "cpu_conv_kernel", "cpu_batch_norm", "allocator",
    # paths of this run's inputs and outputs
    "data_source", "pretrained_run", "figure", "hydra",
})

#: Below this magnitude two numbers count as both zero for the relative difference.
TINY = sys.float_info.min

#: The last lines of a failed run's stderr shown with the error.
STDERR_TAIL = 15

#: Run with ``python -c BOOTSTRAP TREE OVERRIDES...``: ``bayescomp.run`` of TREE, whatever is
#: installed. Exit status 3 means the import check failed.
BOOTSTRAP = r"""
import os, pathlib, runpy, sys
tree = pathlib.Path(sys.argv.pop(1)).resolve()
pkg = tree / "bayescomp"

def _editable(obj):
    # setuptools' editable finders live in modules named __editable___<dist>_finder.
    return "__editable__" in (getattr(obj, "__module__", "") or type(obj).__module__)

def _foreign(entry):
    # An old-style (.egg-link / path .pth) install puts another checkout on sys.path.
    path = pathlib.Path(entry or ".").resolve()
    return path != tree and (path / "bayescomp" / "__init__.py").exists()

sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
sys.path[:] = [str(tree)] + [p for p in sys.path if "__editable__" not in p and not _foreign(p)]
for name in [m for m in sys.modules if m == "bayescomp" or m.startswith("bayescomp.")]:
    del sys.modules[name]
sys.path_importer_cache.clear()

def _check():
    for name, module in list(sys.modules.items()):
        if name != "bayescomp" and not name.startswith("bayescomp."):
            continue
        file = getattr(module, "__file__", None)
        if file and not pathlib.Path(file).resolve().is_relative_to(pkg):
            sys.stderr.write(f"same_numbers: {name} was imported from {file}, not {pkg}\n")
            sys.stderr.flush()
            os._exit(3)

import bayescomp
_check()
with open(os.environ["SAME_NUMBERS_IMPORT_LOG"], "w") as log:
    log.write(str(pathlib.Path(bayescomp.__file__).resolve()))
try:
    runpy.run_module("bayescomp.run", run_name="__main__", alter_sys=True)
finally:
    _check()
"""


class BadInput(Exception):
    """An error of the user's making or a failed run: exit status 2 with a one-line message."""

    def __init__(self, message: str, details: str = "", keep_runs: bool = False):
        super().__init__(message)
        self.details = details
        self.keep_runs = keep_runs  # a failed run's logs are worth more than the disk space


# --------------------------------------------------------------------------------------------
# Comparison


@dataclasses.dataclass
class Difference:
    """One leaf whose values differ.

    Attributes:
        path: Where the leaf sits, e.g. ``compression.pruning`` or ``history[3].loss``.
        old: Its value at the base commit.
        new: Its value in the new tree.
        rel: Relative difference for numbers, ``None`` for other leaves.
    """

    path: str
    old: Any
    new: Any
    rel: float | None = None


@dataclasses.dataclass
class Report:
    """What :func:`compare_metrics` found.

    Attributes:
        rtol: The relative tolerance used.
        compared: Number of numeric leaf pairs compared.
        max_rel: Largest relative difference among them (0 when none were compared).
        max_rel_path: Where it occurs (``None`` when none were compared).
        beyond: Numbers whose relative difference exceeds ``rtol``.
        other: Non-numeric leaves (strings, bools, ``None``, type changes) that differ.
        only_old: Paths present at the base commit only.
        only_new: Paths present in the new tree only.
        ignored: Paths skipped as timing, provenance or paths.
    """

    rtol: float
    compared: int = 0
    max_rel: float = 0.0
    max_rel_path: str | None = None
    beyond: list[Difference] = dataclasses.field(default_factory=list)
    other: list[Difference] = dataclasses.field(default_factory=list)
    only_old: list[str] = dataclasses.field(default_factory=list)
    only_new: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)

    @property
    def same(self) -> bool:
        """Every number within ``rtol`` and every other leaf equal.

        Keys on one side only do not count against it: they are shown, and a metric that was
        added or removed on purpose should not fail the check.
        """
        return not self.beyond and not self.other

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (``max_rel`` may be ``inf``, written as ``Infinity``)."""
        data = dataclasses.asdict(self)
        data["same"] = self.same
        return data


def relative_difference(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|, tiny)``; 0 for NaN against NaN and for equal infinities.

    Example:
        >>> relative_difference(4.0, 3.0)
        0.25
        >>> relative_difference(float("nan"), float("nan"))
        0.0
    """
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    if a == b:  # also equal infinities, where a - b would be NaN
        return 0.0
    if math.isinf(a) or math.isinf(b):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), TINY)


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True vs 1 is a changed leaf, not a number within tolerance.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _looks_like_path(value: Any) -> bool:
    # Run directories, data directories and pretrained runs differ between the two sides by
    # construction; no non-path string value of a config contains a slash.
    return isinstance(value, str) and ("/" in value or value.startswith("~")
                                       or "\\" in value)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith("git_")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def compare_metrics(old: dict, new: dict, rtol: float = 1e-6) -> Report:
    """Compare two ``metrics.json`` documents leaf by leaf.

    Dicts are matched by key and lists by position (so the per-epoch ``history`` records pair
    up epoch by epoch). Keys of :data:`IGNORED_KEYS` and ``git_*`` keys are skipped at any
    depth, as are string leaves that look like paths on both sides. Numbers (ints and floats,
    not bools) are compared by :func:`relative_difference`; NaN equals NaN. Other leaves must be
    equal.

    Args:
        old: Metrics at the base commit.
        new: Metrics of the new tree.
        rtol: Largest relative difference that still counts as the same number (inclusive).

    Returns:
        The :class:`Report`.
    """
    report = Report(rtol=rtol)
    _walk(old, new, "", report)
    return report


def _walk(old: Any, new: Any, path: str, report: Report) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            sub = _join(path, str(key))
            if _ignored(str(key)):
                report.ignored.append(sub)
            elif key not in new:
                report.only_old.append(sub)
            elif key not in old:
                report.only_new.append(sub)
            else:
                _walk(old[key], new[key], sub, report)
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(new):
                report.only_old.append(sub)
            elif i >= len(old):
                report.only_new.append(sub)
            else:
                _walk(old[i], new[i], sub, report)
    elif _is_number(old) and _is_number(new):
        rel = relative_difference(old, new)
        report.compared += 1
        if report.max_rel_path is None or rel > report.max_rel:
            report.max_rel, report.max_rel_path = rel, path
        if rel > report.rtol:
            report.beyond.append(Difference(path, old, new, rel))
    elif _looks_like_path(old) and _looks_like_path(new):
        report.ignored.append(path)
    elif type(old) is not type(new) or old != new:
        report.other.append(Difference(path, old, new))


# --------------------------------------------------------------------------------------------
# Trees and runs


def _git(*args: str, cwd: pathlib.Path = REPO_ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout.strip()


def resolve_commit(commit: str) -> str:
    """The full SHA of ``commit`` in this repository; :class:`BadInput` if git cannot resolve it."""
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    except subprocess.CalledProcessError:
        raise BadInput(f"git cannot resolve {commit!r} to a commit of {REPO_ROOT}") from None


def experiments_of(tree: pathlib.Path) -> list[str]:
    """The experiment names of ``tree``'s ``conf/experiment/``."""
    return sorted(p.stem for p in (tree / "conf" / "experiment").glob("*.yaml"))


def _default_choice(tree: pathlib.Path, group: str, experiment: str) -> str | None:
    """The ``group`` (``model`` / ``method``) that an experiment selects, or the primary default."""
    for source, prefix in ((tree / "conf" / "experiment" / f"{experiment}.yaml", "override /"),
                           (tree / "conf" / "config.yaml", "")):
        config = yaml.safe_load(source.read_text()) or {}
        for entry in config.get("defaults", []) or []:
            if isinstance(entry, dict) and f"{prefix}{group}" in entry:
                return str(entry[f"{prefix}{group}"])
    return None


def pretrained_experiment(tree: pathlib.Path, experiment: str) -> str | None:
    """The dense experiment whose run ``experiment`` retrains, or ``None`` if it trains anew.

    A method retrains a finished run when its config declares ``pretrained_run`` (Deep
    Compression, soft weight-sharing); the run it needs is ``<model>_dense`` of the same tree.
    """
    method = _default_choice(tree, "method", experiment)
    method_file = tree / "conf" / "method" / f"{method}.yaml"
    if method is None or not method_file.exists():
        return None
    if "pretrained_run" not in (yaml.safe_load(method_file.read_text()) or {}):
        return None
    dense = f"{_default_choice(tree, 'model', experiment)}_dense"
    if not (tree / "conf" / "experiment" / f"{dense}.yaml").exists():
        raise BadInput(f"{experiment} retrains a dense run, but {tree} has no experiment {dense}")
    return dense


def run_order(tree: pathlib.Path, experiments: Sequence[str]) -> list[str]:
    """``experiments`` with the dense runs they retrain added, each dense run before its users."""
    order: list[str] = []
    for name in experiments:
        dense = pretrained_experiment(tree, name)
        for needed in ([dense] if dense else []) + [name]:
            if needed not in order:
                order.append(needed)
    return order


def stderr_excerpt(stderr: str, lines: int = STDERR_TAIL, width: int = 200) -> str:
    """The informative end of a failed run's stderr.

    A Python exception's message can span hundreds of lines (an array in its repr), so the
    excerpt starts at the last line that names an exception or an ``error:`` when there is one,
    and lines are cut at ``width`` characters.
    """
    text = stderr.rstrip().splitlines()
    start = max(len(text) - lines, 0)
    for i in range(len(text) - 1, -1, -1):
        if re.match(r"(error:|[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b)", text[i]):
            # The traceback's last frame, just above the exception, says where it was raised.
            start = i - 2 if i >= 2 and text[i - 2].startswith("  File ") else i
            break
    return "\n".join(line if len(line) <= width else line[:width] + " ..."
                     for line in text[start:start + lines])


@dataclasses.dataclass
class Side:
    """One of the two versions: a tree of code and where its runs go."""

    label: str
    tree: pathlib.Path
    runs: pathlib.Path
    head: str
    cpu_conv: str = "xla"  # BAYESCOMP_CPU_CONV of its runs


def run_experiment(side: Side, name: str, seed: int) -> tuple[dict, float]:
    """Run one smoke run of ``name`` with ``side``'s code.

    Returns:
        The run's ``metrics.json`` and its wall time in seconds.

    Raises:
        BadInput: The run failed, imported code from elsewhere or recorded another commit.
    """
    run_dir = side.runs / name
    overrides = [f"+experiment={name}", "+debug=smoke", f"seed={seed}",
                 f"hydra.run.dir={run_dir}"]
    dense = pretrained_experiment(side.tree, name)
    if dense:
        overrides.append(f"method.pretrained_run={side.runs / dense}")
    import_log = side.runs / f"{name}.import"
    env = dict(os.environ)
    # Any Python process the run itself starts should find this tree first as well.
    env["PYTHONPATH"] = str(side.tree)
    env["SAME_NUMBERS_IMPORT_LOG"] = str(import_log)
    env["BAYESCOMP_CPU_CONV"] = side.cpu_conv  # the same convolution on both sides
    # HYDRA_MAIN_MODULE would point Hydra at another module's conf/; HYDRA_FULL_ERROR would
    # replace the one-line errors quoted on failure with long tracebacks.
    env.pop("HYDRA_MAIN_MODULE", None)
    env.pop("HYDRA_FULL_ERROR", None)
    start = time.perf_counter()
    # cwd is outside both trees: nothing a run writes relative to it lands in a checkout.
    proc = subprocess.run([sys.executable, "-c", BOOTSTRAP, str(side.tree), *overrides],
                          cwd=side.runs, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    (side.runs / f"{name}.stdout").write_text(proc.stdout)
    (side.runs / f"{name}.stderr").write_text(proc.stderr)
    if proc.returncode != 0:
        tail = stderr_excerpt(proc.stderr)
        raise BadInput(f"the {side.label} run of {name} failed with exit status "
                       f"{proc.returncode} (its logs: {side.runs / name}.stderr, "
                       f"{side.runs / name}/run.log)", tail, keep_runs=True)
    imported = pathlib.Path(import_log.read_text())
    if not imported.is_relative_to(side.tree.resolve()):
        raise BadInput(f"the {side.label} run of {name} imported {imported}, not {side.tree}")
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        raise BadInput(f"the {side.label} run of {name} wrote no {metrics_file}")
    metrics = json.loads(metrics_file.read_text())
    recorded = str(metrics.get("git_commit", ""))
    if recorded and side.head and not recorded.startswith(side.head):
        raise BadInput(f"the {side.label} run of {name} records commit {recorded}, but "
                       f"{side.tree} is at {side.head}")
    return metrics, seconds


# --------------------------------------------------------------------------------------------
# Output


def _number(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def markdown_table(results: dict[str, Report]) -> str:
    """One row per experiment: numbers compared, largest relative difference, what differs."""
    lines = [("| experiment | numbers compared | max rel. difference | beyond rtol "
              "| only in one side | other differences |"),
             "|---|---:|---:|---:|---:|---:|"]
    for name, report in results.items():
        one_sided = len(report.only_old) + len(report.only_new)
        lines.append(f"| {name} | {report.compared} | {_number(report.max_rel)} "
                     f"| {len(report.beyond)} | {one_sided} | {len(report.other)} |")
    return "\n".join(lines)


def _collapse(paths: Sequence[str]) -> list[str]:
    """Paths that differ only in list positions as one line, ``history[*].kl (x6)``.

    A key added to every per-epoch record would otherwise fill the screen once per epoch.
    """
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(re.sub(r"\[\d+\]", "[*]", path), []).append(path)
    return [same[0] if len(same) == 1 else f"{pattern} (x{len(same)})"
            for pattern, same in groups.items()]


def details(results: dict[str, Report], limit: int = 20) -> Iterator[str]:
    """Lines naming each differing or one-sided key (at most ``limit`` per kind and experiment)."""
    for name, report in results.items():
        kinds = [("beyond rtol", [f"{d.path}: {d.old!r} -> {d.new!r} (rel {_number(d.rel)})"
                                  for d in report.beyond]),
                 ("differs", [f"{d.path}: {d.old!r} -> {d.new!r}" for d in report.other]),
                 ("only at the base commit", _collapse(report.only_old)),
                 ("only in the new tree", _collapse(report.only_new))]
        for kind, items in kinds:
            if items:
                yield f"{name}, {kind} ({len(items)}):"
                yield from (f"  {item}" for item in items[:limit])
                if len(items) > limit:
                    yield f"  ... {len(items) - limit} more in the JSON report"


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="commit to compare against (any git rev)")
    parser.add_argument("--experiments", nargs="+", metavar="NAME",
                        help="conf/experiment names (default: all of them)")
    parser.add_argument("--rtol", type=float, default=1e-6,
                        help="largest relative difference counted as equal (default %(default)g)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    parser.add_argument("--workdir", type=pathlib.Path,
                        help="empty or new directory for the worktree, runs and report "
                             "(default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the worktree and the run directories (default: the report "
                             "and a failed run's logs only)")
    # The tree whose code is "new" (default: this checkout); a second worktree lets the script
    # be tested while this checkout is mid-refactor.
    parser.add_argument("--new-tree", type=pathlib.Path, help=argparse.SUPPRESS)
    parser.add_argument("--cpu-conv", choices=("xla", "onednn", "auto"), default="xla",
                        help="BAYESCOMP_CPU_CONV for both sides (default: %(default)s: a base "
                             "from before bayescomp/nn/onednn_conv.py has only XLA's "
                             "convolutions, which oneDNN's differ from in float32 rounding)")
    args = parser.parse_args(argv)
    if not args.rtol >= 0:
        raise BadInput(f"--rtol must be a non-negative number, not {args.rtol}")
    return args


def _prepare_workdir(workdir: pathlib.Path | None) -> pathlib.Path:
    if workdir is None:
        return pathlib.Path(tempfile.mkdtemp(prefix="same_numbers-")).resolve()
    workdir = workdir.resolve()
    # A run directory that already holds checkpoints would resume, not recompute: start empty.
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise BadInput(f"--workdir {workdir} exists and is not an empty directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _check_tree(tree: pathlib.Path) -> pathlib.Path:
    tree = tree.resolve()
    if not (tree / "bayescomp" / "__init__.py").exists() or not (tree / "conf").is_dir():
        raise BadInput(f"{tree} is not a bayescomp checkout (no bayescomp/ and conf/)")
    return tree


def _head(tree: pathlib.Path) -> str:
    try:
        return _git("rev-parse", "HEAD", cwd=tree)
    except (OSError, subprocess.CalledProcessError):
        return ""  # a copy without .git: its metrics record no commit to check


def _check_names(requested: Sequence[str], known: Sequence[str], where: str) -> None:
    for name in requested:
        if name not in known:
            raise BadInput(f"unknown experiment {name!r} at {where} (conf/experiment has "
                           f"{', '.join(known)})")


def _choose_experiments(requested: Sequence[str] | None, base: Side, new: Side,
                        base_label: str) -> tuple[list[str], list[str]]:
    """The experiments to compare and notes on those only one version has."""
    in_base, in_new = set(experiments_of(base.tree)), set(experiments_of(new.tree))
    if requested:
        _check_names(requested, sorted(in_base), base_label)
        return list(dict.fromkeys(requested)), []
    notes = [f"not compared, only at {base_label}: {n}" for n in sorted(in_base - in_new)]
    notes += [f"not compared, only in the new tree: {n}" for n in sorted(in_new - in_base)]
    return sorted(in_base & in_new), notes


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status."""
    try:
        args = parse_args(argv)
        sha = resolve_commit(args.base)
        new_tree = _check_tree(args.new_tree or REPO_ROOT)
        # Names are checked against the new tree before a worktree is made for nothing.
        _check_names(args.experiments or [], experiments_of(new_tree), str(new_tree))
        workdir = _prepare_workdir(args.workdir)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    worktree = workdir / "base_tree"
    keep_runs = args.keep
    try:
        _git("worktree", "add", "--detach", str(worktree), sha)
        base = Side("base", worktree, workdir / "runs_base", sha, args.cpu_conv)
        new = Side("new", new_tree, workdir / "runs_new", _head(new_tree), args.cpu_conv)
        return _compare_trees(args, base, new, workdir)
    except BadInput as error:
        keep_runs = keep_runs or error.keep_runs
        print(f"error: {error}", file=sys.stderr)
        if error.details:
            print(error.details, file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        reason = " ".join(error.stderr.split())  # git's message, on one line
        print(f"error: {' '.join(error.cmd[:3])} failed: {reason}", file=sys.stderr)
        return 2
    finally:
        _clean(workdir, worktree, keep_worktree=args.keep, keep_runs=keep_runs)


def _compare_trees(args: argparse.Namespace, base: Side, new: Side,
                   workdir: pathlib.Path) -> int:
    label = f"{args.base} ({base.head[:12]})"
    requested, notes = _choose_experiments(args.experiments, base, new, label)
    order = run_order(new.tree, requested)
    if run_order(base.tree, requested) != order:
        # Both sides must make the same runs for the pretrained runs to match up.
        raise BadInput(f"the two versions retrain different dense runs for {requested}")
    print(f"comparing {len(order)} experiments, {label} vs {new.tree}, seed {args.seed}, "
          f"rtol {args.rtol:g}; runs in {workdir}", file=sys.stderr)
    results: dict[str, Report] = {}
    seconds: dict[str, dict[str, float]] = {}
    for name in order:
        metrics = {}
        for side in (base, new):
            side.runs.mkdir(exist_ok=True)
            metrics[side.label], took = run_experiment(side, name, args.seed)
            seconds.setdefault(name, {})[side.label] = round(took, 2)
            print(f"  {side.label:4s} {name}: {took:.1f} s", file=sys.stderr)
        results[name] = compare_metrics(metrics["base"], metrics["new"], args.rtol)
    print(markdown_table(results))
    for line in [*details(results), *notes]:
        print(line)
    report_file = workdir / "report.json"
    report_file.write_text(json.dumps({
        "base": {"rev": args.base, "commit": base.head, "tree": str(base.tree)},
        "new": {"commit": new.head, "tree": str(new.tree),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no",
                                   cwd=new.tree)) if new.head else None},
        "seed": args.seed, "rtol": args.rtol, "notes": notes, "run_seconds": seconds,
        "same": all(r.same for r in results.values()),
        "experiments": {name: r.to_json() for name, r in results.items()},
    }, indent=1))
    same = all(r.same for r in results.values())
    print(f"\n{'all numbers within' if same else 'numbers differ beyond'} rtol {args.rtol:g}; "
          f"report: {report_file}")
    return 0 if same else 1


def _clean(workdir: pathlib.Path, worktree: pathlib.Path, keep_worktree: bool,
           keep_runs: bool) -> None:
    """Remove the worktree and the run directories unless kept; the report stays."""
    if worktree.exists() and not keep_worktree:
        try:
            _git("worktree", "remove", "--force", str(worktree))
        except subprocess.CalledProcessError:
            shutil.rmtree(worktree, ignore_errors=True)
            subprocess.run(["git", "worktree", "prune"], cwd=REPO_ROOT, capture_output=True,
                           check=False)
    for runs in [] if keep_runs else workdir.glob("runs_*"):
        shutil.rmtree(runs, ignore_errors=True)
    if workdir.exists() and not any(workdir.iterdir()):
        workdir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
