"""A run's directory: its configuration, identity and resume checks, its data, its model.

A run directory (``hydra.run.dir``) holds ``config.yaml`` (the resolved settings of the run
that wrote its latest checkpoint), ``checkpoints/<phase>/`` (:mod:`bayescomp.loop`),
``metrics.json`` (:mod:`bayescomp.metrics`), ``quantized_network.npz`` and logs. Everything
here reads or guards that directory; no Hydra, so tests call it directly.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

from flax import nnx
from omegaconf import DictConfig, OmegaConf

from bayescomp import atomic, metrics, models, provenance, settings, threshold_selection
from bayescomp import data as data_lib
from bayescomp import nn as bnn
from bayescomp.checkpointing import Checkpointer, check_same_config, flatten_config
from bayescomp.errors import ConfigError

log = logging.getLogger(__name__)

#: The phase of the variational procedure; a dense or variational run's trained model is the
#: final state of ``checkpoints/<TRAIN_PHASE>/``.
TRAIN_PHASE = "train"


def build_model(cfg: DictConfig, input_shape, num_classes: int, seed: int) -> nnx.Module:
    """Instantiate ``cfg.model`` with the layers of ``cfg.method``."""
    batch_norm = cfg.trainer.get("batch_norm")
    factory = bnn.from_config(OmegaConf.to_container(cfg.method, resolve=True),
                              None if batch_norm is None else OmegaConf.to_container(batch_norm))
    model_cls = models.get(cfg.model.name)
    widths = cfg.model.get("widths")
    extra = {} if widths is None else {"widths": OmegaConf.to_object(widths)
                                       if OmegaConf.is_config(widths) else widths}
    model = model_cls(factory, rngs=nnx.Rngs(params=seed), input_shape=tuple(input_shape),
                      num_classes=num_classes, **extra)
    factory.check_layer_names(model_cls.layer_names)
    return model


def load_run_dataset(cfg: DictConfig) -> "data_lib.Dataset":
    """The dataset named by a run's ``cfg.data``, found and preprocessed as the run found it."""
    dataset = data_lib.load_dataset(
        cfg.data.name, data_dir=cfg.data.get("dir"), tfds_data_dir=cfg.data.get("tfds_data_dir"),
        download=cfg.data.get("download", True), preprocess=cfg.data.get("preprocess", "reference"),
        seed=int(cfg.seed))
    log.info("dataset %s from %s: %d train / %d test", dataset.name, dataset.source,
             len(dataset.y_train), len(dataset.y_test))
    return dataset


def load_trained_model(run_dir: str | os.PathLike) -> tuple[DictConfig, nnx.Module, dict]:
    """Rebuild a run's model from its resolved config and its latest epoch checkpoint.

    Args:
        run_dir: The output directory of a run (it holds ``.hydra/config.yaml`` and
            ``checkpoints/``; its ``config.yaml``, or Hydra's ``.hydra/config.yaml``).

    Returns:
        ``(cfg, model, meta)``: the run's configuration, the model with the trained parameters,
        and the checkpoint's metadata (``epoch``, ``history``, ``train_seconds``).

    Raises:
        ConfigError: ``run_dir`` is not a run directory or has no checkpoint.
    """
    run_dir = pathlib.Path(run_dir)
    cfg_path = next((p for p in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml")
                     if p.is_file()), None)
    if cfg_path is None:
        raise ConfigError(f"{run_dir} is not a bayescomp run directory (no config.yaml); pass "
                          "the hydra.run.dir of a run of python -m bayescomp.run")
    cfg = OmegaConf.load(cfg_path)
    if cfg.data.name not in data_lib.REGISTRY:
        raise ConfigError(f"{cfg_path} names an unknown dataset {cfg.data.name!r}")
    spec = data_lib.REGISTRY[cfg.data.name]
    model = build_model(cfg, spec.image_shape, spec.num_classes, int(cfg.seed))
    directory = run_dir / "checkpoints" / TRAIN_PHASE
    if not directory.is_dir():
        raise ConfigError(f"{run_dir} has no {directory.relative_to(run_dir)} directory; rerun "
                          "its command to train it (checkpoints are written every epoch)")
    # Read-only: a run may be loaded (diagnosed, compressed) while its process still trains.
    checkpointer = Checkpointer(directory, read_only=True)
    step = checkpointer.latest_step()
    if step is None:
        checkpointer.close()
        raise ConfigError(f"{directory} holds no checkpoint; rerun the run's command to train "
                          "it")
    try:  # the model state comes first in a checkpoint; the optimiser state is not read
        (state,), meta = checkpointer.restore(step, (nnx.state(model),), prefix=True)
    finally:
        checkpointer.close()
    nnx.update(model, state)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        # Thresholds the run chose (prune.select) or was configured with: the run's own masks.
        stored = metrics.read_metrics(run_dir).get("prune_thresholds")
        if stored:
            threshold_selection.set_thresholds(model, stored)
    return cfg, model, meta


