"""Orbax checkpoints of the training state, saved every epoch, restored on rerun.

The state is flattened to its leaves (``leaf_00000`` …) plus a JSON block of metadata. Restoring
checks the leaves against a freshly initialised state, so a checkpoint written by another
configuration gives one clear error instead of a shape mismatch deep inside the step.

Shapes alone do not catch a changed learning rate, KL warm-up or seed, which would silently
continue an old trajectory under new settings. Callers therefore store the settings that shape
the trajectory in the metadata (``metadata["config"]``, a flat ``{dotted.key: value}`` dict) and
check them on resume with :func:`check_same_config`.

Nor do shapes catch damage inside the data files: a flipped byte restores as a NaN or a slightly
different weight, and the run goes on from it. Each step therefore carries a third item,
``checksum``: the SHA-256 of its arrays (names, dtypes, shapes and bytes, in name order) and of
its metadata, verified on every restore. Steps saved before checksums existed are restored
unverified, with a warning, so older runs keep resuming.

Saves are synchronous: a failure (a full disk) surfaces in :meth:`Checkpointer.save` itself,
which removes the partial step and raises one line saying which directory is full and which
checkpoint is kept, instead of Orbax's background threads logging their tracebacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pathlib
import shutil
import sys
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bayescomp.atomic import disk_full_reason
from bayescomp.errors import ConfigError, DiskFullError

log = logging.getLogger(__name__)


class _ReadOnlyNotices(logging.Filter):
    """Drops Orbax's warnings that a read-only manager is read-only (three per load)."""

    _PREFIXES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self._PREFIXES)


logging.getLogger("absl").addFilter(_ReadOnlyNotices())

#: Differences listed in the error message before it says "and N more".
_MAX_LISTED = 8

#: The step item holding the SHA-256 digests of the other two (``state``, ``meta``).
CHECKSUM_ITEM = "checksum"


class ChecksumMismatch(Exception):
    """A step's contents differ from the digest saved with them (damaged on disk).

    Internal: :meth:`Checkpointer._readable` turns it into the one-line error of any unreadable
    step, whose name it shows.
    """


