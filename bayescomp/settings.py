"""The composed configuration checked once, up front, against a declared schema.

Every procedure calls :func:`check` before it loads data or writes anything, so a wrong value
(``seed=abc``, ``optimizer.lr=-1``, a KL warm-up that ends before it starts) ends the command
with one line naming the key, instead of a traceback after data loading and compilation, or a
run that trains uphill. A new option is checked by declaring it in :data:`SCHEMA`; the optimiser's
own keys are checked by :mod:`bayescomp.optim`, which builds the schedule and the update rule
from them (:func:`bayescomp.optim.check`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bayescomp import objectives
from bayescomp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Number:
    """A real (or, with ``integer``, an integer) value in ``[low, high]`` (``open_low``:
    ``(low, high]``), or ``None`` where ``optional``."""

    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    open_low: bool = False
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.optional else "must be set"
        kind = "an integer" if self.integer else "a number"
        if self.integer and self.low == 1 and self.high == math.inf:
            kind = "a positive integer"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.integer and not isinstance(value, int)):
            return f"must be {kind}"
        if not math.isfinite(value):
            return "must be a finite number"
        below = value <= self.low if self.open_low else value < self.low
        if below or value > self.high:
            if kind == "a positive integer":
                return f"must be {kind}"
            left = "(" if self.open_low else "["
            return f"must be {kind} in {left}{self.low:g}, {self.high:g}]"
        return None


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of ``options``."""

    options: Sequence[str]

    def problem(self, value: Any) -> str | None:
        if value in self.options:
            return None
        return f"must be one of {', '.join(self.options)}"


