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
CHANNEL_KINDS = ("dirichlet",)


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
             padding: str | Sequence[tuple[int, int]] = "VALID"):
        """A :class:`VariationalConv` layer named ``name``.

        ``padding`` is ``"VALID"``, ``"SAME"`` or explicit ``(low, high)`` pairs per spatial axis
        (PyTorch's symmetric ``padding=1`` is ``((1, 1), (1, 1))``; at stride 2 it differs from
        ``"SAME"``, which pads only the high side).
        """
        return VariationalConv(in_features, out_features, kernel_size, rngs=rngs,
                               strides=strides, padding=padding, **self._common(name))

    def norm(self, name: str, features: int):
        """A :class:`~bayescomp.nn.norm.BatchNorm` over ``features`` channels named ``name``."""
        del name  # a method with its own normalisation (channel saliencies) will use it
        return BatchNorm(features, momentum=self.norm_momentum, epsilon=self.norm_epsilon)

    def channel(self, name: str, features: int):
        """The method's module over the ``features`` channels of group ``name``, or ``None``.

        A model places it where a positive per-channel scale belongs (after the group's ReLU)
        and skips it when it is ``None``, so a method without a channel module (every method but
        Dirichlet pruning) builds exactly the network it built before: no extra operation, no
        extra Variable.

        ``kind: dirichlet`` gives a :class:`~bayescomp.nn.switch.DirichletSwitch` with prior
        Dir(``alpha0``·1), θ initialised to ``init_logit`` and ``mode`` ``integral`` or
        ``point`` (Adamczewski & Park, "Dirichlet Pruning for Convolutional Neural Networks",
        AISTATS 2021).
        """
        del name  # one setting for every group; the name is there for per-group settings
        settings = dict(self.channel_settings)
        kind = settings.pop("kind", None)
        if kind is None:
            return None
        if kind == "dirichlet":
            from bayescomp.nn.switch import INIT_LENET, DirichletSwitch
            from bayescomp.priors.dirichlet import Dirichlet

            return DirichletSwitch(
                int(features), prior=Dirichlet(float(settings.get("alpha0", 0.05))),
                init=float(settings.get("init_logit", INIT_LENET)),
                mode=str(settings.get("mode", "integral")))
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
    )
