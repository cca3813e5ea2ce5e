"""Command-line entry: ``python -m bayescomp.run +experiment=NAME [overrides]``.

Hydra composes ``conf/config.yaml`` with the experiment's delta and the overrides, then
the method's procedure (:mod:`bayescomp.procedures`; for variational methods
:func:`bayescomp.procedures.variational.run`) does the work in Hydra's output directory
(``hydra.run.dir=DIR`` picks it; rerunning in the same directory resumes). ``--multirun``
sweeps, e.g. ``python -m bayescomp.run --multirun +experiment=lenet300_svd seed=0,1,2``.

The run directory is logged first. User errors (:class:`bayescomp.errors.BayescompError`) end
the command with their one-line message on stderr (once; ``run.log`` keeps it too) and exit
status 2; nothing already written is touched. Ctrl-C ends it with one line naming the run
directory and the command that resumes it (exit status 130).
"""

from __future__ import annotations

import logging
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bayescomp.errors import BayescompError

log = logging.getLogger("bayescomp")


def resume_command(workdir: str) -> str:
    """The command that resumes this run: its overrides and its run directory."""
    overrides = [o for o in HydraConfig.get().overrides.task
                 if not o.startswith("hydra.run.dir=")]
    return " ".join(["python -m bayescomp.run", *map(shlex.quote, overrides),
                     shlex.quote(f"hydra.run.dir={workdir}")])


def _to_log_files(level: int, message: str) -> None:
    """Write ``message`` to the run's log files only (the terminal gets it once, from main)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train, prune and evaluate one configuration; return the pruned test error (for sweepers)."""
    from bayescomp import procedures  # after Hydra parsed the command line

    # Orbax logs every checkpoint save at INFO through absl, and JAX every backend it does not
    # find (a TPU); keep run.log and the terminal readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    workdir = HydraConfig.get().runtime.output_dir
    log.info("run directory: %s", workdir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        run_procedure = procedures.get(str(cfg.method.get("procedure", "variational")))
        metrics = run_procedure(cfg, workdir)
    except BayescompError as err:
        _to_log_files(logging.ERROR, str(err))
        print(f"error: {err}", file=sys.stderr)
        if multirun:
            # An exception (unlike SystemExit) lets Hydra's sweeper run the remaining jobs of
            # the sweep and then report this one's failure with a non-zero exit status.
            raise
        sys.exit(2)
    except KeyboardInterrupt:
        if multirun:
            raise
        line = (f"interrupted: {workdir} keeps the checkpoint of the last finished epoch; "
                f"resume with: {resume_command(workdir)}")
        _to_log_files(logging.WARNING, line)
        print(line, file=sys.stderr)
        sys.exit(130)
    log.info("test error %.2f %% (pruned %.2f %%), %d of %d weights kept (%.2f %%), "
             "metrics in %s/metrics.json", metrics["test_error"], metrics["pruned_test_error"],
             metrics["weights_kept"], metrics["weights_total"], metrics["percent_kept"], workdir)
    return metrics["pruned_test_error"]


if __name__ == "__main__":
    main()
