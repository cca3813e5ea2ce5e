r"""Optimisers and learning-rate schedules from the ``optimizer`` configuration group.

``make_optimizer(cfg, params, total_steps=..., steps_per_epoch=...)`` builds Adam or SGD with a
learning-rate schedule, optional warm-up, optional weight decay on chosen Variable types and
optional per-group learning rates; ``learning_rate_schedule`` builds the schedule alone.

Weight decay comes in two kinds:

* **L2 regularisation, coupled** (used here): the gradient of :math:`\tfrac{\lambda}{2}\lVert
  w\rVert^2` is added to the loss gradient before the optimiser sees it,

  .. math:: g_t \leftarrow g_t + \lambda\, w_{t-1},

  so the decay term goes through momentum and, in Adam, through the moment estimates and the
  :math:`1/(\sqrt{\hat v_t}+\epsilon)` preconditioning. This is what ``weight_decay`` means in
  PyTorch's ``torch.optim.SGD`` and ``torch.optim.Adam``.
* **Decoupled weight decay** (AdamW; Loshchilov & Hutter, "Decoupled Weight Decay
  Regularization", ICLR 2019): :math:`w_t = w_{t-1} - \eta_t(\text{update}_t + \lambda
  w_{t-1})`, the decay bypassing the moments. For plain SGD without momentum the two coincide;
  with momentum, and above all with Adam, they do not.

The coupled form is used because the reference CIFAR recipes this project reproduces (VGG and
ResNet trained with PyTorch's SGD, weight decay 5e-4 or 1e-4) are written with it; the same
λ in the decoupled form would be a different regulariser and would not reproduce their accuracy.

Decay is selected by Variable type only (:data:`DECAY_GROUPS`), never by parameter name:
log-variances, group and global scale parameters and batch statistics are never decayed.

With ``name: adam``, no weight decay, no warm-up and no per-group learning rates,
:func:`make_optimizer` returns exactly ``optax.adam(schedule, b1, b2, eps)`` with the same
schedule as before this module existed, so results obtained with the old hard-coded optimiser
are reproduced bit for bit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx import filterlib

from bayescomp.errors import ConfigError, unknown_name_error
from bayescomp.nn.norm import NormBias, NormScale
from bayescomp.posteriors.variables import Bias, PointWeight, PosteriorMean

DECAY_GROUPS: dict[str, tuple[type, ...]] = {
    "weights": (PointWeight, PosteriorMean),
    "biases": (Bias,),
    "norm": (NormScale, NormBias),
}
"""Weight-decay groups (``optimizer.decay``): a parameter decays iff its Variable is an
instance of one of the selected groups' types."""

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "linear_decay", "multistep", "cosine")


# --------------------------------------------------------------------------------------------
# Reading and checking configuration values


def _bad(key: str, value: Any, problem: str, remedy: str) -> ConfigError:
    """One-line error naming the key, its value, what is wrong and what to do."""
    return ConfigError(f"optimizer.{key}={value!r} {problem}; {remedy}")


def _real(cfg: Mapping, key: str, default: Any) -> float:
    """``cfg[key]`` (or ``default``) as a finite float, else a :class:`ConfigError`."""
    value = cfg.get(key, default)
    # bool is an int subclass; `momentum: true` is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(key, value, "is not a number", "give a number")
    value = float(value)
    if not math.isfinite(value):
        raise _bad(key, value, "is not finite", "give a finite number")
    return value


def _check_lr(key: str, lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr):
        raise ConfigError(f"{key}={lr!r} is not a finite number; give a learning rate >= 0")
    if lr < 0:
        raise ConfigError(f"{key}={lr!r} is negative; give a learning rate >= 0")
    return float(lr)


