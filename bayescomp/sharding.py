r"""Data parallelism over the visible accelerators: one batch, split across devices.

With ``d`` devices every training step gathers its batch of B examples as before and constrains
it to be split along the batch axis, B/d examples per device; the parameters, optimiser state,
BatchNorm statistics and the (device-resident) dataset are replicated. Nothing else changes:
XLA's SPMD partitioner (GSPMD; Xu et al. 2021, "GSPMD: General and Scalable Parallelization for
ML Computation Graphs") turns every reduction over the batch into a cross-device one, so the
mean loss, its gradient and BatchNorm's batch statistics are those of the whole batch, as on one
device (synchronised BatchNorm, not per-device statistics). Random numbers are drawn with
partitionable Threefry (``jax_threefry_partitionable``, the default), so each example gets the
same noise and augmentation as on one device: results agree with a one-device run up to the
order of floating-point sums.

``trainer.devices``: ``all`` (default: the most visible devices of the default backend that split
the batch evenly; one device means no sharding at all, the arrays and programs of a plain run)
or a positive count, the first ``n`` devices, which must divide the batch size.

One run spans one machine. JAX's multi-host runtime (``jax.distributed.initialize()``, one
process per host) would make ``jax.devices()`` span every host, but a run is not ready for it:
the run directory's lock, the checkpoints and the batch index arrays are per process. Hydra's
submitit launcher runs separate jobs on separate machines instead.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bayescomp.errors import ConfigError

AXIS = "batch"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A one-axis device mesh over which batches are split.

    Attributes:
        mesh: The mesh, axis :data:`AXIS`.
    """

    mesh: Mesh

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_split(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    def replicate(self, tree):
        """Every array of ``tree`` on every device of the mesh (other leaves unchanged)."""
        return jax.tree.map(
            lambda leaf: jax.device_put(leaf, self.replicated)
            if isinstance(leaf, (jax.Array, np.ndarray)) else leaf, tree)

    def split_batch(self, batch: jax.Array) -> jax.Array:
        """Inside a jitted function: ``batch`` split along its first axis across the mesh."""
        return jax.lax.with_sharding_constraint(batch, self.batch_split)


def from_config(devices, batch_size: int) -> DataParallel | None:
    """The data-parallel mesh ``trainer.devices`` asks for, or ``None`` for one device.

    Args:
        devices: ``"all"``/``None`` or a positive integer.
        batch_size: The training batch size, which every device must get an equal share of.

    Raises:
        ConfigError: A value that is neither, more devices than visible, or a batch size that
            does not divide.
    """
    visible = jax.devices()
    if devices is None or devices == "all":
        # As many devices as split the batch evenly: batch 100 on 8 GPUs uses 5 rather than
        # refusing a recipe written for one device.
        count = max(n for n in range(1, len(visible) + 1) if batch_size % n == 0)
        if count < len(visible):
            log.info("trainer.batch_size=%d splits evenly over %d of the %d visible devices; "
                     "using %d", batch_size, count, len(visible), count)
    elif isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        count = devices
    else:
        raise ConfigError(f"trainer.devices must be 'all' or a positive integer, got "
                          f"{devices!r}")
    if count > len(visible):
        raise ConfigError(f"trainer.devices={count} but only {len(visible)} "
                          f"{visible[0].platform} device(s) are visible; set trainer.devices="
                          f"{len(visible)} or 'all'")
    if count == 1:
        return None
    if batch_size % count:
        raise ConfigError(f"trainer.batch_size={batch_size} does not split evenly over "
                          f"{count} devices; use a multiple of {count} or set trainer.devices")
    return DataParallel(Mesh(np.asarray(visible[:count]), (AXIS,)))
