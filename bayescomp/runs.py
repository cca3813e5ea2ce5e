"""A run's directory: its configuration, identity and resume checks, its data, its model.

A run directory (``hydra.run.dir``) holds ``config.yaml`` (the resolved settings of the run
that wrote its latest checkpoint), ``checkpoints/<phase>/`` (:mod:`bayescomp.loop`),
``metrics.json`` (:mod:`bayescomp.metrics`), ``quantized_network.npz`` and logs. Everything
here reads or guards that directory; no Hydra, so tests call it directly: its config
(:func:`read_run_config`), its lock (:func:`lock_run_directory`: one writing process at a time)
and its TensorBoard events (:class:`TensorBoardLog`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import struct
import time
from typing import Any, Iterator

import numpy as np
from flax import nnx
from omegaconf import DictConfig, OmegaConf

from bayescomp import (atomic, compiled_init, metrics, models, objectives, provenance, settings,
                       threshold_selection)
from bayescomp import data as data_lib
from bayescomp.data import augment as augment_lib
from bayescomp import nn as bnn
from bayescomp.checkpointing import Checkpointer, check_same_config, flatten_config
from bayescomp.errors import ConfigError, DiskFullError, RunDirectoryBusyError

log = logging.getLogger(__name__)

#: The phase of the variational procedure; a dense or variational run's trained model is the
#: final state of ``checkpoints/<TRAIN_PHASE>/``.
TRAIN_PHASE = "train"


def build_model(cfg: DictConfig, input_shape, num_classes: int, seed: int) -> nnx.Module:
    """Instantiate ``cfg.model`` with the layers of ``cfg.method``, initialised from ``seed``.

    The initialisation is one compiled program per model, layers and shapes
    (:func:`bayescomp.compiled_init.initialize`); the module is the one eager construction
    builds, up to float32 rounding of the initial values.
    """
    method = OmegaConf.to_container(cfg.method, resolve=True)
    batch_norm = cfg.trainer.get("batch_norm")
    batch_norm = None if batch_norm is None else OmegaConf.to_container(batch_norm, resolve=True)
    factory = bnn.from_config(method, batch_norm)
    model_cls = models.get(cfg.model.name)
    factory.check_layer_names(model_cls.layer_names)
    widths = cfg.model.get("widths")
    extra = {} if widths is None else {"widths": OmegaConf.to_object(widths)
                                       if OmegaConf.is_config(widths) else widths}
    input_shape = tuple(int(d) for d in input_shape)

    def construct(key):
        return model_cls(factory, rngs=nnx.Rngs(params=key), input_shape=input_shape,
                         num_classes=num_classes, **extra)

    key = ("build_model", cfg.model.name, json.dumps(method, sort_keys=True),
           json.dumps(batch_norm, sort_keys=True), input_shape, int(num_classes),
           repr(extra.get("widths")))  # as given: the model checks them (a list, or a mistake)
    return compiled_init.initialize(key, construct, int(seed))


def load_run_dataset(cfg: DictConfig) -> "data_lib.Dataset":
    """The dataset named by a run's ``cfg.data``, found and preprocessed as the run found it."""
    dataset = data_lib.load_dataset(
        cfg.data.name, data_dir=cfg.data.get("dir"), tfds_data_dir=cfg.data.get("tfds_data_dir"),
        download=cfg.data.get("download", True), preprocess=cfg.data.get("preprocess", "reference"),
        seed=int(cfg.seed))
    log.info("dataset %s from %s: %d train / %d test", dataset.name, dataset.source,
             len(dataset.y_train), len(dataset.y_test))
    return dataset


#: Keys a run's ``config.yaml`` must hold for the run to be rebuilt from it.
RUN_CONFIG_KEYS = ("seed", "model.name", "method.name", "data.name", "trainer.eval_batch_size")