def _warmup_steps(cfg: Mapping, total_steps: int, steps_per_epoch: int) -> int:
    warmup_epochs = _real(cfg, "warmup_epochs", 0.0)
    if warmup_epochs < 0:
        raise _bad("warmup_epochs", warmup_epochs, "is negative", "give 0 (no warm-up) or more")
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if warmup > 0 and warmup >= total_steps:
        raise _bad("warmup_epochs", cfg.get("warmup_epochs"),
                   f"leaves no step after the warm-up ({warmup} of {total_steps} steps)",
                   "shorten the warm-up or train longer")
    return warmup


def _milestone_steps(cfg: Mapping, total_steps: int, steps_per_epoch: int,
                     warmup: int) -> list[int]:
    """The multistep boundaries in steps of the whole run (see :func:`learning_rate_schedule`)."""
    milestones = cfg.get("milestones")
    remedy = ("give an increasing list of fractions of the run in (0, 1) or integer epochs >= 1, "
              "e.g. [0.5, 0.75]")
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence) \
            or len(milestones) == 0:
        raise _bad("milestones", milestones, "is not a non-empty list", remedy)
    steps = []
    for m in milestones:
        if isinstance(m, bool) or not isinstance(m, numbers.Real) or not math.isfinite(m):
            raise _bad("milestones", list(milestones), f"holds {m!r}, not a number", remedy)
        if 0 < m < 1:
            steps.append(int(round(m * total_steps)))
        elif m >= 1 and float(m).is_integer():
            steps.append(int(m) * steps_per_epoch)
        else:
            raise _bad("milestones", list(milestones),
                       f"holds {m!r}, neither a fraction in (0, 1) nor an integer epoch >= 1",
                       remedy)
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise _bad("milestones", list(milestones),
                   f"is not strictly increasing (steps {steps})", remedy)
    if steps[0] <= warmup or steps[-1] >= total_steps:
        raise _bad("milestones", list(milestones),
                   f"falls outside the run after the warm-up (steps {steps}; warm-up {warmup} "
                   f"steps, {total_steps} steps in all)", remedy)
    return steps


# --------------------------------------------------------------------------------------------
# Schedules


def _warmup_schedule(lr: float, warmup: int) -> optax.Schedule:
    def schedule(step):
        # (step + 1) rather than step: the first update already moves, and the last warm-up
        # step reaches the peak, which the main schedule then starts from.
        return lr * (jnp.asarray(step, jnp.float32) + 1.0) / warmup

    return schedule


def _multistep_schedule(lr: float, boundaries: Sequence[int], factor: float) -> optax.Schedule:
    # Values from Python floats, not a running product in float32, so lr·factor^k is the
    # correctly rounded value at every k.
    values = jnp.asarray([lr * factor ** k for k in range(len(boundaries) + 1)], jnp.float32)
    bounds = jnp.asarray(boundaries, jnp.int32)

    def schedule(step):
        # `>=`: the milestone step itself already runs at the lowered rate, as PyTorch's
        # MultiStepLR does from the first step of the milestone epoch (optax's
        # piecewise_constant_schedule lowers it one step later).
        return values[jnp.sum(jnp.asarray(step) >= bounds)]

    return schedule


def _cosine_schedule(lr: float, steps: int, final_fraction: float) -> optax.Schedule:
    steps = max(1, steps)

    def schedule(step):
        t = jnp.minimum(jnp.asarray(step, jnp.float32), steps) / steps
        return lr * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * t)))

    return schedule


