"""The finished dense run a retraining procedure starts from (``method.pretrained_run``).

Deep Compression (Han, Mao & Dally, ICLR 2016) and soft weight-sharing (Ullrich, Meeds &
Welling, ICLR 2017) compress a network that was first trained dense. :func:`load_pretrained`
finds that run, checks that it is a finished dense run of the same model on the same data and
preprocessing, and rebuilds its network.
"""

from __future__ import annotations

import pathlib

from flax import nnx
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from bayescomp import metrics, runs
from bayescomp.errors import ConfigError


def load_pretrained(cfg: DictConfig) -> tuple[nnx.Module, dict]:
    """The dense network a retraining starts from, and the metrics of its run.

    Args:
        cfg: This run's configuration; ``cfg.method.pretrained_run`` is the output directory
            (``hydra.run.dir``) of a finished dense run (``<model>_dense``) of ``cfg.model`` on
            ``cfg.data``.

    Returns:
        ``(model, pretrained_metrics)``: the model with the trained point weights (built by
        :func:`bayescomp.runs.load_trained_model` from the run's last checkpoint) and that
        run's ``metrics.json``.

    Raises:
        ConfigError: No run given, a path that is not a finished run, or a run of another model,
            dataset, preprocessing or method. The message says what to pass.
    """
    model_name, data_name = str(cfg.model.name), str(cfg.data.name)
    expected = f"{model_name}_dense"
    hint = (f"set method.pretrained_run=DIR of a finished {expected} run on {data_name} (train "
            f"one with: python -m bayescomp.run +experiment={expected} data={data_name} "
            "hydra.run.dir=DIR)")
    try:
        run = cfg.method.get("pretrained_run")
    except MissingMandatoryValue:
        run = None
    if run is None or not str(run).strip():
        raise ConfigError(f"method {cfg.method.name} retrains a finished dense network, but "
                          f"method.pretrained_run is not set; {hint}")
    run_dir = pathlib.Path(str(run)).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"method.pretrained_run={run_dir} is not a directory; {hint}")
    try:
        pretrained_cfg, model, _ = runs.load_trained_model(run_dir)
    except ConfigError as error:
        raise ConfigError(f"method.pretrained_run={run_dir}: {error}; or {hint}") from None
    found = (str(pretrained_cfg.model.name), str(pretrained_cfg.data.name),
             str(pretrained_cfg.method.get("posterior", "delta")))
    if found[0] != model_name or found[1] != data_name:
        raise ConfigError(f"method.pretrained_run={run_dir} is a {found[0]} run on {found[1]}, "
                          f"this run retrains {model_name} on {data_name}; {hint}")
    if found[2] != "delta":
        raise ConfigError(f"method.pretrained_run={run_dir} is a {pretrained_cfg.method.name} "
                          f"run (variational weights), not a dense run; {hint}")
    preprocess = (pretrained_cfg.data.get("preprocess", "reference"),
                  cfg.data.get("preprocess", "reference"))
    if preprocess[0] != preprocess[1]:
        raise ConfigError(f"method.pretrained_run={run_dir} was trained on data.preprocess="
                          f"{preprocess[0]}, this run uses {preprocess[1]}; use the same "
                          "preprocessing")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ConfigError(f"method.pretrained_run={run_dir} has not finished (no metrics.json); "
                          f"rerun its command to finish it, or {hint}")
    return model, metrics.read_metrics(run_dir)