def read_run_config(run_dir: str | os.PathLike) -> DictConfig:
    """The resolved config a run wrote: ``config.yaml``, or Hydra's ``.hydra/config.yaml``.

    Every command that rebuilds a run from its directory reads it here, so a file that is not
    a run's config (garbage, a YAML list, a config lacking the run's identity) is one line
    naming the file rather than a YAML or attribute traceback.

    Raises:
        ConfigError: ``run_dir`` holds no config, or its config cannot be read, lacks one of
            :data:`RUN_CONFIG_KEYS`, or names an unknown dataset.
    """
    run_dir = pathlib.Path(run_dir)
    path = next((p for p in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml")
                 if p.is_file()), None)
    if path is None:
        raise ConfigError(f"{run_dir} is not a bayescomp run directory (no config.yaml); pass "
                          "the hydra.run.dir of a run of python -m bayescomp.run")
    redo = ("; it records the run's settings and is rewritten with each checkpoint: rerun the "
            "run's command in that directory, or restore the file from a copy")
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 -- any YAML, OmegaConf, decoding or I/O failure
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{path} cannot be read as a run's config ({type(error).__name__}: "
                          f"{first_line}){redo}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} holds a YAML {type(cfg).__name__}, not a run's config "
                          f"(a mapping){redo}")
    missing = [key for key in RUN_CONFIG_KEYS
               if OmegaConf.select(cfg, key, default=None, throw_on_missing=False) is None]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}, so it is not a run's config"
                          f"{redo}")
    if cfg.data.name not in data_lib.REGISTRY:
        raise ConfigError(f"{path} names an unknown dataset {cfg.data.name!r}")
    return cfg


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
    cfg = read_run_config(run_dir)
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
#: name, pruning and bit widths (applied to the trained posterior, so a finished run can be
#: re-evaluated at new thresholds or bit tolerances), ``method.pretrained_run`` and
#: ``method.start_from`` (compared as resolved paths by the training loop, so ``~/x`` and
#: ``/root/x`` are the same run) and, for the
#: variational procedure, the number of epochs (to train a finished run for longer; a warning says when the
#: learning-rate schedule depends on it), and the devices a batch is split over (the same
#: trajectory up to the order of float sums). Every other setting shapes the trajectory and must
#: match the checkpoint. A key ending in "." covers its whole subtree.
RESUMABLE_CHANGES = ("experiment_name", "data.dir", "data.tfds_data_dir", "data.download",
                     "trainer.progress_bar", "trainer.tensorboard", "trainer.eval_batch_size",
                     "trainer.pruned_eval_every", "trainer.loop", "trainer.epochs",
                     "trainer.devices", "method.prune.", "method.bits.", "method.bits",
                     "method.pretrained_run", "method.start_from")


#: Retraining procedures (Deep Compression, soft weight-sharing) derive each phase's masks and
#: codebooks from the phases before it, which a changed epoch count would retrain differently;
#: their checkpoints are only resumable with the same ``trainer.epochs``.
RESUMABLE_CHANGES_RETRAINING = tuple(k for k in RESUMABLE_CHANGES if k != "trainer.epochs")


def trajectory_config(cfg: DictConfig, resumable: tuple[str, ...] = RESUMABLE_CHANGES, *,
                      warmup_run_epochs: int | None = None) -> dict[str, Any]:
    """The resolved settings that determine the training trajectory, as flat dotted keys.

    Stored in every checkpoint and compared on resume (:func:`check_same_config`), so rerunning
    a run directory with, say, another learning rate is refused instead of silently continuing
    the old run under new settings.

    Args:
        cfg: The run's configuration.
        resumable: Keys (or subtrees, ending in ".") left out of the comparison.
        warmup_run_epochs: The run length that resolves a KL warm-up given as fractions of the
            run into epochs (:func:`bayescomp.objectives.warmup_epoch`); default
            ``trainer.epochs``. A resume passes the checkpoint's, so that training a finished
            run for longer compares the warm-up it was trained with.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    flat = flatten_config(container)
    # The warm-up in epochs, whether written as epochs or as fractions of the run: a checkpoint
    # written under start_epoch=5 of 200 and one under 0.025 trained alike.
    # Augmentation as it resolved (null is the dataset's default): a CIFAR checkpoint trained
    # with data.augment=null resumes under data.augment=true, the same trajectory.
    if "data.augment" in flat:
        flat["data.augment"] = augment_lib.resolved_setting(flat["data.augment"],
                                                            flat.get("data.name"))
    run_epochs = flat.get("trainer.epochs") if warmup_run_epochs is None else warmup_run_epochs
    for key in WARMUP_KEYS:
        if key in flat and run_epochs is not None:
            flat[key] = objectives.warmup_epoch(flat[key], int(run_epochs))
    return {key: value for key, value in flat.items() if not is_resumable(key, resumable)}


def is_resumable(key: str, resumable: tuple[str, ...]) -> bool:
    """Whether the flat setting ``key`` is one of ``resumable`` (a key ending in "." covers its
    subtree)."""
    return any(key == skip or (skip.endswith(".") and key.startswith(skip)) for skip in resumable)


#: The KL warm-up's ends (epochs, or fractions of the run).
WARMUP_KEYS = ("trainer.kl_warmup.start_epoch", "trainer.kl_warmup.end_epoch")


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


def prepare_run_directory(cfg: DictConfig, workdir) -> pathlib.Path:
    """Where every procedure starts: check the settings (:func:`check_settings`), create
    ``workdir`` and refuse it if it holds another run (:func:`check_run_identity`).

    Returns:
        ``workdir`` as a path.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_settings(cfg)
    check_run_identity(cfg, workdir)
    return workdir


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
                  resumable: tuple[str, ...] = RESUMABLE_CHANGES,
                  phase_epochs: int | None = None) -> None:
    """Raise if ``meta`` (a checkpoint's metadata) was saved under other training settings.

    ``workdir`` is the run directory, whose ``config.yaml`` (:func:`write_config`, rewritten
    only after a checkpoint) holds the checkpoint's settings; Hydra's ``.hydra/config.yaml``
    already holds the new ones by the time this runs. ``phase_epochs``: the length of the phase
    being resumed (default ``trainer.epochs``), which its learning-rate schedule spans and the
    checkpoint's ``epochs`` recorded; a fine-tuning phase may differ from the run's.

    Raises:
        ConfigError: A trajectory setting differs (see :func:`trajectory_config`).
    """
    if "config" not in meta:
        log.info("the checkpoint in %s predates stored settings; resuming it unchecked",
                 directory)
    # The warm-up resolved with the checkpoint's run length (trainer.epochs where it was
    # stored, else the phase's epochs, which a variational run's equal).
    saved_run_epochs = (meta.get("config") or {}).get("trainer.epochs", meta.get("epochs"))
    saved = meta.get("config")
    if saved is not None and "data.augment" in saved:  # stored unresolved before 2026-12-05
        saved = {**saved, "data.augment": augment_lib.resolved_setting(
            saved["data.augment"], saved.get("data.name"))}
    if saved is not None:  # stored before a key became resumable: not compared either
        saved = {k: v for k, v in saved.items() if not is_resumable(k, resumable)}
    only_one_side = check_same_config(
        saved, trajectory_config(cfg, resumable, warmup_run_epochs=saved_run_epochs),
        directory, pathlib.Path(workdir) / "config.yaml")
    saved_epochs = meta.get("epochs")
    epochs = int(cfg.trainer.epochs if phase_epochs is None else phase_epochs)
    if (saved_epochs is not None and int(saved_epochs) != epochs
            and cfg.optimizer.get("schedule", "constant") != "constant"):
        log.warning("the checkpoint in %s was trained for a %d-epoch run and is resumed for %d "
                    "epochs: the %s learning-rate schedule restarts from a different curve",
                    directory, int(saved_epochs), epochs, cfg.optimizer.schedule)
    if only_one_side:
        log.warning("settings present in only one of the checkpoint in %s and this bayescomp "
                    "version (not compared): %s", directory, ", ".join(only_one_side))


