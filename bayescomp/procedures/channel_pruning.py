r"""What the channel-pruning procedures that train per-channel factors share.

Variational CNN pruning (:mod:`bayescomp.procedures.vcnn`) and network slimming
(:mod:`bayescomp.procedures.slimming`) both train a network whose channels carry a factor
(saliency or L1-penalised scale: in its BatchNorms, or, for a network without BatchNorm, in
channel modules after the ReLU), decide per channel group which channels to keep, fold the
factors into a plain network (:mod:`bayescomp.nn.fold`), cut the removed channels out of their
producers and consumers (:func:`bayescomp.pruning.apply_group_masks`), optionally fine-tune the
kept weights, and end in the artifacts every channel method writes (:func:`finish`).

**Which channels are prunable** (``method.prune.groups``), from the model's channel groups
(:mod:`bayescomp.models.graph`):

* ``internal`` (default): the groups written by one weight layer and linked to no other group by
  a zero-padded shortcut: the LeNets' and VGGs' every group, a ResNet's block-internal channels
  (``stage<s>.<b>.conv1``, and ``.conv2`` in a bottleneck). This is what the references prune.
  The reason is the residual stream: its channel c is one index through a whole stage (the stem
  or the widening shortcut, plus every block's branch), and the factor of one BatchNorm on it
  says whether *that block's branch* writes channel c, not whether the stream carries it.
* ``all``: every prunable group with factors, the residual streams included, each as one unit. A
  stream channel is removed only where every factor on it says so (a channel is kept when any
  of its group's factors keeps it: :func:`group_keep`), i.e. the stem and every branch add
  (nearly) nothing to it; and across an option-A shortcut a channel is kept in both streams when
  either keeps it, so that no shortcut carries a kept value into a removed channel or reads a
  removed one (the rule under which a physically smaller ResNet equals the masked one,
  :mod:`bayescomp.models.resnet`).

Groups without a factor (a VGG's dense fc1, which has no BatchNorm) are never pruned.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import DictConfig, OmegaConf, open_dict

from bayescomp import channel_selection, counting, metrics, models, objectives, runs
from bayescomp.compression import quantize as quantize_lib
from bayescomp.errors import ConfigError
from bayescomp.loop import Phase
from bayescomp.models.graph import ChannelGraph, batch_norms, channel_graph
from bayescomp.nn import fold
from bayescomp.nn.norm import NormBias, NormScale
from bayescomp.posteriors.variables import Bias, PointWeight
from bayescomp.pruning import apply_group_masks

log = logging.getLogger(__name__)

TRAIN_PHASE = "train"
FINETUNE_PHASE = "finetune"
GROUP_MODES = ("internal", "all")

#: Settings a rerun of a finished VCNN or slimming run may change: besides the retraining
#: procedures' (:data:`bayescomp.runs.RESUMABLE_CHANGES_RETRAINING`, pruning thresholds
#: included), the multiply-add budget; like a threshold it only decides which channels go, and
#: the fine-tuning of other channels is another phase (:func:`finetune_phase`).
RESUMABLE_CHANGES = runs.RESUMABLE_CHANGES_RETRAINING + ("method.budget.",)

#: What the training phase of a method that prunes after it (VCNN, slimming) may also be resumed
#: under changed: the fine-tuning's settings, which shape only the later phase (whose own
#: checkpoints still compare them, :func:`finetune_phase`). So a finished run can be fine-tuned
#: with other settings without training again (a fine-tuning of the same channels already
#: checkpointed under other settings is refused: delete its ``checkpoints/finetune-*``).
LATER_PHASE_SETTINGS = ("method.finetune", "method.finetune.")


# --------------------------------------------------------------------------------------------
# Settings


def phase_epochs(value, cfg: DictConfig) -> int:
    """A phase's epochs: ``null`` means ``trainer.epochs``."""
    epochs = int(cfg.trainer.epochs if value is None else value)
    if epochs < 0:
        raise ConfigError(f"a phase cannot train {epochs} epochs")
    return epochs


