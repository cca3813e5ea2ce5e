"""Command-line entry: ``python -m bayescomp.run +experiment=NAME [overrides]``.

Hydra composes ``conf/config.yaml`` with the experiment's delta and the overrides, then
the method's procedure (:mod:`bayescomp.procedures`; for variational methods
:func:`bayescomp.procedures.variational.run`) does the work in Hydra's output directory
(``hydra.run.dir=DIR`` picks it; rerunning in the same directory resumes). ``--multirun``
sweeps, e.g. ``python -m bayescomp.run --multirun +experiment=lenet300_svd seed=0,1,2``.

User errors (:class:`bayescomp.errors.BayescompError`) end the command with their one-line
message and exit status 2; nothing already written is touched.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bayescomp.errors import BayescompError

log = logging.getLogger("bayescomp")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train, prune and evaluate one configuration; return the pruned test error (for sweepers)."""
    from bayescomp import procedures  # after Hydra parsed the command line

    # Orbax logs every checkpoint save at INFO through absl; keep run.log readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    workdir = HydraConfig.get().runtime.output_dir
    try:
        run_procedure = procedures.get(str(cfg.method.get("procedure", "variational")))
        metrics = run_procedure(cfg, workdir)
    except BayescompError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # An exception (unlike SystemExit) lets Hydra's sweeper run the remaining jobs of
            # the sweep and then report this one's failure with a non-zero exit status.
            raise
        sys.exit(2)
    log.info("test error %.2f %% (pruned %.2f %%), %d of %d weights kept (%.2f %%), "
             "metrics in %s/metrics.json", metrics["test_error"], metrics["pruned_test_error"],
             metrics["weights_kept"], metrics["weights_total"], metrics["percent_kept"], workdir)
    return metrics["pruned_test_error"]


if __name__ == "__main__":
    main()