def log_code_version() -> str:
    """Read (once per process, see :mod:`bayescomp.provenance`) and log the code's commit."""
    commit = provenance.git_commit()
    dirty = provenance.dirty_files()
    log.info("code: commit %s%s", commit, f" (changed: {', '.join(dirty)})" if dirty else "")
    return commit


def model_widths(cfg: DictConfig) -> tuple[int, ...] | None:
    """The run's ``model.widths`` (the model's constructor argument), or ``None`` (defaults):
    what a quantized network records so that its model can be rebuilt from the file."""
    widths = cfg.model.get("widths")
    return None if widths is None else tuple(int(w) for w in widths)


def write_config(workdir: pathlib.Path, cfg: DictConfig) -> None:
    """Write the resolved ``config.yaml`` of the run that wrote the latest checkpoint.

    It lets the run be rebuilt without Hydra (:func:`load_trained_model`,
    ``python -m bayescomp.compress``). Written after a checkpoint, never before: a run that fails
    (bad input, a NaN loss) leaves the previous one in place.
    """
    atomic.write_text(pathlib.Path(workdir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


#: The lock file of a run directory (:func:`lock_run_directory`); it holds the owner's
#: ``pid host`` for the message of a process that finds it taken.
LOCK_FILE = ".run.lock"


@contextlib.contextmanager
def lock_run_directory(workdir: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Hold the run directory's lock: one process at a time writes a run.

    Two processes training in one directory would both write checkpoints, ``config.yaml`` and
    ``metrics.json``, the later silently replacing the earlier. The lock is an exclusive
    ``flock`` on :data:`LOCK_FILE`, which the kernel releases when its process ends however it
    ends, so the lock of a killed process is free at once (its stale file is simply taken
    over). The file is removed on release; a process that had opened it just before then
    sees the removal and opens the new one.

    Args:
        workdir: The run directory (created if missing).

    Yields:
        The lock file's path.

    A file system without ``flock`` (some network mounts) gets a warning and no lock.

    Raises:
        RunDirectoryBusyError: Another live process holds the lock; the message names it.
        ConfigError: The lock file cannot be created (the directory is not writable).
        DiskFullError: ... for lack of space.
    """
    workdir = pathlib.Path(workdir).absolute()
    path = workdir / LOCK_FILE
    while True:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            reason = atomic.disk_full_reason(error)
            if reason is not None:
                raise DiskFullError(workdir, LOCK_FILE, reason) from None
            raise ConfigError(f"cannot create the lock file {path} ({error.strerror or error}); "
                              "the run directory must be writable: use another "
                              "hydra.run.dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                # A file system without locks (some network mounts): run unguarded, and say so.
                os.close(fd)
                log.warning("%s cannot be locked (%s): a second process started in it would not "
                            "be stopped", workdir, error.strerror)
                yield path
                return
            holder = _lock_holder(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise RunDirectoryBusyError(
                f"{workdir} is in use by another bayescomp run ({holder}), which is still "
                "writing to it; wait for it to finish (or stop it), or run in a new output "
                "directory (hydra.run.dir=...)") from None
        # The holder before us may have removed the file between our open and our lock: then
        # we hold a lock on a file no one else can see, and must take the current one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    except OSError:
        pass  # the owner's name is for the message of others; the lock itself holds
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """``process PID on HOST`` from a lock file, as far as it can be read."""
    try:
        fields = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        fields = []
    if not fields or not fields[0].isdigit():
        return "a process that has not yet written its id"
    pid = f"process {fields[0]}"
    if len(fields) > 1 and fields[1] != socket.gethostname():
        pid += f" on {fields[1]}"
    return pid


class TensorBoardLog:
    """A run's TensorBoard events, written synchronously in the caller's thread.

    ``tensorboardX.SummaryWriter`` writes from a background thread: a full disk kills that
    thread with a traceback the training loop never sees, later events block on its queue, and
    a half-written record stays at the end of the file. Here every event is written where it is
    logged (the summaries are tensorboardX's, the file is TFRecord framing), a record that does
    not fit is cut off again, and a full disk raises :class:`DiskFullError` naming the
    directory.

    The event file is opened at the first event, with a ``SessionLog.START`` at that event's
    step: TensorBoard then hides the events an earlier process logged at that step or later.
    A run killed after logging an epoch but before its checkpoint redoes that epoch; without
    the marker the epoch would appear twice. A process that logs nothing (a finished run
    re-evaluated) leaves no file.

    Args:
        directory: Where the event files go (``RUN_DIR/tensorboard``).
    """

    #: Histogram bins (equal width between the smallest and largest value, like the log α
    #: plots in ``plots/``).
    HISTOGRAM_BINS = 100

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory).absolute()
        self.path: pathlib.Path | None = None
        self._file = None
        self._size = 0
        self._failed = False

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as error:
            reason = atomic.disk_full_reason(error)
            if reason is None:
                raise
            self._failed = True
            raise DiskFullError(self.directory, "TensorBoard events", reason) from None

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads files named *tfevents*; the process id keeps two processes started
        # within one second apart, and "x" never truncates an existing file.
        stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        for attempt in range(1000):
            path = self.directory / (stem if attempt == 0 else f"{stem}.{attempt}")
            try:
                self._file = open(path, "xb", buffering=0)
                self.path = path
                return
            except FileExistsError:
                continue
        raise FileExistsError(f"no free event file name under {self.directory}")

    def _record(self, data: bytes) -> None:
        """Append one TFRecord (length, its CRC, data, its CRC); cut it off if it fails."""
        from tensorboardX.record_writer import masked_crc32c

        header = struct.pack("<Q", len(data))
        record = (header + struct.pack("<I", masked_crc32c(header)) + data
                  + struct.pack("<I", masked_crc32c(data)))
        try:
            view = memoryview(record)
            while view:  # an unbuffered write may take part of it and fail on the rest
                view = view[self._file.write(view):]
        except OSError:
            with contextlib.suppress(OSError):  # shrinking a file needs no space
                os.ftruncate(self._file.fileno(), self._size)
            raise
        self._size += len(record)

    def _event(self, step: int, **fields) -> None:
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        if self._failed:
            return  # the error was raised once; what follows would only repeat it
        with self._writing():
            if self._file is None:
                self._open()
                self._record(Event(wall_time=time.time(),
                                   file_version="brain.Event:2").SerializeToString())
                self._record(Event(step=int(step), wall_time=time.time(),
                                   session_log=SessionLog(status=SessionLog.START)
                                   ).SerializeToString())
            self._record(Event(step=int(step), wall_time=time.time(),
                               **fields).SerializeToString())

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.summary import scalar

        self._event(step, summary=scalar(tag, float(value)))

    def add_histogram(self, tag: str, values, step: int) -> None:
        from tensorboardX.summary import histogram

        self._event(step, summary=histogram(tag, np.asarray(values, dtype=np.float64),
                                            bins=self.HISTOGRAM_BINS))

    def flush(self) -> None:
        """Make the events durable (once per epoch: the loop calls it after logging one)."""
        if self._file is not None and not self._failed:
            with self._writing():
                os.fsync(self._file.fileno())

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()  # unbuffered: nothing is left to write