def learning_rate_schedule(lr: float, cfg: Mapping, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
    r"""Learning-rate schedule over the optimisation steps of a run.

    Steps are counted from 0 (the first update, optax's ``count``). With a warm-up of
    :math:`W = \operatorname{round}(\text{warmup\_epochs}\cdot\text{steps\_per\_epoch})` steps,
    step :math:`s < W` uses :math:`\eta\,(s+1)/W`: the line from 0 (at step −1) to
    :math:`\eta`, so the first update already runs at :math:`\eta/W` and step :math:`W-1` at
    :math:`\eta` (PyTorch's ``LinearLR(start_factor=1/W, total_iters=W-1)``). Step
    :math:`s \ge W` uses the schedule below at its step :math:`t = s - W` of
    :math:`T' = T - W` steps (:math:`T` = ``total_steps``):

    * ``constant``: :math:`\eta`.
    * ``linear_decay``: :math:`\eta` until :math:`F = \operatorname{round}(\text{decay\_start}
      \cdot T')`, then linearly to 0 at the end: :math:`\eta\,(1 - (t-F)/\max(1, T'-F))`.
      Without warm-up this is bit-identical to the schedule used before this module (Sparse VD's
      LeNet-300-100 recipe: ``decay_start=0.5``; LeNet-5: ``decay_start=0``).
    * ``multistep``: :math:`\eta\cdot\text{factor}^k` after the :math:`k`-th milestone (PyTorch's
      ``MultiStepLR``). A milestone in (0, 1) is a fraction of the *whole* run,
      :math:`\operatorname{round}(m\,T)`; an integer :math:`m \ge 1` is an epoch,
      :math:`m\cdot\text{steps\_per\_epoch}`. Unlike the other schedules, milestones are positions
      in the whole run, warm-up included (epoch 80 is epoch 80 with or without warm-up), and
      the rate is lowered from the milestone step itself on.
    * ``cosine``: :math:`\eta_{\min} + (\eta - \eta_{\min})\,\tfrac12\,(1 + \cos(\pi t/T'))`
      with :math:`\eta_{\min} = \text{final\_lr\_fraction}\cdot\eta` (Loshchilov & Hutter,
      "SGDR", ICLR 2017, without restarts), held at :math:`\eta_{\min}` after :math:`T'`.

    Args:
        lr: Peak learning rate :math:`\eta \ge 0`.
        cfg: The ``optimizer`` mapping: ``schedule`` (default ``constant``), ``warmup_epochs``
            (default 0, may be fractional), ``decay_start`` (``linear_decay``, in [0, 1),
            default 0), ``milestones`` and ``factor`` (``multistep``, factor default 0.1),
            ``final_lr_fraction`` (``cosine``, in [0, 1], default 0).
        total_steps: Optimisation steps in the whole run (:math:`T \ge 0`).
        steps_per_epoch: Steps per epoch (≥ 1), for ``warmup_epochs`` and epoch milestones.

    Returns:
        An optax schedule, step count -> learning rate.

    Raises:
        ConfigError: An unknown schedule or an invalid value, named by its key.
    """
    total_steps, steps_per_epoch = int(total_steps), int(steps_per_epoch)
    if total_steps < 0 or steps_per_epoch < 1:
        raise ValueError(f"need total_steps >= 0 and steps_per_epoch >= 1, got {total_steps} "
                         f"and {steps_per_epoch}")
    lr = _check_lr("optimizer.lr", lr)
    name = cfg.get("schedule", "constant")
    if name not in SCHEDULES:
        raise ConfigError(
            f"optimizer.schedule: {unknown_name_error('learning-rate schedule', name, SCHEDULES)}")
    warmup = _warmup_steps(cfg, total_steps, steps_per_epoch)
    steps = total_steps - warmup

    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "linear_decay":
        decay_start = _real(cfg, "decay_start", 0.0)
        if not 0.0 <= decay_start < 1.0:
            raise _bad("decay_start", decay_start, "is outside [0, 1)",
                       "give the fraction of training after which the rate decays, e.g. 0.5")
        # Built exactly as before this module (same optax calls, same rounding) so that runs
        # without warm-up keep their learning rates bit for bit.
        flat_steps = int(round(decay_start * steps))
        main = optax.join_schedules(
            [optax.constant_schedule(lr),
             optax.linear_schedule(lr, 0.0, max(1, steps - flat_steps))],
            [flat_steps])
    elif name == "multistep":
        factor = _real(cfg, "factor", 0.1)
        if factor <= 0:
            raise _bad("factor", factor, "is not positive", "give the multiplier per milestone, "
                       "e.g. 0.1")
        boundaries = _milestone_steps(cfg, total_steps, steps_per_epoch, warmup)
        main = _multistep_schedule(lr, [b - warmup for b in boundaries], factor)
    else:
        final_fraction = _real(cfg, "final_lr_fraction", 0.0)
        if not 0.0 <= final_fraction <= 1.0:
            raise _bad("final_lr_fraction", final_fraction, "is outside [0, 1]",
                       "give the final rate as a fraction of lr, e.g. 0")
        main = _cosine_schedule(lr, steps, final_fraction)

    if warmup == 0:
        return main
    return optax.join_schedules([_warmup_schedule(lr, warmup), main], [warmup])


# --------------------------------------------------------------------------------------------
# Optimisers


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _path_parts(path: tuple) -> tuple:
    """A JAX key path as nnx path parts (the keys and indices alone)."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(getattr(key, attr))
                break
        else:
            parts.append(str(key))
    return tuple(parts)


def _leaf_label_tree(params: Any, label_fn) -> Any:
    """``params`` with every Variable (or bare array) replaced by ``label_fn(path, leaf)``.

    The result is a *prefix* of ``params`` (a Variable is a pytree node holding its array), which
    is what ``optax.masked`` and ``optax.multi_transform`` accept as masks and labels.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: label_fn(_path_parts(path), leaf), params, is_leaf=_is_variable)


