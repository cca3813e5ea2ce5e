r"""Is a learned channel ranking better than chance? ``python -m bayescomp.ranking_control RUN``.

A channel-pruning method is two decisions: *how many* channels each layer keeps and *which*.
The second is only worth its training if it beats picking channels at random. This control
takes a finished Dirichlet-pruning run (:mod:`bayescomp.procedures.dirichlet`), the pretrained
dense network it started from (``method.pretrained_run``) and its learned switch means
:math:`\varphi_l/\sum\varphi_l`, and measures the test error of that dense network with
channels removed, *before any retraining* (BatchNorm on the pretrained running averages, the
run's "error after pruning"), for the same kept widths under three rankings:

* **switches**: the top :math:`k_l` switch means per group (what the run pruned);
* **random**: :math:`k_l` channels drawn uniformly without replacement per group,
  ``--draws`` times (mean, standard deviation, best and worst draw);
* **reversed**: the *bottom* :math:`k_l` switch means, the opposite ranking.

If the switches carry information, switches < random < reversed; a ranking that is worse than
random (or than its reverse) has learned something other than importance. The widths are the
run's own kept widths, then uniform fractions of every group (``--fractions``, :math:`k_l =
\lceil fC_l\rceil`), so the comparison also shows where a ranking starts to matter. This is the
random-pruning control of Liu, Sun, Zhou, Huang & Darrell, "Rethinking the Value of Network
Pruning", ICLR 2019 (there for fine-tuned networks; here the ranking is judged before any
retraining, where it alone decides the error).

``--recalibrate-bn N`` re-estimates every BatchNorm's statistics of each pruned network on
``N`` training images (seeded by the run's seed, the same images for every ranking) before it
is evaluated ("adaptive BatchNorm": Li et al., "EagleEye", ECCV 2020;
:func:`bayescomp.nn.norm.reestimate_statistics`). Removing channels shifts what the later
BatchNorms see, so with the pretrained statistics a ranking is judged partly on how little it
disturbs them; re-estimated, on what the kept channels can still compute. (The run's own
"error after pruning", against which the control is checked, uses the pretrained statistics.)

Nothing is written into ``RUN``. The table is printed; ``--out FILE.json`` writes the figures
with the commit of the code that measured them. Saved as ``ranking_control.json`` in a published
run's folder, they appear in the results tables (:func:`section`).

Usage::

    python -m bayescomp.ranking_control RUN_DIR [--draws 10] [--seed 0]
        [--fractions 0.9 0.75 0.5] [--recalibrate-bn N] [--pretrained DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import OmegaConf

from bayescomp import (atomic, channel_selection, metrics, pretrained, provenance, runs,
                       threshold_selection)
from bayescomp.errors import BayescompError, ConfigError
from bayescomp.evaluation import Evaluator
from bayescomp.models.graph import batch_norms
from bayescomp.nn.norm import reestimate_statistics
from bayescomp.procedures import channel_pruning

#: Uniform keep fractions measured after the run's own widths, when ``--fractions`` is not given.
DEFAULT_FRACTIONS = (0.9, 0.75, 0.5)

#: Most training images ``--recalibrate-bn`` takes: they pass through the network as one eager
#: batch (ResNet-20's widest activation is 64 KiB an image, 0.6 GiB at 10,000).
MAX_RECALIBRATION = 10_000


def switch_means(run_metrics: Mapping[str, Any], run_dir: pathlib.Path
                 ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The learned switch means and the kept widths of a finished Dirichlet run.

    Raises:
        ConfigError: ``metrics.json`` has no ``dirichlet`` section (not a Dirichlet run, or
            not finished).
    """
    section = run_metrics.get("dirichlet")
    if not isinstance(section, dict) or not {"switch_means", "kept_widths"} <= set(section):
        raise ConfigError(f"{run_dir}/metrics.json has no dirichlet.switch_means: pass the "
                          "directory of a finished Dirichlet-pruning run (+experiment=*_dirichlet)")
    means = {g: np.asarray(v, np.float64) for g, v in section["switch_means"].items()}
    widths = {g: int(k) for g, k in section["kept_widths"].items()}
    return means, widths


