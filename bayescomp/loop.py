"""The one resumable training loop: a procedure is a short script of :class:`Phase` s.

A phase says what to train and how: its epochs, its optimiser (``conf/optimizer``), which
Variable types train (the rest is frozen: no update, no optimiser state), per-type learning
rates, the weight β of the KL term per epoch, keep masks, and whether BatchNorm layers use
batch statistics (updating their running averages) or their running averages (frozen).
:meth:`TrainingRun.fit` carries it out: the data sit on the device, each epoch draws one
permutation and runs jitted chunks of steps (:mod:`bayescomp.step`), checks the loss and the
parameters for NaN/inf, evaluates, logs (progress bar, TensorBoard, ``run.log``), and writes an
Orbax checkpoint of ``(model state, optimiser state, key)`` to ``checkpoints/<phase>/``.
Rerunning the same command in the same directory skips finished phases (restoring their
final state) and resumes the unfinished one bit-identically; a checkpoint written under
other training settings is refused with the differing keys named
(:func:`bayescomp.runs.resume_checks`).

Random numbers: a phase starts from the key its procedure gives it; every epoch splits it into
``(next, permutation, noise)``, and the noise key into one key per chunk and per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from bayescomp import objectives, optim, runs, sharding, step
from bayescomp.checkpointing import Checkpointer
from bayescomp.data import augment as augment_lib
from bayescomp.errors import ConfigError, TrainingDivergedError
from bayescomp.evaluation import Evaluator
from bayescomp.nn.layer import VariationalLayer
from bayescomp.posteriors.variables import PointWeight, PosteriorMean

log = logging.getLogger(__name__)

#: The Variable types that hold a layer's kernel: a phase's keep masks apply to them.
KERNEL_TYPES = (PointWeight, PosteriorMean)

BATCH_NORM_MODES = ("batch_stats", "running")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of training with one objective, one optimiser and fixed masks.

    Attributes:
        name: Names ``checkpoints/<name>/`` and the history records; unique within a run.
        epochs: Epochs to train (0: the model passes through unchanged).
        optimizer: The optimiser's settings (``conf/optimizer`` keys, :func:`optim.make_optimizer`).
        key: The phase's random stream (permutations, noise); the procedure chooses it.
        trains: nnx filter of the Variable types that train; the rest is frozen.
        learning_rates: Optional per-type peak learning rates, ``((filter, lr), ...)``.
        kl_weight: ``phase_epoch -> β`` of the KL term; ``None``: β = 0 (no prior).
        masks: Keep masks by layer path, kernel-shaped booleans, applied to the gradient and the
            value of the layer's kernel (:data:`KERNEL_TYPES`); ``None``: nothing masked.
        batch_norm: ``"batch_stats"`` (normalise by the batch, update the running averages) or
            ``"running"`` (normalise by the running averages, which stay frozen).
        record: ``model -> {name: float}`` added to each epoch's history record.
        pruned_eval_every: Also evaluate the pruned view every this many epochs and at the end.
        resumable: Settings this phase's checkpoints may be resumed under changed, in place of
            the run's (``TrainingRun(resumable=...)``); ``None``: the run's. A phase whose
            trajectory does not depend on a later phase's settings lists them (the channel
            methods' training phase and ``method.finetune``).
    """

    name: str
    epochs: int
    optimizer: Mapping[str, Any]
    key: jax.Array
    trains: Any = nnx.Param
    learning_rates: tuple | None = None
    kl_weight: Callable[[int], float] | None = None
    masks: Mapping[str, np.ndarray] | None = None
    batch_norm: str = "batch_stats"
    record: Callable[[nnx.Module], Mapping[str, float]] | None = None
    pruned_eval_every: int | None = None
    resumable: tuple[str, ...] | None = None