def _base_optimizer(cfg: Mapping, name: str):
    """``lr_or_schedule -> GradientTransformation`` for ``name`` with ``cfg``'s hyperparameters,
    checked now so that bad values fail before any parameter is labelled."""
    if name == "adam":
        b1, b2 = _real(cfg, "b1", 0.9), _real(cfg, "b2", 0.999)
        eps = _real(cfg, "eps", 1e-8)
        for key, value in (("b1", b1), ("b2", b2)):
            if not 0.0 <= value < 1.0:
                raise _bad(key, value, "is outside [0, 1)",
                           "give an exponential decay rate, e.g. b1=0.9, b2=0.999")
        if eps <= 0:
            raise _bad("eps", eps, "is not positive", "give a small positive number, e.g. 1e-8")
        return lambda lr: optax.adam(lr, b1=b1, b2=b2, eps=eps)
    momentum = _real(cfg, "momentum", 0.9)
    if not 0.0 <= momentum < 1.0:
        raise _bad("momentum", momentum, "is outside [0, 1)",
                   "give e.g. 0.9 (0 for plain SGD)")
    nesterov = cfg.get("nesterov", False)
    if not isinstance(nesterov, bool):
        raise _bad("nesterov", nesterov, "is not true or false", "give true or false")
    if nesterov and momentum == 0:
        raise _bad("nesterov", nesterov, "needs momentum > 0",
                   "set optimizer.momentum (e.g. 0.9) or optimizer.nesterov=false")
    # optax.trace is PyTorch's momentum with dampening 0: v <- mu v + g; step = v, or g + mu v
    # with Nesterov. momentum=None skips the trace (same numbers as mu = 0, one state less).
    return lambda lr: optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)


def _decay_types(cfg: Mapping) -> tuple[type, ...]:
    groups = cfg.get("decay", ["weights"])
    known = ", ".join(DECAY_GROUPS)
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise _bad("decay", groups, "is not a list", f"give a list of groups out of: {known}")
    types: tuple[type, ...] = ()
    for group in groups:
        if group not in DECAY_GROUPS:
            raise _bad("decay", list(groups), f"names the unknown group {group!r}",
                       f"known groups: {known}")
        types += DECAY_GROUPS[group]
    return types


