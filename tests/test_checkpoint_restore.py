"""Restored checkpoints hold immutable arrays, so models sharing them stay independent."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp.checkpointing import Checkpointer


def test_a_restored_model_can_be_cloned_and_changed_in_place_without_changing_the_original(
        tmp_path):
    # A NumPy array from the file would be written into by ``variable[...] = x`` and every
    # model sharing it (nnx.clone copies no arrays) would change with it: the ranking control
    # once measured its "unpruned" network after masking a clone and found 90 % error.
    saved = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(0, (nnx.state(saved),), {"phase_epoch": 0})
    checkpointer.close()

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
    reader = Checkpointer(tmp_path / "ckpt", read_only=True)
    (state,), _ = reader.restore(0, (nnx.state(model),))
    reader.close()
    nnx.update(model, state)
    np.testing.assert_array_equal(model.kernel[...], saved.kernel[...])

    copy = nnx.clone(model)
    copy.kernel[...] = jnp.zeros_like(copy.kernel[...])
    np.testing.assert_array_equal(model.kernel[...], saved.kernel[...])