def train_view(model: nnx.Module, batch_norm: str) -> nnx.Module:
    """The sampling view of ``model`` with BatchNorm in the phase's mode."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ConfigError(f"unknown batch-norm mode {batch_norm!r}; known: "
                          f"{', '.join(BATCH_NORM_MODES)}")
    return nnx.view(model, deterministic=False, pruned=False,
                    use_running_average=batch_norm == "running", raise_if_not_found=False)


def all_finite(tree) -> bool:
    """Whether every array of ``tree`` is free of NaN and ±inf (one host sync)."""
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
    return bool(jnp.all(jnp.stack(flags))) if flags else True


def chunk_steps(steps_per_epoch: int, requested: int) -> int:
    """Largest divisor of ``steps_per_epoch`` not above ``requested``: equal chunks, one trace."""
    requested = max(1, min(requested, steps_per_epoch))
    for size in range(requested, 0, -1):
        if steps_per_epoch % size == 0:
            return size
    return 1


def kernel_masks(model: nnx.Module, split: step.StateSplit, masks) -> list | None:
    """``masks`` (by layer path) as a list aligned with the leaves of the trainable state."""
    if not masks:
        return None
    names = sorted((name for name, _ in objectives.variational_layers(model)), key=len,
                   reverse=True)
    unknown = sorted(set(masks) - set(names))
    if unknown:
        raise ConfigError(f"masks name unknown layers {unknown}; the model's layers are {names}")
    aligned = []
    for path, variable in nnx.to_flat_state(split.split(model)[1]):
        dotted = ".".join(str(p) for p in path)
        owner = next((n for n in names if dotted.startswith(n + ".")), None)
        mask = masks.get(owner) if isinstance(variable, KERNEL_TYPES) else None
        aligned.append(None if mask is None else jnp.asarray(mask, bool))
    return aligned


#: What to do after a divergence. Resuming the same directory with another learning rate is
#: refused (it would continue a trajectory under new settings), so the advice is a new one.
DIVERGED_ADVICE = ("Lower the learning rate (optimizer.lr, or the phase's rates), lengthen "
                   "trainer.kl_warmup, or check the data, then run again in a new output "
                   "directory (hydra.run.dir=...)")


def diverged(checkpointer: Checkpointer, what: str) -> TrainingDivergedError:
    """The one-line error of a divergence: what happened, what is kept, what to do."""
    latest = checkpointer.latest_step()
    kept = ("no epoch of this phase finished, so nothing of it is kept" if latest is None else
            f"the checkpoint of the last good epoch ({latest}) in {checkpointer.directory} is "
            "kept")
    return TrainingDivergedError(f"{what}; {kept}. {DIVERGED_ADVICE}")


@contextlib.contextmanager
def stop_between_chunks():
    """Turn a Ctrl-C (SIGINT) into a stop at the next chunk boundary; yield ``requested()``.

    A KeyboardInterrupt raised wherever the signal lands can be swallowed by library code that
    catches broad exceptions (an asynchronous checkpoint save, say), and the run would go on. The
    handler only records the request; the loop raises ``KeyboardInterrupt`` between chunks,
    where nothing is half-written. A second Ctrl-C interrupts at once. Outside the main thread
    (where signals cannot be handled) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = []

    def handler(signum, frame):
        del signum, frame
        if requested:
            raise KeyboardInterrupt
        requested.append(True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)
    if requested:  # a request after the last check (the last epoch's evaluation or checkpoint)
        raise KeyboardInterrupt