def _checked(cfg: Mapping, total_steps: int, steps_per_epoch: int):
    """Every setting of ``cfg`` checked: ``(base optimiser, λ, decayed types, schedule)``."""
    name = cfg.get("name")
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name: {unknown_name_error('optimizer', name, OPTIMIZERS)}")
    optimizer = _base_optimizer(cfg, name)
    weight_decay = _real(cfg, "weight_decay", 0.0)
    if weight_decay < 0:
        raise _bad("weight_decay", weight_decay, "is negative",
                   "give the L2 coefficient λ >= 0 (0: no decay)")
    decay_types = _decay_types(cfg)
    peak = _check_lr("optimizer.lr", cfg.get("lr"))
    schedule = learning_rate_schedule(peak, cfg, total_steps, steps_per_epoch)
    return optimizer, weight_decay, decay_types, schedule


#: Steps per epoch assumed by :func:`check`, before the dataset (and so the real number) is
#: known: large enough that fractions of the run and epoch milestones fall on distinct steps.
NOMINAL_STEPS_PER_EPOCH = 1000


def check(cfg: Mapping, epochs: int) -> None:
    """Check the ``optimizer`` settings of a run of ``epochs`` epochs before any data is loaded.

    The same checks as :func:`make_optimizer`, at :data:`NOMINAL_STEPS_PER_EPOCH`, and a run-wide
    learning rate must be positive (0 trains nothing; a per-group rate of 0, which freezes a
    group, is a procedure's choice, not a setting).

    Raises:
        ConfigError: The first invalid setting, named by its key.
    """
    lr = cfg.get("lr")
    if not isinstance(lr, bool) and isinstance(lr, numbers.Real) and lr == 0:
        raise ConfigError("optimizer.lr=0 trains nothing; give a learning rate > 0")
    _checked(cfg, int(epochs) * NOMINAL_STEPS_PER_EPOCH, NOMINAL_STEPS_PER_EPOCH)


def make_optimizer(cfg: Mapping, params: nnx.State, *, total_steps: int, steps_per_epoch: int,
                   learning_rates: Sequence[tuple[Any, float]] | None = None
                   ) -> optax.GradientTransformation:
    r"""The optimiser of the ``optimizer`` configuration group.

    Updates, for gradient :math:`g_t` and parameters :math:`w_{t-1}` at step :math:`t \ge 1`
    (learning rate :math:`\eta_t` from :func:`learning_rate_schedule` at count :math:`t-1`):

    * L2 weight decay (only parameters of the selected types): :math:`g_t \leftarrow g_t +
      \lambda w_{t-1}` before anything else (PyTorch's ``weight_decay``; module docstring).
    * ``sgd`` (``torch.optim.SGD``, dampening 0): :math:`v_t = \mu v_{t-1} + g_t`,
      :math:`w_t = w_{t-1} - \eta_t v_t`; with ``nesterov``, :math:`w_t = w_{t-1} - \eta_t
      (g_t + \mu v_t)`.
    * ``adam`` (Kingma & Ba, ICLR 2015; ``torch.optim.Adam``): :math:`m_t = \beta_1 m_{t-1} +
      (1-\beta_1) g_t`, :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`, :math:`w_t = w_{t-1} -
      \eta_t\,\hat m_t / (\sqrt{\hat v_t} + \epsilon)` with :math:`\hat m_t = m_t/(1-\beta_1^t)`,
      :math:`\hat v_t = v_t/(1-\beta_2^t)`.

    Args:
        cfg: The ``optimizer`` mapping (``OmegaConf.to_container`` of ``cfg.optimizer``, or a
            dict): ``name`` (``adam`` | ``sgd``), ``lr``; adam: ``b1``, ``b2``, ``eps``
            (default 1e-8); sgd: ``momentum`` (default 0.9), ``nesterov`` (default false);
            ``weight_decay`` (λ, default 0), ``decay`` (:data:`DECAY_GROUPS` names, default
            ``[weights]``); the schedule keys of :func:`learning_rate_schedule`.
        params: The parameters the optimiser will be initialised with, an ``nnx.State`` whose
            leaves are ``nnx.Variable``\ s (e.g. ``nnx.split(model, nnx.Param, ...)[1]``). Only
            their tree structure and Variable types are used: weight-decay masks and group labels
            are computed from them once, as trees of labels with one entry per Variable, a prefix
            of ``params``. ``init`` and ``update`` must therefore be given trees of this same
            structure (gradients from ``jax.grad`` with respect to ``params`` are).
        total_steps: Optimisation steps in the whole run.
        steps_per_epoch: Steps per epoch (warm-up and epoch milestones).
        learning_rates: Optional ``(filter, lr)`` pairs, one per parameter group: ``filter`` is
            an nnx filter (a Variable type, a tuple of types, a path predicate, anything
            ``nnx.filterlib.to_predicate`` takes; it is called as ``(path, variable)``). Each
            parameter belongs to the first group whose filter it matches and gets the same
            optimiser and schedule shape at that group's peak rate; a rate of 0 freezes the
            group (``optax.set_to_zero``). ``None``: ``cfg["lr"]`` for every parameter.

    Returns:
        An optax gradient transformation. For ``adam`` with ``weight_decay`` 0, no warm-up and
        no ``learning_rates`` it is exactly ``optax.adam(schedule, b1=b1, b2=b2, eps=eps)``.

    Raises:
        ConfigError: An unknown optimiser, schedule or decay group, an invalid value (named by
            its key), a parameter that matches none of ``learning_rates``, or weight decay that
            selects no parameter.
    """
    optimizer, weight_decay, decay_types, schedule = _checked(cfg, total_steps, steps_per_epoch)

    if learning_rates is None:
        transform = optimizer(schedule)
    else:
        transform = _grouped(optimizer, cfg, params, total_steps, steps_per_epoch, learning_rates)

    if weight_decay == 0:
        # No extra transform: the plain-Adam path must stay bit-identical to optax.adam.
        return transform
    mask = _leaf_label_tree(params, lambda _, leaf: isinstance(leaf, decay_types))
    if not any(jax.tree.leaves(mask)):
        raise _bad("weight_decay", weight_decay,
                   f"applies to no parameter: none is of the types of optimizer.decay="
                   f"{list(cfg.get('decay', ['weights']))} "
                   f"({', '.join(t.__name__ for t in decay_types) or 'none'})",
                   "choose other groups or set optimizer.weight_decay=0 (params must be an "
                   "nnx.State of Variables, not a pure dict)")
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=mask), transform)