def random_keep(means: Mapping[str, np.ndarray], widths: Mapping[str, int],
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``widths[g]`` channels of each group drawn uniformly without replacement."""
    keep = {}
    for group, mean in means.items():
        mask = np.zeros(mean.size, bool)
        mask[rng.choice(mean.size, size=widths[group], replace=False)] = True
        keep[group] = mask
    return keep


def reversed_keep(means: Mapping[str, np.ndarray], widths: Mapping[str, int]
                  ) -> dict[str, np.ndarray]:
    """The ``widths[g]`` *smallest* switch means of each group."""
    return channel_selection.top_k_keep({g: -m for g, m in means.items()}, widths)


#: How far (points of test error) the control's own measurements may lie from the run's: the
#: same network on the same data gives the same count of errors up to float summation order,
#: i.e. at most a few examples of 10,000 (0.01 points each).
AGREEMENT = 0.05


def check_same_network(run_metrics: Mapping[str, Any], dense_error: float,
                       pruned_error: float, run_dir) -> None:
    """Refuse a control on another network than the run's.

    The unpruned error must be the run's ``pretrained_test_error`` and the error at the run's
    own widths and ranking its ``dirichlet.error_after_pruning``; otherwise the dense run was
    changed since (resumed, retrained) or ``--pretrained`` names another one.

    Raises:
        ConfigError: Either differs by more than :data:`AGREEMENT`.
    """
    for what, ours, key, theirs in (
            ("unpruned", dense_error, "pretrained_test_error",
             run_metrics.get("pretrained_test_error")),
            ("pruned at its widths", pruned_error, "dirichlet.error_after_pruning",
             run_metrics["dirichlet"].get("error_after_pruning"))):
        if theirs is not None and abs(float(theirs) - ours) > AGREEMENT:
            raise ConfigError(
                f"the dense network gives {ours:.2f} % {what}, but {run_dir} recorded "
                f"{float(theirs):.2f} % ({key}): it is not the network the run pruned; pass "
                "--pretrained DIR of the dense run it started from, unchanged since")


class PrunedError:
    """Test error of the pretrained network with channels removed (no retraining).

    Args:
        dense: The pretrained network (left unchanged: each evaluation masks a copy).
        dataset: The run's dataset (its test split is used).
        batch_size: Evaluation batch size.
        recalibration: Training images to re-estimate the BatchNorm statistics of each pruned
            network on before evaluating it, or ``None``: the pretrained statistics.
    """

    def __init__(self, dense: nnx.Module, dataset, batch_size: int,
                 recalibration: jax.Array | None = None):
        self.dense = dense
        # On the device once, not with every evaluation (as the training loop places them).
        self.x_test, self.y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
        self.evaluator = Evaluator(batch_size)
        self.recalibration = recalibration

    def __call__(self, keep: Mapping[str, np.ndarray]) -> float:
        model = nnx.clone(self.dense)
        channel_pruning.apply_masks_in_place(model, channel_pruning.pruned_masks(model, keep))
        if self.recalibration is not None:
            reestimate_statistics(model, self.recalibration)
        return self.evaluator.error(model, self.x_test, self.y_test)


def control(means: Mapping[str, np.ndarray], width_sets: Sequence[tuple[str, dict[str, int]]],
            pruned_error, *, draws: int, seed: int) -> list[dict[str, Any]]:
    """Errors of the three rankings at each set of widths.

    Args:
        means: Switch means by group.
        width_sets: ``(label, widths)`` pairs.
        pruned_error: ``keep -> error %`` (:class:`PrunedError`).
        draws: Random rankings per width set.
        seed: Seed of the random rankings.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for label, widths in width_sets:
        randoms = [pruned_error(random_keep(means, widths, rng)) for _ in range(draws)]
        total = sum(m.size for m in means.values())
        rows.append({
            "widths": label, "kept_widths": dict(widths),
            "kept_fraction": sum(widths.values()) / total,
            "switches": pruned_error(channel_selection.top_k_keep(means, widths)),
            "random": randoms,
            "random_mean": statistics.fmean(randoms),
            "random_std": statistics.stdev(randoms) if len(randoms) > 1 else 0.0,
            "reversed": pruned_error(reversed_keep(means, widths)),
        })
    return rows


def render(rows: Sequence[Mapping[str, Any]], dense_error: float, run_dir) -> str:
    """The control as a Markdown table."""
    lines = [f"Ranking control of {run_dir}: test error (%) of the pretrained network "
             f"({dense_error:.2f} % unpruned) with channels removed, before retraining.", "",
             "| Widths | Channels kept | Switch ranking | Random (mean ± std, best–worst, n) "
             "| Reversed ranking |", "|---|---|---|---|---|"]
    for row in rows:
        randoms = row["random"]
        lines.append(
            f"| {row['widths']} | {100 * row['kept_fraction']:.1f} % | {row['switches']:.2f} | "
            f"{row['random_mean']:.2f} ± {row['random_std']:.2f}, {min(randoms):.2f}–"
            f"{max(randoms):.2f}, {len(randoms)} | {row['reversed']:.2f} |")
    return "\n".join(lines) + "\n"


#: The file a published run's control is stored in (``--out``), read by :func:`section`; a run
#: may hold more, named ``ranking_control_<what>.json`` (``ranking_control_bn.json``: with
#: ``--recalibrate-bn``), all shown.
CONTROL_FILE = "ranking_control.json"
CONTROL_FILES = "ranking_control*.json"


def section(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The results tables' section: every run holding a :data:`CONTROL_FILE`, or nothing.

    Args:
        runs: Runs as :func:`bayescomp.tables.find_runs` loads them (``_path``: their folder).

    Raises:
        ConfigError: A control file cannot be read (rerun the control with ``--out``).
    """
    from bayescomp import tables  # late: tables reads this module's section when it renders

    found = []
    for run in runs:
        for path in sorted(pathlib.Path(run["_path"]).glob(CONTROL_FILES)):
            redo = f"rerun python -m bayescomp.ranking_control RUN --out {path}"
            try:
                control = json.loads(path.read_text())
                float(control["dense_error"]), str(control["git_commit"])
                rows_widths = control["rows"][0]["kept_widths"]
            except (OSError, ValueError) as error:
                raise ConfigError(f"{path} cannot be read as JSON ({error}); {redo}") from None
            except (KeyError, TypeError, IndexError) as error:
                raise ConfigError(f"{path} is not a ranking control's file (no {error}); "
                                  f"{redo}") from None
            run_widths = (run.get("dirichlet") or {}).get("kept_widths")
            if run_widths is not None and rows_widths != run_widths:
                raise ConfigError(f"{path} was measured at widths {rows_widths}, but the run "
                                  f"beside it kept {run_widths}: it belongs to an earlier run; "
                                  f"{redo}")
            found.append((run, control))
    if not found:
        return []
    lines = ["## Channel ranking against random channels (`python -m bayescomp.ranking_control`)",
             "", "Test error (%) of the pretrained dense network with channels removed by the "
             "run's switch ranking, by random rankings of the same widths (mean ± std over the "
             "draws) and by the reversed ranking, before any retraining. *BatchNorm*: the "
             "pretrained statistics, or statistics re-estimated on N training images for each "
             "pruned network (`--recalibrate-bn N`; none: a network without BatchNorm). A "
             "ranking worth training beats random.", "",
             "| Run | Switches | BatchNorm | Unpruned | Widths | Channels kept | Switch ranking "
             "| Random | Reversed ranking | Commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run, control in found:
        mode = (run.get("dirichlet") or {}).get("mode", "–")
        examples = int(control.get("bn_recalibration_examples") or 0)
        norm = (f"re-estimated ({examples:,})" if examples else
                "pretrained" if control.get("batch_norms", 1) else "none")
        commit = str(control["git_commit"])
        # As the runs' own lines: a measurement by uncommitted code is shown, and flagged.
        commit = (f"`{commit[:7]}`" if commit != "unknown" and not commit.endswith("-dirty")
                  else f"`{commit}` — **code not identifiable**: rerun from a clean checkout")
        for row in control["rows"]:
            lines.append(
                f"| `{tables.display_path(run['_path'])}` | {mode} | {norm} | "
                f"{control['dense_error']:.2f} | "
                f"{row['widths']} | {100 * row['kept_fraction']:.1f} % | {row['switches']:.2f} "
                f"| {row['random_mean']:.2f} ± {row['random_std']:.2f} (n = "
                f"{len(row['random'])}) | {row['reversed']:.2f} | {commit} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bayescomp.ranking_control",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=pathlib.Path, help="a finished Dirichlet-pruning run")
    parser.add_argument("--draws", type=int, default=10, help="random rankings per width set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random rankings")
    parser.add_argument("--fractions", type=float, nargs="*", default=list(DEFAULT_FRACTIONS),
                        help="uniform keep fractions besides the run's own widths")
    parser.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                        help="re-estimate BatchNorm statistics of each pruned network on N "
                             "training images (0: keep the pretrained statistics)")
    parser.add_argument("--pretrained", type=pathlib.Path, default=None,
                        help="the dense run it started from (default: the run's "
                             "method.pretrained_run)")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    try:
        if args.draws < 1:
            raise ConfigError(f"--draws must be at least 1, got {args.draws}")
        if not 0 <= args.recalibrate_bn <= MAX_RECALIBRATION:
            raise ConfigError(f"--recalibrate-bn must be 0 (off) or a number of training "
                              f"images up to {MAX_RECALIBRATION:,} (one batch, run eagerly), "
                              f"got {args.recalibrate_bn}")
        if args.out is not None and args.out.suffix != ".json":
            raise ConfigError(f"--out {args.out}: name a .json file")
        if args.out is not None and not args.out.parent.is_dir():
            raise ConfigError(f"--out {args.out}: no folder {args.out.parent}; create it first")
        for fraction in args.fractions:
            if not 0.0 < fraction <= 1.0:
                raise ConfigError(f"--fractions must lie in (0, 1], got {fraction}")
        cfg = runs.read_run_config(args.run_dir)
        run_metrics = metrics.read_metrics(args.run_dir)
        means, run_widths = switch_means(run_metrics, args.run_dir)
        if args.pretrained is not None:
            cfg = OmegaConf.merge(cfg, {"method": {"pretrained_run": str(args.pretrained)}})
        try:
            dense, _ = pretrained.load_pretrained(cfg)
        except ConfigError as error:
            raise ConfigError(f"{error} (here: pass --pretrained DIR)") from None
        dataset = runs.load_run_dataset(cfg)
        norms = len(batch_norms(dense))
        recalibration = None
        if args.recalibrate_bn:
            if not norms:
                raise ConfigError(f"--recalibrate-bn: {cfg.model.name} has no BatchNorm; "
                                  "leave the option out")
            recalibration, _ = threshold_selection.selection_subset(
                dataset.x_train, dataset.y_train, args.recalibrate_bn, int(cfg.seed))
            recalibration = jnp.asarray(recalibration)
        batch_size = int(cfg.trainer.eval_batch_size)
        width_sets = [("the run's", run_widths)] + [
            (f"{f:g} of each group", channel_selection.fraction_widths(means, f))
            for f in args.fractions]
        everything = {g: np.ones(m.size, bool) for g, m in means.items()}
        # The run's own figures are on the pretrained statistics: checked on those.
        stale = PrunedError(dense, dataset, batch_size)
        dense_error = stale(everything)
        own_widths_error = stale(channel_selection.top_k_keep(means, run_widths))
        check_same_network(run_metrics, dense_error, own_widths_error, args.run_dir)
        pruned_error = stale
        if recalibration is not None:
            pruned_error = PrunedError(dense, dataset, batch_size, recalibration)
            dense_error = pruned_error(everything)
        rows = control(means, width_sets, pruned_error, draws=args.draws, seed=args.seed)
        print(render(rows, dense_error, args.run_dir), end="")
        if args.out is not None:
            try:
                atomic.write_text(args.out, json.dumps(
                    {"run": str(args.run_dir), "git_commit": provenance.git_commit(),
                     "dense_error": dense_error, "draws": args.draws, "seed": args.seed,
                     "batch_norms": norms,
                     "bn_recalibration_examples": int(recalibration.shape[0])
                     if recalibration is not None else 0,
                     "rows": rows}, indent=1) + "\n")
            except OSError as error:  # a full disk is DiskFullError, a BayescompError
                raise ConfigError(f"cannot write {args.out} ({error.strerror or error}); pass "
                                  "--out with a writable path") from None
    except BayescompError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