class TrainingRun:
    """The context a procedure's phases share: data, batch geometry, history, logs.

    Args:
        cfg: The run's configuration (``trainer``: batch sizes, chunking, loop, logging;
            ``seed``).
        workdir: The run directory.
        dataset: The dataset (:func:`bayescomp.runs.load_run_dataset`).
        resumable: Settings a resumed run may change (:data:`bayescomp.runs.RESUMABLE_CHANGES`).
        pretrained_run: For a retraining, the run it starts from; recorded in every checkpoint,
            and a checkpoint written for another one is refused.
        start_from: The dense run whose network training started from (``method.start_from``),
            or ``None``: from scratch. Recorded in every checkpoint; a checkpoint trained from
            another start (from scratch included) is refused.
    """

    def __init__(self, cfg: DictConfig, workdir, dataset, *,
                 resumable: tuple[str, ...] = runs.RESUMABLE_CHANGES,
                 pretrained_run: str | None = None, start_from: str | None = None):
        self.cfg = cfg
        self.workdir = pathlib.Path(workdir)
        self.dataset = dataset
        self.resumable = resumable
        self.pretrained_run = None if pretrained_run is None else str(
            pathlib.Path(str(pretrained_run)).expanduser().resolve())
        self.start_from = None if start_from is None else str(
            pathlib.Path(str(start_from)).expanduser().resolve())
        trainer = cfg.trainer
        self.batch_size = int(trainer.batch_size)
        # Several devices: the data and the state on every one, each batch split across them.
        self.parallel = sharding.from_config(trainer.get("devices", "all"), self.batch_size)
        place = jnp.asarray if self.parallel is None else self.parallel.replicate
        self.x_train, self.y_train = place(dataset.x_train), place(dataset.y_train)
        self.x_test, self.y_test = place(dataset.x_test), place(dataset.y_test)
        self.n_train = int(self.x_train.shape[0])
        self.steps_per_epoch = self.n_train // self.batch_size  # each permutation's rest dropped
        if self.steps_per_epoch < 1:
            raise ConfigError(f"trainer.batch_size={self.batch_size} exceeds the {self.n_train} "
                              "training examples")
        self.chunk = chunk_steps(self.steps_per_epoch, int(trainer.chunk_steps))
        # Training-time augmentation, inside the jitted step (off for MNIST-like data).
        self.augment = augment_lib.from_config(
            cfg.get("data") or {}, dataset, augment_by_default=dataset.augment_by_default)
        self.evaluator = Evaluator(int(trainer.eval_batch_size))
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.git_commit = runs.log_code_version()
        self.writer = None
        if trainer.get("tensorboard", True):
            # Synchronous, so a full disk is one error here; a resumed run's redone epochs
            # replace the killed process's events (runs.TensorBoardLog).
            self.writer = runs.TensorBoardLog(self.workdir / "tensorboard")
        self._compiled: dict = {}
        self._stop_requested = lambda: False

    def error(self, model: nnx.Module, *, pruned: bool = False) -> float:
        """Test error (%) of ``model``'s deterministic view."""
        return self.evaluator.error(model, self.x_test, self.y_test, pruned=pruned)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ----------------------------------------------------------------------------------------

    def fit(self, model: nnx.Module, phase: Phase) -> nnx.Module:
        """Train ``model`` in place for ``phase``, or resume / skip it from its checkpoints.

        Returns:
            ``model``, holding the phase's final state.

        Raises:
            TrainingDivergedError: The loss or the parameters became NaN or infinite (the last
                good epoch's checkpoint is kept).
            ConfigError: The phase's checkpoints were written under other settings.
        """
        epochs = int(phase.epochs)
        if epochs <= 0:
            return model
        split = step.StateSplit(phase.trains)
        graphdef, trainable, _, _ = split.split(train_view(model, phase.batch_norm))
        optimizer, chunk = self._compile(graphdef, split, phase, trainable, model)
        masks = kernel_masks(model, split, phase.masks)
        checkpointer = Checkpointer(self.workdir / "checkpoints" / phase.name)
        try:
            opt_state, key, start = self._resume(checkpointer, phase, model,
                                                 optimizer.init(trainable))
            if start < epochs:
                # Split after a resume: the restored model holds every variable, frozen ones too.
                graphdef, trainable, batch_stats, frozen = split.split(
                    train_view(model, phase.batch_norm))
                state = [step.apply_masks(trainable, masks), batch_stats, opt_state, key]
                if self.parallel is not None:
                    state[:3], frozen, masks = self.parallel.replicate((state[:3], frozen, masks))
                self._train_epochs(model, phase, graphdef, frozen, masks, chunk, state,
                                   checkpointer, start)
        finally:
            checkpointer.wait()
            checkpointer.close()
        return model

    def _compile(self, graphdef, split, phase: Phase, trainable, model):
        """The phase's optimiser and chunk; phases alike but for name and masks share them."""
        optimizer_cfg = dict(phase.optimizer)
        cache_key = (graphdef, split, repr(sorted(optimizer_cfg.items())), int(phase.epochs),
                     repr(phase.learning_rates))
        if cache_key not in self._compiled:
            optimizer = optim.make_optimizer(
                optimizer_cfg, trainable, total_steps=int(phase.epochs) * self.steps_per_epoch,
                steps_per_epoch=self.steps_per_epoch, learning_rates=phase.learning_rates)
            loop = step.choose_loop(model, str(self.cfg.trainer.get("loop", "auto")))
            self._compiled[cache_key] = (optimizer, step.make_chunk(
                graphdef, split, optimizer, n_train=self.n_train, loop=loop,
                augment=self.augment,
                split_batch=None if self.parallel is None else self.parallel.split_batch))
        return self._compiled[cache_key]

    def _resume(self, checkpointer: Checkpointer, phase: Phase, model, opt_state):
        """Restore the phase's latest checkpoint into ``model``, the history and the time.

        Returns:
            ``(optimiser state, key, next epoch)``: ``opt_state`` and the phase's key with 0
            where there is no checkpoint.
        """
        latest = checkpointer.latest_step()
        if latest is None:
            return opt_state, phase.key, 0
        # Settings first: a changed setting is named rather than a shape mismatch.
        meta = checkpointer.metadata(latest)
        saved_pretrained = meta.get("pretrained_run")
        if self.pretrained_run is not None and saved_pretrained not in (None,
                                                                        self.pretrained_run):
            raise ConfigError(
                f"the checkpoints in {checkpointer.directory} were retrained from "
                f"{saved_pretrained}, not {self.pretrained_run}; run in a new output directory "
                "(hydra.run.dir=...) or delete those checkpoints to start over")
        saved_start = meta.get("start_from")
        if saved_start is None and self.pretrained_run is None:
            # A VCNN run started from a dense run recorded it as its pretrained_run until the
            # start had a key of its own.
            saved_start = meta.get("pretrained_run")
        if saved_start != self.start_from:
            raise ConfigError(
                f"the checkpoints in {checkpointer.directory} were trained "
                f"{'from ' + saved_start if saved_start else 'from scratch'}, this run starts "
                f"{'from ' + self.start_from if self.start_from else 'from scratch'} "
                "(method.start_from); run in a new output directory (hydra.run.dir=...) or "
                "delete those checkpoints to start over")
        runs.resume_checks(meta, self.cfg, checkpointer.directory, self.workdir,
                           self._resumable(phase), phase_epochs=int(phase.epochs))
        (model_state, opt_state, key_data), meta = checkpointer.restore(
            latest, (nnx.state(model), opt_state, jax.random.key_data(phase.key)))
        nnx.update(model, model_state)
        self.history = list(meta["history"])
        self.train_seconds = float(meta["train_seconds"])
        start = int(meta["phase_epoch"]) + 1
        if start > int(phase.epochs):
            log.warning("the checkpoints in %s were trained for %d epochs, more than the %d asked "
                        "for; the longer-trained state is kept", checkpointer.directory, start,
                        int(phase.epochs))
        if start < int(phase.epochs):
            log.info("resuming phase %s from %s at epoch %d", phase.name,
                     checkpointer.directory, start)
        return opt_state, jax.random.wrap_key_data(jnp.asarray(key_data)), start

    def _train_epochs(self, model, phase: Phase, graphdef, frozen, masks, chunk, state: list,
                      checkpointer: Checkpointer, start: int) -> None:
        epochs = int(phase.epochs)
        progress = self._progress_bar(phase, epochs - start)
        try:
            # Log lines go through the progress bar, so they are not glued onto its end.
            with contextlib.nullcontext() if progress is None else logging_redirect_tqdm(), \
                    stop_between_chunks() as self._stop_requested:
                self._epochs(model, phase, graphdef, frozen, masks, chunk, state, checkpointer,
                             start, progress)
        finally:
            if progress is not None:
                progress.close()

    def _epochs(self, model, phase: Phase, graphdef, frozen, masks, chunk, state: list,
                checkpointer: Checkpointer, start: int, progress) -> None:
        for phase_epoch in range(start, int(phase.epochs)):
            beta = 0.0 if phase.kl_weight is None else float(phase.kl_weight(phase_epoch))
            state[3], perm_key, noise_key = jax.random.split(state[3], 3)
            sums, seconds = self._train_epoch(phase, phase_epoch, frozen, masks, chunk, state,
                                              perm_key, noise_key, beta, checkpointer, progress)
            self.train_seconds += seconds
            nnx.update(model, nnx.state(nnx.merge(graphdef, state[0], state[1], frozen)))
            # A finite loss does not prove finite parameters: the last update of the epoch
            # comes after its loss. Never checkpoint a non-finite state as the "last good" one.
            if not all_finite((state[0], state[1])):
                checkpointer.wait()
                raise diverged(checkpointer, f"the parameters became non-finite at the end of "
                                             f"phase {phase.name}, epoch {phase_epoch}")
            record = self._record(model, phase, phase_epoch, start, sums, beta, seconds)
            self._log(model, record)
            checkpointer.save(phase_epoch, (nnx.state(model), state[2],
                                            jax.random.key_data(state[3])),
                              self._checkpoint_meta(phase, phase_epoch))
            runs.write_config(self.workdir, self.cfg)
            if self._stop_requested():
                raise KeyboardInterrupt  # Ctrl-C during evaluation or checkpointing

    def _train_epoch(self, phase, phase_epoch, frozen, masks, chunk, state, perm_key, noise_key,
                     beta, checkpointer, progress):
        """One epoch of chunks; returns the summed ``[loss, NLL, KL, correct]`` and seconds."""
        steps, batch = self.steps_per_epoch, self.batch_size
        batch_index = jax.random.permutation(perm_key, self.n_train)[: steps * batch].reshape(
            steps, batch)
        sums = np.zeros(4)
        started = time.perf_counter()
        for c, chunk_key in enumerate(jax.random.split(noise_key, steps // self.chunk)):
            state[0], state[1], state[2], chunk_sums = chunk(
                state[0], state[1], frozen, state[2], masks, self.x_train, self.y_train,
                batch_index[c * self.chunk:(c + 1) * self.chunk], chunk_key, jnp.float32(beta))
            chunk_sums = np.asarray(chunk_sums)  # blocks: timing and NaN checks are per chunk
            if self._stop_requested():
                raise KeyboardInterrupt  # Ctrl-C: resume from the last epoch's checkpoint
            if not np.all(np.isfinite(chunk_sums)):
                checkpointer.wait()
                raise diverged(checkpointer, f"the loss became {chunk_sums[0]} in phase "
                                             f"{phase.name} (steps {c * self.chunk}-"
                                             f"{(c + 1) * self.chunk - 1} of its epoch "
                                             f"{phase_epoch})")
            sums += chunk_sums
            if progress is not None:
                done = (c + 1) * self.chunk
                progress.update(self.chunk)
                progress.set_postfix(loss=f"{sums[0] / done:.4f}", kl=f"{sums[2] / done:.4g}",
                                     acc=f"{sums[3] / (done * batch):.4f}")
        return sums, time.perf_counter() - started

    def _record(self, model, phase: Phase, phase_epoch: int, start: int, sums, beta: float,
                seconds: float) -> dict:
        steps = self.steps_per_epoch
        record = {"epoch": len(self.history), "phase": phase.name, "phase_epoch": phase_epoch,
                  "loss": sums[0] / steps, "nll": sums[1] / steps, "kl": sums[2] / steps,
                  "kl_weight": beta, "train_accuracy": sums[3] / (steps * self.batch_size),
                  "test_error": self.error(model), "seconds": seconds}
        every = phase.pruned_eval_every
        if every and ((phase_epoch + 1) % every == 0 or phase_epoch + 1 == int(phase.epochs)):
            record["pruned_test_error"] = self.error(model, pruned=True)
        if phase.record is not None:
            record.update(phase.record(model))
        record = {k: v if isinstance(v, str) else float(v) for k, v in record.items()}
        record.update(git_commit=self.git_commit,
                      # this process compiled the step during its first epoch of the phase
                      includes_compilation=float(phase_epoch == start),
                      # the length this phase was trained for (a resumed variational run may
                      # change it, which changes a decaying learning-rate schedule)
                      planned_epochs=float(phase.epochs))
        self.history.append(record)
        return record

    def _resumable(self, phase: Phase) -> tuple[str, ...]:
        return self.resumable if phase.resumable is None else phase.resumable

    def _checkpoint_meta(self, phase: Phase, phase_epoch: int) -> dict:
        meta = dict(phase=phase.name, phase_epoch=phase_epoch, epoch=len(self.history) - 1,
                    epochs=int(phase.epochs), history=self.history,
                    train_seconds=self.train_seconds,
                    config=runs.trajectory_config(self.cfg, self._resumable(phase)))
        if self.pretrained_run is not None:
            meta["pretrained_run"] = self.pretrained_run
        if self.start_from is not None:
            meta["start_from"] = self.start_from
        return meta

    def _progress_bar(self, phase: Phase, epochs_left: int):
        if not self.cfg.trainer.get("progress_bar", True):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=epochs_left * self.steps_per_epoch, unit="step", dynamic_ncols=True,
                    mininterval=1.0, desc=phase.name)

    def _log(self, model, record: dict) -> None:
        scalars = {k: v for k, v in record.items()
                   if k not in ("epoch", "phase", "phase_epoch", "git_commit")
                   and not isinstance(v, str)}
        log.info("%s epoch %d (%d): %s", record["phase"], int(record["phase_epoch"]),
                 int(record["epoch"]), ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        if self.writer is None:
            return
        epoch = int(record["epoch"])
        for k, v in scalars.items():
            self.writer.add_scalar(f"epoch/{k}", float(v), epoch)
        for path, layer in nnx.iter_modules(model):
            if not isinstance(layer, VariationalLayer):
                continue
            name = ".".join(str(p) for p in path)
            log_alpha = layer.log_alpha()
            if log_alpha is not None:
                self.writer.add_histogram(f"log_alpha/{name}", np.asarray(log_alpha).ravel(),
                                          epoch)
        self.writer.flush()
