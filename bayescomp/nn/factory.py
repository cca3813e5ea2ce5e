"""Layer factories: how a method hands its layers to a model.

A model is written once and asks a :class:`LayerFactory` for each layer by name
(``layers.dense("fc1", 784, 300, rngs=rngs)``). The factory, built from the method's config,
decides the posterior, the prior and the pruning threshold, so ``model=lenet5 method=svd`` and
``model=lenet5 method=dense`` share the model code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from flax import nnx

from bayescomp import posteriors, priors
from bayescomp.errors import ConfigError
from bayescomp.nn.conv import VariationalConv
from bayescomp.nn.dense import VariationalDense
from bayescomp.nn.norm import BatchNorm

#: The channel modules a method may ask for (``method.channel.kind``).
CHANNEL_KINDS = ("dirichlet", "vcnn", "slimming")

#: The normalisations a method may ask for (``method.norm.kind``); without one, BatchNorm.
NORM_KINDS = ("vcnn", "slimming")


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Builds the variational layers of one method.

    Args:
        posterior: Posterior registry key (``bayescomp.posteriors.REGISTRY``).
        prior: Prior registry key (``bayescomp.priors.REGISTRY``).
        prior_kwargs: Prior hyperparameters.
        posterior_kwargs: Posterior initialisation options.
        threshold: Default pruning threshold on log α (``None``: never prune).
        layer_thresholds: Per-layer overrides, by layer name.
        layer_posterior_kwargs: Per-layer posterior options merged over ``posterior_kwargs``,
            by layer name (e.g. ``{"fc1": {"max_weight_var": 0.04}}``).
        norm_momentum: Weight of the new batch in BatchNorm running averages (PyTorch's
            convention; ``trainer.batch_norm.momentum``).
        norm_epsilon: BatchNorm's variance epsilon.
        channel_settings: The per-channel module of the method (``method.channel``), e.g.
            ``{"kind": "dirichlet", "alpha0": 2.0, "init_logit": -1.0, "mode": "integral"}``
            (:meth:`channel`); empty for every method without one.
        norm_settings: The method's normalisation (``method.norm``), e.g. ``{"kind": "vcnn",
            "prior": "tied_gaussian"}`` (:meth:`norm`); empty for plain BatchNorm.
        prune_streams: The method prunes residual streams too (``method.prune.groups=all``),
            so their BatchNorms carry its channel saliencies (:meth:`norm`).
    """

    posterior: str = "delta"
    prior: str = "flat"
    prior_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    posterior_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    threshold: float | None = None
    layer_thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    layer_posterior_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=dict)
    norm_momentum: float = 0.1
    norm_epsilon: float = 1e-5
    channel_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    norm_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prune_streams: bool = False

    def _common(self, name: str) -> dict:
        return dict(
            posterior_cls=posteriors.get(self.posterior),
            prior=priors.get(self.prior, **dict(self.prior_kwargs)),
            posterior_kwargs={**self.posterior_kwargs,
                              **dict(self.layer_posterior_kwargs.get(name, {}))},
            prune_threshold=self.layer_thresholds.get(name, self.threshold),
        )

    def dense(self, name: str, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        """A :class:`VariationalDense` layer named ``name`` (the name selects its threshold)."""
        return VariationalDense(in_features, out_features, rngs=rngs, **self._common(name))

    def conv(self, name: str, in_features: int, out_features: int, kernel_size: Sequence[int],
             *, rngs: nnx.Rngs, strides: Sequence[int] = (1, 1),
             padding: str | Sequence[tuple[int, int]] = "VALID",
             input_is_normalized: bool = False):
        """A :class:`VariationalConv` layer named ``name``.

        ``padding`` is ``"VALID"``, ``"SAME"`` or explicit ``(low, high)`` pairs per spatial axis
        (PyTorch's symmetric ``padding=1`` is ``((1, 1), (1, 1))``; at stride 2 it differs from
        ``"SAME"``, which pads only the high side). ``input_is_normalized``: the conv reads the
        output of a BatchNorm (and ReLU, residual add), which selects its CPU kernel-gradient
        form (:class:`VariationalConv`); the values are the same either way.
        """
        return VariationalConv(in_features, out_features, kernel_size, rngs=rngs,
                               strides=strides, padding=padding,
                               input_is_normalized=input_is_normalized, **self._common(name))

    def norm(self, name: str, features: int, *, stream: bool = False):
        """The method's BatchNorm over ``features`` channels named ``name``.

        ``method.norm.kind`` absent (every method but the two below): a plain
        :class:`~bayescomp.nn.norm.BatchNorm`, the network every such method always built.

        * ``vcnn``: a :class:`~bayescomp.nn.saliency_norm.SaliencyBatchNorm`, y = γ(x̂ + β̃) with
          q(γ) = N(μ, σ²) (Zhao et al., "Variational Convolutional Neural Network Pruning",
          CVPR 2019), settings as :func:`saliency_settings` reads them. Only on channels the
          method can prune: a BatchNorm on a residual stream (``stream``, a group the model
          joins by shortcuts) gets a plain BatchNorm unless streams are pruned too
          (``prune_streams``). A saliency is sampled in every training step and pulled
          towards zero by its KL (ResNet-20 at the start: μ²/(2σ²) = 200 nats per channel,
          1.4 nats per training example over the 352 stream channels); on a channel that is
          never removed that is noise and a penalty on the network's accuracy, nothing else;
        * ``slimming``: a :class:`~bayescomp.nn.slimming_norm.SlimmingBatchNorm`, L1 s·Σ|γ| as a
          Laplace prior (Liu et al., "Learning Efficient Convolutional Networks through Network
          Slimming", ICCV 2017), settings as :func:`laplace_settings` reads them. On every
          BatchNorm, streams included, as the paper's code penalises every BatchNorm's scale; a
          point scale adds no noise where it is never pruned.
        """
        del name  # one setting for every BatchNorm
        settings = dict(self.norm_settings)
        kind = settings.pop("kind", None)
        common = {"momentum": self.norm_momentum, "epsilon": self.norm_epsilon}
        if kind is None:
            return BatchNorm(features, **common)
        if kind == "vcnn":
            if stream and not self.prune_streams:
                return BatchNorm(features, **common)
            from bayescomp.nn.saliency_norm import SaliencyBatchNorm

            return SaliencyBatchNorm(features, **saliency_settings(settings), **common)
        if kind == "slimming":
            from bayescomp.nn.slimming_norm import INIT_SCALE, SlimmingBatchNorm

            prior, init = laplace_settings(settings, "method.norm", INIT_SCALE)
            return SlimmingBatchNorm(features, prior=prior, init_scale=init, **common)
        raise ConfigError(f"unknown method.norm.kind {kind!r}; known: {', '.join(NORM_KINDS)}")

    def channel(self, name: str, features: int, *, after_norm: bool = False):
        """The method's module over the ``features`` channels of group ``name``, or ``None``.

        A model places it where a positive per-channel scale belongs (after the group's ReLU)
        and skips it when it is ``None``, so a method without a channel module (every method but
        Dirichlet pruning) builds exactly the network it built before: no extra operation, no
        extra Variable.

        ``after_norm``: the group's channels have passed a BatchNorm (:meth:`norm`) where the
        module sits (the CIFAR ResNets and VGGs). The kinds that are also normalisations
        (:data:`NORM_KINDS`: VCNN, slimming) carry their per-channel factor in that BatchNorm
        (``method.norm``); their channel module is for networks without one (LeNet-5), so they
        get ``None`` there and a normalised network keeps exactly its layers. Dirichlet switches
        scale the normalised channels, so they are built either way.

        ``kind: dirichlet`` gives a :class:`~bayescomp.nn.switch.DirichletSwitch` with prior
        Dir(``alpha0``·1), θ initialised to ``init_logit`` and ``mode`` ``integral`` or
        ``point`` (Adamczewski & Park, "Dirichlet Pruning for Convolutional Neural Networks",
        AISTATS 2021). ``kind: vcnn`` gives a :class:`~bayescomp.nn.saliency_scale.SaliencyScale`
        (γ ~ N(μ, σ²) per channel, variational CNN pruning for a network without BatchNorm),
        ``kind: slimming`` a :class:`~bayescomp.nn.slimming_scale.SlimmingScale` (a point γ per
        channel under slimming's L1), with the settings of the ``norm`` kinds of the same name.
        """
        del name  # one setting for every group; the name is there for per-group settings
        settings = dict(self.channel_settings)
        kind = settings.pop("kind", None)
        if kind is None or (after_norm and kind in NORM_KINDS):
            return None
        if kind == "dirichlet":
            from bayescomp.nn.switch import INIT_LENET, DirichletSwitch
            from bayescomp.priors.dirichlet import Dirichlet

            return DirichletSwitch(
                int(features), prior=Dirichlet(float(settings.get("alpha0", 0.05))),
                init=float(settings.get("init_logit", INIT_LENET)),
                mode=str(settings.get("mode", "integral")))
        if kind == "vcnn":
            from bayescomp.nn.saliency_scale import SaliencyScale

            return SaliencyScale(int(features), **saliency_settings(settings))
        if kind == "slimming":
            from bayescomp.nn.slimming_scale import INIT_SCALE, SlimmingScale

            prior, init = laplace_settings(settings, "method.channel", INIT_SCALE)
            return SlimmingScale(int(features), prior=prior, init_scale=init)
        raise ConfigError(f"unknown method.channel.kind {kind!r}; known: "
                          f"{', '.join(CHANNEL_KINDS)}")

    def check_layer_names(self, layer_names: Sequence[str]) -> None:
        """Raise ConfigError if a per-layer threshold names a layer the model does not have."""
        unknown = sorted((set(self.layer_thresholds) | set(self.layer_posterior_kwargs))
                         - set(layer_names))
        if unknown:
            raise ConfigError(
                f"per-layer settings (prune.per_layer, posterior_per_layer) name unknown layers {unknown}; this model's layers are "
                f"{list(layer_names)}"
            )


def saliency_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a channel saliency (``method.norm`` / ``method.channel`` of VCNN).

    Keys: ``prior`` (``tied_gaussian``, the default, or ``gaussian`` with ``prior_std``),
    ``init_mean`` (default 1) and ``init_log_var`` (default −6).
    """
    from bayescomp.priors.gaussian import Gaussian
    from bayescomp.priors.tied_gaussian import TiedGaussian

    prior_name = settings.get("prior") or "tied_gaussian"
    if prior_name == "tied_gaussian":
        prior = TiedGaussian()
    elif prior_name == "gaussian":
        std = float(settings.get("prior_std") or 1.0)
        if not std > 0.0:
            raise ConfigError(f"a saliency's gaussian prior needs prior_std > 0, got {std}")
        prior = Gaussian(std=std)
    else:
        raise ConfigError(f"a channel saliency's prior must be tied_gaussian or gaussian, got "
                          f"{prior_name!r}")
    return {"prior": prior, "init_mean": float(settings.get("init_mean", 1.0)),
            "init_log_var": float(settings.get("init_log_var", -6.0))}


def laplace_settings(settings: Mapping[str, Any], where: str, init_default: float):
    """``(Laplace prior, initial γ)`` of slimming's scales from ``penalty`` (s), ``n_train``
    (N, which the slimming procedure adds: the objective divides the KL by it) and
    ``init_scale``."""
    from bayescomp.priors.laplace import Laplace

    if settings.get("n_train") is None:
        raise ConfigError(f"{where}.kind=slimming needs the training-set size to scale its L1 "
                          "penalty; run it with the slimming procedure (conf/method/slimming.yaml)")
    prior = Laplace.matching_l1(float(settings.get("penalty", 1e-4)), int(settings["n_train"]))
    init = settings.get("init_scale")
    return prior, float(init_default if init is None else init)


def from_config(method_cfg: Mapping[str, Any],
                batch_norm: Mapping[str, Any] | None = None) -> LayerFactory:
    """Build a :class:`LayerFactory` from a ``conf/method/*.yaml`` mapping (and the
    ``trainer.batch_norm`` settings)."""
    prune = dict(method_cfg.get("prune") or {})
    prior_cfg = dict(method_cfg.get("prior") or {"name": "flat"})
    prior_name = prior_cfg.pop("name")
    for key in ("log_alpha_clip",):  # YAML lists -> tuples (priors are frozen, hashable)
        if key in prior_cfg and prior_cfg[key] is not None:
            prior_cfg[key] = tuple(prior_cfg[key])
    posterior_kwargs = dict(method_cfg.get("posterior_init") or {})
    for key, value in list(posterior_kwargs.items()):
        if isinstance(value, (list, tuple)):
            posterior_kwargs[key] = tuple(value)
    return LayerFactory(
        posterior=method_cfg.get("posterior", "delta"),
        prior=prior_name,
        prior_kwargs=prior_cfg,
        posterior_kwargs=posterior_kwargs,
        threshold=prune.get("threshold"),
        layer_thresholds=dict(prune.get("per_layer") or {}),
        layer_posterior_kwargs={name: dict(kwargs or {}) for name, kwargs in
                                dict(method_cfg.get("posterior_per_layer") or {}).items()},
        norm_momentum=float((batch_norm or {}).get("momentum", 0.1)),
        norm_epsilon=float((batch_norm or {}).get("epsilon", 1e-5)),
        channel_settings=dict(method_cfg.get("channel") or {}),
        norm_settings=dict(method_cfg.get("norm") or {}),
        prune_streams=str(prune.get("groups") or "internal") == "all",
    )