def digest_arrays(arrays: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of named arrays: each one's name, dtype, shape and bytes, in name order.

    The order, and the dtype and shape beside the bytes, make the digest independent of how
    Orbax lists the arrays back, and tell a reshaped or retyped array from the original.
    """
    sha = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(np.asarray(arrays[name]))
        sha.update(f"{name} {array.dtype.name} {array.shape}\n".encode())
        sha.update(array.reshape(-1).view(np.uint8))
    return sha.hexdigest()


def digest_json(value: Any) -> str:
    """SHA-256 (hex) of a JSON value as it reads back (tuples as lists), keys sorted."""
    canonical = json.loads(json.dumps(value))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _abandoned_write(error: BaseException | None) -> bool:
    """Whether ``error`` is a TensorStore write's callback finding Orbax's event loop closed:
    what the other writes of a save that has already failed report when they end."""
    return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


@contextlib.contextmanager
def _quiet_abandoned_writes():
    """Do not print the errors of :func:`_abandoned_write` while a save runs or drains.

    TensorStore's threads report them through ``sys.excepthook`` or ``sys.unraisablehook``,
    one traceback per write still under way when the save failed; they say nothing the error
    of the failed save does not. Any other error is printed as before.
    """
    previous_excepthook, previous_unraisablehook = sys.excepthook, sys.unraisablehook

    def excepthook(kind, value, traceback):
        if not _abandoned_write(value):
            previous_excepthook(kind, value, traceback)

    def unraisablehook(unraisable):
        if not _abandoned_write(unraisable.exc_value):
            previous_unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = previous_excepthook, previous_unraisablehook


class _HeldOrbaxErrors(logging.Filter):
    """Holds back the errors Orbax logs (with tracebacks) while a save is running.

    Orbax's writer threads log a failed write at ERROR, each with its traceback, before the save
    raises; for a full disk that is hundreds of lines around the one that says what to do. The
    held records are dropped when the failure is explained by :class:`DiskFullError`, and
    logged as they were otherwise (:meth:`release`).
    """

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "orbax" in record.pathname:
            self.records.append(record)
            return False
        return True

    def __enter__(self):
        logging.getLogger("absl").addFilter(self)
        return self

    def __exit__(self, *exc_info):
        logging.getLogger("absl").removeFilter(self)

    def release(self) -> None:
        for record in self.records:
            logging.getLogger("absl").handle(record)
        self.records.clear()


def flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves (JSON-comparable)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def check_same_config(saved: dict[str, Any] | None, current: dict[str, Any],
                      directory: pathlib.Path | str,
                      settings_file: pathlib.Path | str | None = None) -> list[str]:
    """Refuse to resume a checkpoint written under different training settings.

    Only keys present on both sides are compared: a key that exists on one side only comes from
    a bayescomp version that added or removed a setting, not from the user, and is returned
    (for a warning) rather than refused.

    Args:
        saved: ``metadata["config"]`` of the checkpoint (flat dotted keys), or None for a
            checkpoint written before bayescomp stored it (accepted: nothing to compare).
        current: The same keys for this run.
        directory: The checkpoint directory, named in the error.
        settings_file: Where the checkpoint's full settings can be read, named in the error.

    Returns:
        The keys found on one side only.

    Raises:
        ConfigError: Listing each differing key as ``key: saved -> current``.
    """
    if saved is None:
        return []
    current = json.loads(json.dumps(current))  # tuples become lists, as they were saved
    shared = sorted(set(saved) & set(current))
    differences = [f"{k}: {saved[k]!r} -> {current[k]!r}" for k in shared
                   if saved[k] != current[k]]
    if differences:
        listed = differences[:_MAX_LISTED]
        more = len(differences) - len(listed)
        raise ConfigError(
            f"the checkpoint in {pathlib.Path(directory).absolute()} was written with different "
            "training settings (" + "; ".join(listed) + (f"; and {more} more" if more else "") +
            "). To resume it, rerun with its settings"
            + (f" ({pathlib.Path(settings_file).absolute()})" if settings_file else "")
            + "; to train with the new ones, use a new output directory (hydra.run.dir=...)."
        )
    return sorted(set(saved) ^ set(current))


class Checkpointer:
    """Save and restore ``(pytree, metadata)`` pairs under ``directory``, one step per epoch.

    Args:
        directory: Where the checkpoints live (created if missing).
        max_to_keep: How many epochs to keep.
        read_only: Only read (restore, metadata): nothing in ``directory`` is created, deleted
            or cleaned up, so another process may be training into it at the same time.
    """

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2,
                 read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self._unverified_warned: set[int] = set()
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                    # Synchronous, so that a failed save raises here (see the module docstring).
                    enable_async_checkpointing=False,
                    # A killed save leaves a *.orbax-checkpoint-tmp step; a writer removes it.
                    cleanup_tmp_directories=not read_only),
            )
        except Exception as error:  # noqa: BLE001 -- re-raised unless the disk is full
            reason = disk_full_reason(error)
            if reason is None:
                raise
            raise DiskFullError(self.directory, "the checkpoint directory", reason) from None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree: Any, metadata: dict) -> None:
        """Save ``tree`` and ``metadata`` as step ``step``, with their checksum.

        Raises:
            DiskFullError: The disk is full: the partial step is removed, the earlier steps are
                intact, and the message names the directory and the last complete step.
        """
        leaves = jax.tree.leaves(tree)
        arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
        checksum = {"algorithm": "sha256", "state": digest_arrays(arrays),
                    "meta": digest_json(metadata)}
        held = _HeldOrbaxErrors()
        try:
            with held, _quiet_abandoned_writes():
                try:
                    self._manager.save(
                        step,
                        args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                meta=ocp.args.JsonSave(metadata),
                                                **{CHECKSUM_ITEM: ocp.args.JsonSave(checksum)}),
                    )
                except Exception:
                    self._drain_failed_save(step)
                    raise
        except Exception as error:  # noqa: BLE001 -- re-raised unless the disk is full
            reason = disk_full_reason(error)
            if reason is None:
                held.release()
                raise
            complete = self._complete_steps(besides=step)
            kept = (f"the checkpoint of epoch {complete[-1]}, the last complete one, is kept"
                    if complete else "no checkpoint of this phase was complete yet")
            raise DiskFullError(
                self.directory, f"the checkpoint of epoch {step}", reason, kept=kept,
                advice="free space there and run the same command again: it resumes from "
                       "the last complete checkpoint") from None
        held.release()  # a save that succeeded after all: its messages are worth keeping

    def _complete_steps(self, besides: int) -> list[int]:
        """The finished steps on disk other than ``besides``, in order (read from the disk,
        which a failed save may have left out of step with the manager's list)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir()
                      if p.name.isdigit() and int(p.name) != besides)

    def _remove_partial(self, step: int) -> bool:
        """Remove what a failed save of ``step`` left: Orbax's temporary step directory (the
        finished step is only renamed into place at the very end, so it is not there).

        Returns:
            Whether there was anything to remove.
        """
        partials = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        return bool(partials)

    #: After a failed save: how long no late write may recreate the partial step before it
    #: counts as gone, and the longest wait for that.
    _DRAIN_QUIET_SECONDS, _DRAIN_MAX_SECONDS = 0.5, 10.0

    def _drain_failed_save(self, step: int) -> None:
        """Remove the partial step once the failed save's other writes have ended.

        The save raises at its first failed write while TensorStore's other writes of the
        step are still under way, and they recreate the temporary directory after a first
        removal; so it is removed until it stays gone (:data:`_DRAIN_QUIET_SECONDS`).
        """
        deadline = time.monotonic() + self._DRAIN_MAX_SECONDS
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self._remove_partial(step):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self._DRAIN_QUIET_SECONDS:
                break
            time.sleep(0.05)

    def _has_checksum(self, step: int) -> bool:
        return (self.directory / str(step) / CHECKSUM_ITEM).exists()

    def _restore(self, step: int, with_state: bool) -> dict:
        """Orbax's restore of the step's items, their checksum verified where one was saved.

        Raises:
            ChecksumMismatch: The items read back differ from their saved digests.
        """
        items = {"meta": ocp.args.JsonRestore()}
        if with_state:
            items["state"] = ocp.args.StandardRestore()
        verified = self._has_checksum(step)
        if verified:
            items[CHECKSUM_ITEM] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if not verified:
            if step not in self._unverified_warned:
                self._unverified_warned.add(step)
                log.warning("the checkpoint %s was saved without a checksum (by a bayescomp "
                            "before checksums were stored): damage to its contents cannot be "
                            "detected, and it is restored unverified",
                            self.directory / str(step))
            return restored
        saved = dict(restored[CHECKSUM_ITEM])
        if saved.get("algorithm") != "sha256":
            raise ChecksumMismatch(f"its checksum names an unknown algorithm "
                                   f"{saved.get('algorithm')!r}")
        if digest_json(restored["meta"]) != saved.get("meta"):
            raise ChecksumMismatch("its metadata differ from the checksum saved with them")
        if with_state and digest_arrays(restored["state"]) != saved.get("state"):
            raise ChecksumMismatch("its arrays differ from the checksum saved with them")
        return restored

    def metadata(self, step: int) -> dict:
        """The JSON metadata of step ``step`` alone (cheap: no arrays are read)."""
        with self._readable(step):
            return dict(self._restore(step, with_state=False)["meta"])

    def restore(self, step: int, like: Any, prefix: bool = False) -> tuple[Any, dict]:
        """Restore step ``step`` into the structure of ``like``.

        Args:
            step: The step.
            like: A pytree with the structure and shapes of what was saved.
            prefix: ``like`` describes only the first leaves of the saved tree (e.g. the model
                state of a ``(model, optimizer state, key)`` checkpoint); the rest is not read
                back.

        Raises:
            ConfigError: The checkpoint does not match ``like`` (written by another config), or
                cannot be read or fails its checksum (damaged on disk).
        """
        leaves, treedef = jax.tree.flatten(like)
        with self._readable(step):
            restored = self._restore(step, with_state=True)
        arrays = restored["state"]
        count_ok = len(arrays) >= len(leaves) if prefix else len(arrays) == len(leaves)
        shapes_ok = count_ok and all(
            np.shape(arrays[f"leaf_{i:05d}"]) == np.shape(leaf) for i, leaf in enumerate(leaves)
        )
        if not shapes_ok:
            raise ConfigError(
                f"the checkpoint in {self.directory} was written by a different configuration "
                "(its parameters do not match this model/method); run in a new output directory "
                "(hydra.run.dir=...) or delete that checkpoint directory to start over"
            )
        # JAX arrays, not the NumPy arrays the file holds: a NumPy array is mutable, and
        # ``variable[...] = x`` on a Variable holding one writes into the array itself, so
        # every model sharing it (``nnx.clone`` copies no arrays, ``fold.load_plain`` shares
        # them) would change too.
        new_leaves = [_immutable(arrays[f"leaf_{i:05d}"]) for i in range(len(leaves))]
        return jax.tree.unflatten(treedef, new_leaves), dict(restored["meta"])

    @contextlib.contextmanager
    def _readable(self, step: int):
        """Turn any failure of Orbax to read step ``step`` into one ConfigError saying what to do.

        A checkpoint damaged on disk (a killed copy, a full disk, bit rot) fails deep inside
        Orbax or TensorStore with a JSON or ``OUT_OF_RANGE`` error that names neither the step
        nor a remedy, or reads back but fails its checksum (:class:`ChecksumMismatch`). Earlier
        steps are still there (``max_to_keep``), so deleting the damaged one resumes from the
        epoch before it.
        """
        try:
            yield
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 -- any Orbax/TensorStore/JSON failure
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            raise ConfigError(
                f"the checkpoint {self.directory / str(step)} cannot be read "
                f"({type(error).__name__}: {first_line}); delete that step directory to resume "
                f"from the previous epoch's checkpoint (the last {self.max_to_keep} are kept), "
                "or run in a new output directory (hydra.run.dir=...)") from None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _immutable(leaf):
    """A restored NumPy array as a JAX array (other leaves unchanged)."""
    return jnp.asarray(leaf) if isinstance(leaf, np.ndarray) else leaf