def phase_key(cfg: DictConfig, name: str) -> jax.Array:
    """The phase's random stream, from the seed and the phase's name."""
    return jax.random.fold_in(jax.random.key(int(cfg.seed)), zlib.crc32(name.encode()))


def group_mode(cfg: DictConfig) -> str:
    """``method.prune.groups`` (module docstring), default ``internal``."""
    mode = str((cfg.method.get("prune") or {}).get("groups") or "internal")
    if mode not in GROUP_MODES:
        raise ConfigError(f"method.prune.groups={mode!r} must be one of {', '.join(GROUP_MODES)}")
    return mode


def plain_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the method's normalisation and channel modules removed: the plain network."""
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(plain):
        plain.method.norm = None
        plain.method.channel = None
    return plain


def with_n_train(cfg: DictConfig, n_train: int) -> DictConfig:
    """``cfg`` with ``method.norm.n_train`` and ``method.channel.n_train`` set (slimming's L1 is
    per example: :meth:`bayescomp.priors.laplace.Laplace.matching_l1` needs N)."""
    built = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(built):
        for section in ("norm", "channel"):
            if built.method.get(section):
                built.method[section].n_train = int(n_train)
    return built


# --------------------------------------------------------------------------------------------
# Channel groups and their factors


def prunable_factors(model: nnx.Module, types, mode: str) -> dict[str, dict[str, nnx.Module]]:
    """The per-channel factor modules of each group the method prunes, by module path.

    Args:
        model: The trained network.
        types: The factor modules' classes (a BatchNorm subclass, a channel module class).
        mode: ``internal`` or ``all`` (module docstring).

    Returns:
        ``{group: {module path: module}}`` in the model's group order; groups without a factor
        of ``types`` are left out.
    """
    graph = channel_graph(model)
    norms = batch_norms(model)
    channels = fold.channel_modules(model)
    paths = {id(module): ".".join(str(p) for p in path)
             for path, module in nnx.iter_modules(model)}
    sources = {s.source for g in graph.groups for s in g.shortcuts}
    out = {}
    for group in graph.groups:
        if not group.prunable:
            continue
        if mode == "internal" and (len(group.producers) != 1 or group.shortcuts
                                   or group.name in sources):
            continue
        modules = {path: norms[path] for path in group.norms if isinstance(norms[path], types)}
        module = channels.get(group.name)
        if module is not None and isinstance(module, types):
            modules[paths[id(module)]] = module
        if modules:
            out[group.name] = modules
    if not out:
        raise ConfigError(f"{type(model).__name__} has no channel group the method can prune "
                          f"(method.prune.groups={mode}); it needs BatchNorms or channel modules "
                          "of the method's kind (method.norm.kind / method.channel.kind)")
    return out


def group_keep(graph: ChannelGraph, module_keep: Mapping[str, Mapping[str, np.ndarray]]
               ) -> dict[str, np.ndarray]:
    """One keep vector per group: a channel is kept if any of the group's factors keeps it.

    Across a zero-padded shortcut from S to T (offset o), channel c of S and channel o + c of T
    are then kept together when either is kept (to a fixed point, for chains of stages), see the
    module docstring.
    """
    keep = {group: np.any(np.stack([np.asarray(k, bool) for k in per.values()]), axis=0)
            for group, per in module_keep.items()}
    changed = True
    while changed:
        changed = False
        for target in graph.groups:
            for shortcut in target.shortcuts:
                if target.name not in keep and shortcut.source not in keep:
                    continue
                width = graph.sizes[shortcut.source]
                window = slice(shortcut.offset, shortcut.offset + width)
                source = keep.get(shortcut.source, np.ones(width, bool))
                dest = keep.get(target.name, np.ones(graph.sizes[target.name], bool))
                both = source | dest[window]
                if shortcut.source in keep and (both != keep[shortcut.source]).any():
                    keep[shortcut.source], changed = both.copy(), True
                if target.name in keep and (both != keep[target.name][window]).any():
                    keep[target.name] = keep[target.name].copy()
                    keep[target.name][window] = both
                    changed = True
    return keep


