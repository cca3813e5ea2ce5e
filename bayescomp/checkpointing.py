"""Orbax checkpoints of the training state, saved every epoch, restored on rerun.

The state is flattened to its leaves (``leaf_00000`` …) plus a JSON block of metadata. Restoring
checks the leaves against a freshly initialised state, so a checkpoint written by another
configuration gives one clear error instead of a shape mismatch deep inside the step.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from bayescomp.errors import ConfigError


class Checkpointer:
    """Save and restore ``(pytree, metadata)`` pairs under ``directory``, one step per epoch.

    Args:
        directory: Where the checkpoints live (created if missing).
        max_to_keep: How many epochs to keep.
    """

    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
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

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Restore step ``step`` into the structure of ``like``.

        Raises:
            ConfigError: The checkpoint does not match ``like`` (written by another config).
        """
        leaves, treedef = jax.tree.flatten(like)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                          meta=ocp.args.JsonRestore()),
        )
        arrays = restored["state"]
        shapes_ok = len(arrays) == len(leaves) and all(
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

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
