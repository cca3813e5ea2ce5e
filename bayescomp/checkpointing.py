"""Orbax checkpoints of the training state, saved every epoch, restored on rerun.

The state is flattened to its leaves (``leaf_00000`` …) plus a JSON block of metadata. Restoring
checks the leaves against a freshly initialised state, so a checkpoint written by another
configuration gives one clear error instead of a shape mismatch deep inside the step.

Shapes alone do not catch a changed learning rate, KL warm-up or seed, which would silently
continue an old trajectory under new settings. Callers therefore store the settings that shape
the trajectory in the metadata (``metadata["config"]``, a flat ``{dotted.key: value}`` dict) and
check them on resume with :func:`check_same_config`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from bayescomp.errors import ConfigError


class _ReadOnlyNotices(logging.Filter):
    """Drops Orbax's warnings that a read-only manager is read-only (three per load)."""

    _PREFIXES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self._PREFIXES)


logging.getLogger("absl").addFilter(_ReadOnlyNotices())

#: Differences listed in the error message before it says "and N more".
_MAX_LISTED = 8


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
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                                 read_only=read_only),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree: Any, metadata: dict) -> None:
        leaves = jax.tree.leaves(tree)
        arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                    meta=ocp.args.JsonSave(metadata)),
        )

    def metadata(self, step: int) -> dict:
        """The JSON metadata of step ``step`` alone (cheap: no arrays are read)."""
        with self._readable(step):
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return dict(restored["meta"])

    def restore(self, step: int, like: Any, prefix: bool = False) -> tuple[Any, dict]:
        """Restore step ``step`` into the structure of ``like``.

        Args:
            step: The step.
            like: A pytree with the structure and shapes of what was saved.
            prefix: ``like`` describes only the first leaves of the saved tree (e.g. the model
                state of a ``(model, optimizer state, key)`` checkpoint); the rest is not read
                back.

        Raises:
            ConfigError: The checkpoint does not match ``like`` (written by another config).
        """
        leaves, treedef = jax.tree.flatten(like)
        with self._readable(step):
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                              meta=ocp.args.JsonRestore()),
            )
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
        new_leaves = [arrays[f"leaf_{i:05d}"] for i in range(len(leaves))]
        return jax.tree.unflatten(treedef, new_leaves), dict(restored["meta"])

    @contextlib.contextmanager
    def _readable(self, step: int):
        """Turn any failure of Orbax to read step ``step`` into one ConfigError saying what to do.

        A checkpoint damaged on disk (a killed copy, a full disk, bit rot) fails deep inside
        Orbax or TensorStore with a JSON or ``OUT_OF_RANGE`` error that names neither the step
        nor a remedy. Earlier steps are still there (``max_to_keep``), so deleting the damaged
        one resumes from the epoch before it.
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