def _grouped(optimizer, cfg: Mapping, params: nnx.State, total_steps: int, steps_per_epoch: int,
             learning_rates: Sequence[tuple[Any, float]]) -> optax.GradientTransformation:
    """``optax.multi_transform`` of one optimiser per group of ``learning_rates``."""
    if len(learning_rates) == 0:
        raise ConfigError("learning_rates is empty; give at least one (filter, lr) pair or None")
    predicates, rates = [], []
    for i, (flt, lr) in enumerate(learning_rates):
        predicates.append(filterlib.to_predicate(flt))
        rates.append(_check_lr(f"learning_rates[{i}] (filter {flt!r})", lr))
    unmatched = []

    def label(path, leaf):
        for i, predicate in enumerate(predicates):
            if predicate(path, leaf):
                return f"group{i}"
        unmatched.append(f"{'/'.join(map(str, path))} ({type(leaf).__name__})")
        return None

    labels = _leaf_label_tree(params, label)
    if unmatched:
        raise ConfigError(f"learning_rates: no filter matches {len(unmatched)} parameter(s), "
                          f"e.g. {', '.join(unmatched[:3])}; add a group for them (rate 0 "
                          "freezes it)")
    used = set(jax.tree.leaves(labels))
    transforms = {}
    for i, lr in enumerate(rates):
        if f"group{i}" not in used:
            continue  # a filter that matches nothing adds no (empty) optimiser state
        transforms[f"group{i}"] = optax.set_to_zero() if lr == 0 else optimizer(
            learning_rate_schedule(lr, cfg, total_steps, steps_per_epoch))
    return optax.multi_transform(transforms, labels)