def budget_settings(cfg: DictConfig, default_allocate: str = "global"
                    ) -> tuple[int, str] | None:
    """``(multiply-adds, allocation)`` of ``method.budget``, or ``None`` where no budget is set.

    A budget replaces the method's own threshold (slimming's percent, VCNN's τ): the channels
    are ranked by the same scores and the widest network within the budget is kept
    (:func:`bayescomp.channel_selection.budget_widths`). Only block-internal groups
    (``method.prune.groups=internal``): across a residual coupling a kept channel can bring
    back channels of another group (:func:`group_keep`), which the search could not count.
    """
    budget = cfg.method.get("budget") or {}
    macs = budget.get("macs")
    if macs is None:
        return None
    if group_mode(cfg) != "internal":
        raise ConfigError("method.budget.macs needs method.prune.groups=internal: a residual "
                          "stream pruned as one group can keep channels the budget did not count")
    return macs, str(budget.get("allocate") or default_allocate)


def budget_keep(cfg: DictConfig, plain: nnx.Module, input_shape,
                scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Keep vectors by group for ``method.budget`` (:func:`budget_settings`), or ``None``.

    Args:
        cfg: The run's configuration.
        plain: The network to count (its channel groups and layer shapes).
        input_shape: ``(h, w, c)`` of one example.
        scores: Per group, the non-negative score of each channel (|γ|, |μ|); compared across
            groups as they are (``relative=False``).
    """
    settings = budget_settings(cfg)
    if settings is None:
        return None
    macs, allocate = settings
    widths = channel_selection.budget_widths(
        scores, counting.macs_of_widths(plain, input_shape), macs, allocate, relative=False)
    warn_single_channel_groups(widths, scores)
    return channel_selection.top_k_keep(scores, widths)


def warn_single_channel_groups(widths: Mapping[str, int], scores: Mapping[str, np.ndarray]
                               ) -> None:
    """Log a warning for each group a budget cut to one channel (of more): the network then
    passes one value through that layer, which is rarely what a budget is meant to buy."""
    for group, width in widths.items():
        if width == 1 and np.size(scores[group]) > 1:
            log.warning("the multiply-add budget leaves channel group %s with 1 of its %d "
                        "channels; a larger budget or method.budget.allocate=uniform keeps more",
                        group, np.size(scores[group]))


def check_budget(cfg: DictConfig, model: nnx.Module, input_shape, groups) -> None:
    """Refuse an unreachable ``method.budget`` before anything trains (``groups``: the prunable
    groups with factors); which channels score highest does not change whether one fits."""
    settings = budget_settings(cfg)
    if settings is not None:
        sizes = channel_graph(model).sizes
        channel_selection.budget_widths(
            {group: np.ones(sizes[group]) for group in groups},
            counting.macs_of_widths(model, input_shape), settings[0], settings[1],
            relative=False)


def pruned_masks(model: nnx.Module, keep: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Kernel-shaped keep masks of ``model`` with the channels ``~keep`` removed."""
    full = {name: np.ones(layer.posterior.weight[...].shape, bool)
            for name, layer in objectives.variational_layers(model)}
    return apply_group_masks(model, full, keep)


def apply_masks_in_place(model: nnx.Module, masks: Mapping[str, np.ndarray]) -> None:
    """Zero the removed weights of ``model``'s point kernels."""
    for name, layer in objectives.variational_layers(model):
        kernel = layer.posterior.weight[...]
        layer.posterior.weight[...] = jnp.where(masks[name], kernel, jnp.zeros_like(kernel))


def plain_network(cfg: DictConfig, model: nnx.Module, dataset) -> nnx.Module:
    """The plain network (no channel factors) equal to ``model``'s evaluation view."""
    plain = runs.build_model(plain_config(cfg), dataset.x_train.shape[1:], dataset.num_classes,
                             int(cfg.seed))
    return fold.fold_into(model, plain)


def keep_summary(keep: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Kept widths, kept channel indices and the share of the prunable channels removed."""
    total = sum(int(k.size) for k in keep.values())
    kept = sum(int(k.sum()) for k in keep.values())
    return {
        "widths": {g: int(k.size) for g, k in keep.items()},
        "kept_widths": {g: int(k.sum()) for g, k in keep.items()},
        "kept_channels": {g: np.flatnonzero(k).tolist() for g, k in keep.items()},
        "prunable_channels": total,
        "pruned_channels": total - kept,
        "pruned_fraction": (total - kept) / total if total else 0.0,
    }


# --------------------------------------------------------------------------------------------
# Phases


def phase_name(prefix: str, keep: Mapping[str, np.ndarray]) -> str:
    """``<prefix>-<crc32 of the kept channels>``: a phase that trains these channels only."""
    digest = zlib.crc32(b"".join(np.packbits(np.asarray(keep[g], bool)).tobytes() + g.encode()
                                 for g in sorted(keep)))
    return f"{prefix}-{digest:08x}"


def finetune_phase(cfg: DictConfig, masks: Mapping[str, np.ndarray],
                   keep: Mapping[str, np.ndarray], epochs: int) -> Phase:
    """Fine-tuning of the pruned plain network: its kept weights, biases and BatchNorm γ, β with
    the masks fixed, the run's optimiser (``method.finetune.lr`` replaces its rate if given).

    The phase's checkpoints are named after the kept channels (``finetune-<crc32>``): pruning
    settings may change on a rerun (``method.prune.*`` re-evaluates a finished run), and a
    fine-tuning of other channels must not resume this one.
    """
    settings = cfg.method.get("finetune") or {}
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    if settings.get("lr") is not None:
        optimizer["lr"] = float(settings.lr)
    return Phase(phase_name(FINETUNE_PHASE, keep), epochs, optimizer=optimizer,
                 key=phase_key(cfg, FINETUNE_PHASE),
                 trains=(PointWeight, Bias, NormScale, NormBias), masks=dict(masks))


# --------------------------------------------------------------------------------------------
# The end of a run


def finish(cfg: DictConfig, workdir, *, training, dataset, plain: nnx.Module,
           keep: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], test_error: float,
           final_error: float, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Quantize (float32 point weights), count dense → pruned, and write ``metrics.json``.

    Args:
        cfg: The run's configuration.
        workdir: The run directory.
        training: The run's :class:`~bayescomp.loop.TrainingRun` (closed).
        dataset: The dataset.
        plain: The pruned (masked) plain network, fine-tuned if the run fine-tunes.
        keep: Keep vectors by group.
        masks: Its kernel masks.
        test_error: Test error (%) of the trained network before pruning.
        final_error: Test error (%) of ``plain``.
        extra: The method's entries of ``metrics.json``.
    """
    input_shape = tuple(int(d) for d in dataset.x_train.shape[1:])
    quantized = quantize_lib.quantize(plain, dict(masks), widths=runs.model_widths(cfg))
    quantized_error = training.error(quantize_lib.quantized_model(
        models.get(cfg.model.name), quantized, input_shape=input_shape,
        num_classes=dataset.num_classes))
    dense_count = counting.count(plain, input_shape)
    pruned_count = counting.count(plain, input_shape, keep=dict(keep))
    log.info("pruned network: test error %.2f %% (quantized %.2f %%), %d → %d parameters, "
             "%.3g → %.3g multiply-adds", final_error, quantized_error, dense_count.params,
             pruned_count.params, dense_count.macs, pruned_count.macs)
    return metrics.finish_run(
        cfg, workdir, dataset=dataset, quantized=quantized, history=training.history,
        train_seconds=training.train_seconds,
        images_per_epoch=training.steps_per_epoch * training.batch_size,
        test_error=test_error, pruned_test_error=final_error,
        quantized_test_error=quantized_error, pruning_accounting="structured",
        extra={"pruning_check": None, **dict(extra), "counting": {
            "dense": dense_count.as_dict(), "pruned": pruned_count.as_dict(),
            "params_ratio": dense_count.params / pruned_count.params,
            "macs_ratio": dense_count.macs / pruned_count.macs}})