@dataclasses.dataclass(frozen=True)
class PositiveInts:
    """A list of positive integers, or ``None`` where ``optional``."""

    optional: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.optional else "must be set"
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if (not isinstance(value, (list, tuple)) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
            return "must be a non-empty list of positive integers (or null)"
        return None


POSITIVE_INT = Number(low=1, integer=True)

#: Dotted key -> what its value must be. Keys absent from a configuration are not checked (a
#: method without ``prune`` has no threshold).
SCHEMA = {
    "seed": Number(low=0, high=2**32 - 1, integer=True),
    "trainer.epochs": POSITIVE_INT,
    "trainer.batch_size": POSITIVE_INT,
    "trainer.eval_batch_size": POSITIVE_INT,
    "trainer.chunk_steps": POSITIVE_INT,
    "trainer.pruned_eval_every": POSITIVE_INT,
    "trainer.kl_warmup.start_epoch": Number(low=0),
    "trainer.kl_warmup.end_epoch": Number(low=0),
    "trainer.loop": Choice(("auto", "scan", "python")),
    "trainer.batch_norm.momentum": Number(low=0, high=1),
    "trainer.batch_norm.epsilon": Number(low=0, open_low=True),
    "method.prune.threshold": Number(optional=True),
    # Threshold selection (bayescomp/threshold_selection.py) and the check of fixed thresholds.
    "method.prune.select.tolerance": Number(low=0),
    "method.bits.tolerance": Number(low=0),
    "method.prune.select.examples": POSITIVE_INT,
    "method.prune.max_error_rise": Number(low=0),
    # Deep Compression (conf/method/dc.yaml): null epochs mean trainer.epochs.
    "method.prune_rounds": POSITIVE_INT,
    "method.retrain.epochs": Number(low=0, integer=True, optional=True),
    "method.retrain.lr": Number(low=0),
    "method.retrain.bias_lr": Number(low=0),
    "method.retrain.decay_start": Number(low=0, high=1),
    "method.quantize.kmeans_iterations": POSITIVE_INT,
    "method.quantize.finetune.epochs": Number(low=0, integer=True, optional=True),
    "method.quantize.finetune.lr": Number(low=0),
    "method.quantize.finetune.bias_lr": Number(low=0),
    "method.quantize.finetune.decay_start": Number(low=0, high=1),
    # Channel modules (bayescomp/nn/factory.py: LayerFactory.channel) and Dirichlet pruning
    # (conf/method/dirichlet.yaml): null epochs mean trainer.epochs.
    "method.channel.kind": Choice(("dirichlet", "vcnn", "slimming")),
    # Variational CNN pruning and network slimming (conf/method/vcnn.yaml, slimming.yaml).
    "method.norm.kind": Choice(("vcnn", "slimming")),
    "method.prune.tau": Number(low=0),
    "method.prune.theta": Number(low=0, optional=True),
    "method.prune.percent": Number(low=0, high=0.999999),
    "method.prune.groups": Choice(("internal", "all")),
    "method.prune.statistic": Choice(("mean", "snr")),
    "method.finetune.epochs": Number(low=0, integer=True, optional=True),
    "method.finetune.lr": Number(low=0, open_low=True, optional=True),
    "method.channel.alpha0": Number(low=0, open_low=True),
    "method.channel.init_logit": Number(),
    "method.channel.mode": Choice(("integral", "point")),
    "method.switches.epochs": Number(low=0, integer=True, optional=True),
    "method.switches.lr": Number(low=0, open_low=True),
    "method.switches.anneal_epochs": Number(low=0, integer=True, optional=True),
    "method.widths": PositiveInts(optional=True),
    "method.mass": Number(low=0, high=1, open_low=True, optional=True),
    "method.keep_fraction": Number(low=0, high=1, open_low=True, optional=True),
    "method.budget.macs": Number(low=1, integer=True, optional=True),
    "method.budget.allocate": Choice(("uniform", "global")),
}

#: Mappings of numbers: every value must satisfy the rule (per-layer settings).
PER_LAYER = {
    "method.prune.per_layer": Number(),
    "method.keep": Number(low=0, high=1, open_low=True),
}


def check(cfg: DictConfig) -> None:
    """Refuse a configuration that cannot describe a run, naming the first bad key.

    Raises:
        ConfigError: A value of :data:`SCHEMA` is of the wrong type or out of range, the KL
            warm-up ends before it starts, a per-layer threshold is not a number,
            ``method.prune.select`` is neither null nor ``{tolerance, examples}``,
            ``method.bits`` neither null nor ``{tolerance}``, or the
            optimiser's settings are invalid (:func:`bayescomp.optim.check`).
    """
    from bayescomp import optim  # late: optim imports the model stack

    _check_select(cfg)
    _check_bits(cfg)
    for key, rule in SCHEMA.items():
        node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if node is _ABSENT:
            continue
        problem = rule.problem(node)
        if problem is not None:
            raise ConfigError(f"{key}={node!r} {problem}")
    warmup = cfg.trainer.get("kl_warmup")
    epochs = int(cfg.trainer.epochs)
    if warmup is not None and (objectives.warmup_epoch(warmup.end_epoch, epochs)
                               < objectives.warmup_epoch(warmup.start_epoch, epochs)):
        raise ConfigError(f"trainer.kl_warmup ends (end_epoch={warmup.end_epoch}) before it "
                          f"starts (start_epoch={warmup.start_epoch}) in a {epochs}-epoch run; "
                          "set end_epoch >= start_epoch (equal: a step from 0 to 1; values in "
                          "(0, 1) are fractions of the run)")
    for key, rule in PER_LAYER.items():
        mapping = OmegaConf.select(cfg, key, default=None) or {}
        for layer, value in dict(mapping).items():
            problem = rule.problem(value)
            if problem is not None:
                raise ConfigError(f"{key}.{layer}={value!r} {problem}")
    optim.check(OmegaConf.to_container(cfg.optimizer, resolve=True), int(cfg.trainer.epochs))


_ABSENT = object()

#: The keys of ``method.prune.select`` (:mod:`bayescomp.threshold_selection`).
SELECT_KEYS = ("tolerance", "examples")


def _check_select(cfg: DictConfig) -> None:
    """``method.prune.select`` is null (fixed thresholds) or ``{tolerance, examples}``."""
    _check_tolerance_setting(
        cfg, "method.prune.select", SELECT_KEYS,
        "null (the fixed thresholds method.prune.threshold / per_layer) or "
        "{tolerance: POINTS, examples: N} (thresholds chosen on training data)")


def _check_bits(cfg: DictConfig) -> None:
    """``method.bits`` is null (the posterior rule's bits) or ``{tolerance: PERCENT}``
    (:mod:`bayescomp.bit_selection`); its number is checked with :data:`SCHEMA`."""
    _check_tolerance_setting(
        cfg, "method.bits", ("tolerance",),
        "null (the posterior rule's bits) or {tolerance: PERCENT} (bits raised until "
        "rounding changes at most PERCENT % of the training subset's predictions)")


def _check_tolerance_setting(cfg: DictConfig, key: str, allowed: tuple[str, ...],
                             usage: str) -> None:
    """``key`` is null or a mapping of ``allowed`` keys with its ``tolerance`` set."""
    node = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{key}={node!r} must be {usage}")
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown}; it must be {usage}")
    if node.get("tolerance") is None:
        raise ConfigError(f"{key}.tolerance must be set: it must be {usage}")