#: Settings a resumed run may change: where the data is found, logging and evaluation, the run's
#: name, pruning (applied to the trained posterior, so a finished run can be re-evaluated at new
#: thresholds), ``method.pretrained_run`` (compared as a resolved path by the retraining
#: procedures, so ``~/x`` and ``/root/x`` are the same run) and, for the variational procedure,
#: the number of epochs (to train a finished run for longer; a warning says when the
#: learning-rate schedule depends on it). Every other setting shapes the trajectory and must
#: match the checkpoint. A key ending in "." covers its whole subtree.
RESUMABLE_CHANGES = ("experiment_name", "data.dir", "data.tfds_data_dir", "data.download",
                     "trainer.progress_bar", "trainer.tensorboard", "trainer.eval_batch_size",
                     "trainer.pruned_eval_every", "trainer.loop", "trainer.epochs",
                     "method.prune.", "method.pretrained_run")


#: Retraining procedures (Deep Compression, soft weight-sharing) derive each phase's masks and
#: codebooks from the phases before it, which a changed epoch count would retrain differently;
#: their checkpoints are only resumable with the same ``trainer.epochs``.
RESUMABLE_CHANGES_RETRAINING = tuple(k for k in RESUMABLE_CHANGES if k != "trainer.epochs")


def trajectory_config(cfg: DictConfig,
                      resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> dict[str, Any]:
    """The resolved settings that determine the training trajectory, as flat dotted keys.

    Stored in every checkpoint and compared on resume (:func:`check_same_config`), so rerunning
    a run directory with, say, another learning rate is refused instead of silently continuing
    the old run under new settings.

    Args:
        cfg: The run's configuration.
        resumable: Keys (or subtrees, ending in ".") left out of the comparison.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return {key: value for key, value in flatten_config(container).items()
            if not any(key == skip or (skip.endswith(".") and key.startswith(skip))
                       for skip in resumable)}


def check_settings(cfg: DictConfig) -> None:
    """Refuse settings that cannot describe a run, before anything is loaded or written
    (:func:`bayescomp.settings.check`).

    Raises:
        ConfigError: Naming the first bad key and what it must be.
    """
    settings.check(cfg)


#: What makes a run directory's run that run: another value for one of these is another run,
#: which must not overwrite it (whichever procedure either one uses; their checkpoints live in
#: different folders, so :func:`resume_checks` alone would not see the clash).
RUN_IDENTITY = ("model.name", "method.name", "data.name", "seed")


def check_run_identity(cfg: DictConfig, workdir) -> None:
    """Refuse to start a run in a directory that holds another run.

    ``workdir/config.yaml`` (:func:`write_config`) records the run that wrote the directory's
    checkpoints and results. If it names another model, method, dataset or seed, writing this
    run there would overwrite that run's ``metrics.json`` and leave a mixture of both runs'
    files, which ``bayescomp.compress`` would then read as one run.

    Raises:
        ConfigError: Naming each differing key as ``key: saved -> current``.
    """
    path = pathlib.Path(workdir) / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 -- any YAML or OmegaConf parse failure
        raise ConfigError(f"{path} cannot be read ({type(error).__name__}); it records the run "
                          "in that directory: use a new hydra.run.dir") from None
    pairs = {key: (OmegaConf.select(saved, key), OmegaConf.select(cfg, key))
             for key in RUN_IDENTITY}
    differing = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in pairs.items()
                 if old is not None and old != new]
    if differing:
        raise ConfigError(
            f"{workdir} holds another run ({'; '.join(differing)}), whose files this run would "
            "overwrite; run in a new output directory (hydra.run.dir=...)")


def resume_checks(meta: dict, cfg: DictConfig, directory, workdir,
                  resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    """Raise if ``meta`` (a checkpoint's metadata) was saved under other training settings.

    ``workdir`` is the run directory, whose ``config.yaml`` (:func:`write_config`, rewritten
    only after a checkpoint) holds the checkpoint's settings; Hydra's ``.hydra/config.yaml``
    already holds the new ones by the time this runs.

    Raises:
        ConfigError: A trajectory setting differs (see :func:`trajectory_config`).
    """
    if "config" not in meta:
        log.info("the checkpoint in %s predates stored settings; resuming it unchecked",
                 directory)
    only_one_side = check_same_config(meta.get("config"), trajectory_config(cfg, resumable),
                                      directory, pathlib.Path(workdir) / "config.yaml")
    saved_epochs = meta.get("epochs")
    if (saved_epochs is not None and int(saved_epochs) != int(cfg.trainer.epochs)
            and cfg.optimizer.get("schedule", "constant") != "constant"):
        log.warning("the checkpoint in %s was trained for a %d-epoch run and is resumed for %d "
                    "epochs: the %s learning-rate schedule restarts from a different curve",
                    directory, int(saved_epochs), int(cfg.trainer.epochs),
                    cfg.optimizer.schedule)
    if only_one_side:
        log.warning("settings present in only one of the checkpoint in %s and this bayescomp "
                    "version (not compared): %s", directory, ", ".join(only_one_side))


def log_code_version() -> str:
    """Read (once per process, see :mod:`bayescomp.provenance`) and log the code's commit."""
    commit = provenance.git_commit()
    dirty = provenance.dirty_files()
    log.info("code: commit %s%s", commit, f" (changed: {', '.join(dirty)})" if dirty else "")
    return commit


def write_config(workdir: pathlib.Path, cfg: DictConfig) -> None:
    """Write the resolved ``config.yaml`` of the run that wrote the latest checkpoint.

    It lets the run be rebuilt without Hydra (:func:`load_trained_model`,
    ``python -m bayescomp.compress``). Written after a checkpoint, never before: a run that fails
    (bad input, a NaN loss) leaves the previous one in place.
    """
    atomic.write_text(pathlib.Path(workdir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


