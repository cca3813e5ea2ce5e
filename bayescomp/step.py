r"""The jitted training step and chunk: one function for every procedure and phase.

A step minimises, over the variables a phase trains,

.. math::

    \mathcal L = \frac1B \sum_{n\in\text{batch}} -\log p(y_n \mid x_n, W_n)
                 + \beta_t\,\frac{\mathrm{KL}}{N},

where KL is the sum of ``kl()`` over every module that has one
(:func:`bayescomp.objectives.total_kl`: weight posteriors, soft weight-sharing's mixture, ...)
and β_t the phase's weight for the epoch (the KL warm-up of the variational procedure, τ of
soft weight-sharing, 0 where there is no prior). The model's state is split by Variable type
into what trains (differentiated and updated), the BatchNorm running statistics (carried and
updated by the forward pass in a batch-statistics view, never differentiated) and the rest
(frozen: passed in, never updated, no optimiser state).

Per step: gradient of ℒ (no value: the update needs ∇KL, not KL, and XLA then drops the KL's
value; the chunk reports the KL of its final parameters), the posterior gradient hint
(:func:`materialize_posterior_gradients`), keep masks on the gradient, the optimiser update,
every posterior's ``project()`` (BC's variance clipping), keep masks on the parameters. A
removed entry therefore gets no gradient (Adam's moments stay 0) and stays exactly +0.0.

A chunk runs one step per row of a batch-index matrix either as one jitted ``lax.scan``
(``loop="scan"``, one dispatch per chunk) or as a jitted step in a Python loop
(``loop="python"``: on XLA:CPU conv gradients inside a loop body run an order of magnitude
slower, jax-ml/jax#12868). Both compile with :func:`bayescomp.xla_options.jit_train_step`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bayescomp import fusion, objectives, xla_options
from bayescomp.data import augment as augment_lib
from bayescomp.errors import ConfigError
from bayescomp.nn.layer import VariationalLayer

Pytree = Any


@dataclasses.dataclass(frozen=True)
class StateSplit:
    """How a model's state is split for training, by Variable type.

    Attributes:
        trains: nnx filter of the Variables that train (e.g. ``nnx.Param``, or
            ``(PointWeight, Bias)``). BatchNorm statistics never train, whatever the filter.
    """

    trains: Any = nnx.Param

    def split(self, model: nnx.Module):
        """``(graphdef, trainable, batch_stats, frozen)`` of ``model`` (a view of it)."""
        return nnx.split(model, nnx.All(self.trains, nnx.Not(nnx.BatchStat)), nnx.BatchStat,
                         ...)


def weight_layers(model: nnx.Module) -> list:
    """Every weight layer of ``model`` (any order: the step only visits each once)."""
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, VariationalLayer)]


def apply_masks(tree: Pytree, masks: list | None) -> Pytree:
    """Zero the masked-out entries of ``tree``.

    Args:
        tree: Trainable variables or their gradients.
        masks: ``None`` (nothing masked) or one entry per leaf of ``tree`` (in
            ``jax.tree.leaves`` order): a boolean keep mask broadcastable to the leaf, or
            ``None`` (leaf not masked). :func:`bayescomp.loop.kernel_masks` builds it.

    Returns:
        ``tree`` with ``where(mask, x, 0)`` applied: a removed entry is ``+0.0`` exactly, never
        ``-0.0`` (a product with the mask would keep the sign of a negative zero).
    """
    if masks is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    if len(leaves) != len(masks):
        raise ValueError(f"{len(masks)} masks for {len(leaves)} arrays")
    return treedef.unflatten([
        leaf if mask is None else jnp.where(mask, leaf, jnp.zeros_like(leaf))
        for leaf, mask in zip(leaves, masks)])


def materialize_posterior_gradients(model_of: Callable, split: StateSplit, grads,
                                    runtime_one: jax.Array):
    """``grads`` unchanged, with the gradients of every posterior that asks for it
    (``Posterior.materialize_gradients``) computed once into memory (:mod:`bayescomp.fusion`).

    The boundary's function multiplies by ``runtime_one``, a 1 that XLA cannot see is 1 (it is
    computed from a traced value): XLA removes a conditional whose branches only pass their
    operands through, and with them the boundary.

    Args:
        model_of: ``state -> model`` for a state shaped like the trainable state.
        split: How the trainable state was split off the model.
        grads: Gradients, an ``nnx.State`` shaped like the trainable variables.
        runtime_one: A traced float32 scalar equal to 1.

    Returns:
        The gradients, equal to ``grads``.
    """
    grad_model = model_of(grads)
    touched = False
    for layer in weight_layers(grad_model):
        if layer.posterior.materialize_gradients:
            state = nnx.state(layer.posterior, nnx.Param)
            nnx.update(layer.posterior, fusion.materialized(
                lambda tree, one: jax.tree.map(lambda g: g * one, tree), state, runtime_one))
            touched = True
    return split.split(grad_model)[1] if touched else grads


def make_step(graphdef, split: StateSplit, optimizer: optax.GradientTransformation, *,
              n_train: int, augment: Callable | None = None,
              split_batch: Callable | None = None) -> tuple[Callable, Callable]:
    """The pure step and the chunk summary (jit them; :func:`make_chunk` does).

    ``augment(key, images) -> images`` (e.g. :class:`bayescomp.data.augment.CropFlip`), if
    given, transforms each gathered batch with a key derived from the step's noise key
    (:func:`bayescomp.data.augment.step_key`), so a resumed run draws the same augmentations.
    ``split_batch`` (:meth:`bayescomp.sharding.DataParallel.split_batch`), if given, spreads the
    gathered batch over the devices before anything else touches it.

    ``step((trainable, batch_stats, opt_state), (batch_index_row, key), frozen, masks, x_all,
    y_all, beta)`` returns the new carry and ``[NLL, correct]`` of its batch;
    ``chunk_sums(trainable, batch_stats, frozen, per_step_sums, steps, beta)`` returns
    ``[Σ loss, Σ NLL, steps·KL, Σ correct]`` with the KL of the chunk's final variables.
    """

    def merge(trainable, batch_stats, frozen):
        return nnx.merge(graphdef, trainable, batch_stats, frozen)

    def loss_fn(trainable, batch_stats, frozen, x, y, key, beta):
        # Fresh Variables for the statistics, created inside this trace: a BatchNorm updates
        # them in place, and NNX refuses to mutate a Variable made at an outer trace level.
        batch_stats = jax.tree.map(lambda stat: stat, batch_stats)
        model = merge(trainable, batch_stats, frozen)
        logits = model(x, rngs=nnx.Rngs(noise=key))
        nll = objectives.mean_nll(logits, y)
        loss = nll + beta * objectives.total_kl(model) / n_train
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return loss, (nll, correct, nnx.state(model, nnx.BatchStat))

    # jax.grad, not value_and_grad: the loss value (and with it the KL's) is not computed.
    grad_fn = jax.grad(loss_fn, has_aux=True)

    def project(trainable, batch_stats, frozen):
        model = merge(trainable, batch_stats, frozen)
        for layer in weight_layers(model):
            layer.posterior.project()
        return split.split(model)[1]

    def step(carry, inputs, frozen, masks, x_all, y_all, beta):
        trainable, batch_stats, opt_state = carry
        idx, step_key = inputs
        x, y = x_all[idx], y_all[idx]
        if split_batch is not None:
            x, y = split_batch(x), split_batch(y)
        if augment is not None:
            x = augment(augment_lib.step_key(step_key), x)
        grads, (nll, correct, batch_stats) = grad_fn(
            trainable, batch_stats, frozen, x, y, step_key, beta)
        grads = materialize_posterior_gradients(
            lambda g: merge(g, batch_stats, frozen), split, grads, 1.0 + 0.0 * beta)
        grads = apply_masks(grads, masks)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = project(optax.apply_updates(trainable, updates), batch_stats, frozen)
        trainable = apply_masks(trainable, masks)
        return (trainable, batch_stats, opt_state), jnp.stack([nll, correct.astype(jnp.float32)])

    def chunk_sums(trainable, batch_stats, frozen, per_step_sums, steps, beta):
        kl = objectives.total_kl(merge(trainable, batch_stats, frozen))
        nll_sum, correct_sum = per_step_sums[0], per_step_sums[1]
        return jnp.stack([nll_sum + steps * beta * kl / n_train, nll_sum, steps * kl,
                          correct_sum])

    return step, chunk_sums


def make_chunk(graphdef, split: StateSplit, optimizer: optax.GradientTransformation, *,
               n_train: int, loop: str = "scan", augment: Callable | None = None,
               split_batch: Callable | None = None) -> Callable:
    """Return ``chunk(trainable, batch_stats, frozen, opt_state, masks, x_all, y_all,
    batch_index, key, kl_weight) -> (trainable, batch_stats, opt_state, sums)``.

    ``batch_index`` is ``(steps, batch)`` int32 (rows of a permutation); ``key`` is split into
    one noise key per step; ``sums`` is ``[Σ loss, Σ NLL, steps·KL, Σ correct]`` over the chunk
    with the KL of the chunk's final variables (its value is not computed per step), so the
    loss sum is ``Σ NLL + steps·β·KL/N``.

    Args:
        graphdef: Graph definition of the training view (``split.split(view)[0]``).
        split: Which Variables train.
        optimizer: The optax transformation over the trainable state.
        n_train: Training-set size N (the KL is divided by it).
        loop: ``"scan"`` or ``"python"`` (see the module docstring; :func:`choose_loop`).
        augment: Training-time augmentation of each batch (:func:`make_step`), or ``None``.
        split_batch: Spreads each batch over the devices (:func:`make_step`), or ``None``.
    """
    step, chunk_sums = make_step(graphdef, split, optimizer, n_train=n_train, augment=augment,
                                 split_batch=split_batch)
    if loop == "scan":
        return _scan_chunk(step, chunk_sums)
    if loop != "python":
        raise ConfigError(f"unknown trainer.loop {loop!r}; known: auto, scan, python")
    return _python_chunk(step, chunk_sums)


def _scan_chunk(step: Callable, chunk_sums: Callable) -> Callable:
    """The whole chunk as one jitted ``lax.scan``."""

    @xla_options.jit_train_step
    def train_chunk(trainable, batch_stats, frozen, opt_state, masks, x_all, y_all,
                    batch_index, key, beta):
        steps = batch_index.shape[0]
        keys = jax.random.split(key, steps)
        (trainable, batch_stats, opt_state), per_step = jax.lax.scan(
            lambda carry, inputs: step(carry, inputs, frozen, masks, x_all, y_all, beta),
            (trainable, batch_stats, opt_state), (batch_index, keys))
        return trainable, batch_stats, opt_state, chunk_sums(
            trainable, batch_stats, frozen, per_step.sum(0), steps, beta)

    return train_chunk


def _python_chunk(step: Callable, chunk_sums: Callable) -> Callable:
    """One jitted step called in a Python loop (conv models on XLA:CPU)."""
    jitted_step = xla_options.jit_train_step(step)
    split_keys = jax.jit(jax.random.split, static_argnums=1)
    jitted_sums = jax.jit(chunk_sums, static_argnums=4)

    def train_chunk(trainable, batch_stats, frozen, opt_state, masks, x_all, y_all,
                    batch_index, key, beta):
        steps = batch_index.shape[0]
        keys = split_keys(key, steps)
        carry, per_step = (trainable, batch_stats, opt_state), []
        for i in range(steps):
            carry, stats = jitted_step(carry, (batch_index[i], keys[i]), frozen, masks, x_all,
                                       y_all, beta)
            per_step.append(stats)
        return (*carry, jitted_sums(carry[0], carry[1], frozen, jnp.stack(per_step).sum(0),
                                    steps, beta))

    train_chunk.jitted_step = jitted_step  # exposed for compile-count checks
    return train_chunk


def choose_loop(model: nnx.Module, requested: str) -> str:
    """``trainer.loop``: ``"auto"`` is ``"python"`` for conv models on CPU, else ``"scan"``."""
    from bayescomp.nn.conv import VariationalConv

    if requested != "auto":
        return requested
    has_conv = any(isinstance(m, VariationalConv) for _, m in nnx.iter_modules(model))
    return "python" if has_conv and jax.default_backend() == "cpu" else "scan"
