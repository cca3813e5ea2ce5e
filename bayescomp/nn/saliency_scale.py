r"""Per-channel Gaussian saliency for a network without BatchNorm (variational CNN pruning).

Zhao, Ni, Zhang, Zhao, Zhang & Tian, "Variational Convolutional Neural Network Pruning", CVPR
2019, put the channel saliency γ into BatchNorm (:class:`~bayescomp.nn.saliency_norm.
SaliencyBatchNorm`). LeNet-5 has no BatchNorm, so here the saliency is a module of its own that
multiplies channel c of its input,

.. math::

    y_c = \gamma_c\,x_c,\qquad q(\gamma_c) = \mathcal N(\mu_c, \sigma_c^2),

placed by the model's ``layers.channel`` hook after the channel's ReLU (and, in LeNet-5, its max
pooling: the model's channel is then the pooled one, and a negative γ does not commute with the
pool, so "after the pool" is part of the network's definition, not an equivalence). Nothing
normalises it away, and γ_c → 0 silences the channel exactly as the BatchNorm version's
γ(x̂ + β̃) does.

It is the BatchNorm version without the normalisation: the same Variable types
(:class:`~bayescomp.nn.saliency_norm.SaliencyMean` μ, :class:`~bayescomp.nn.saliency_norm.
SaliencyLogVar` log σ²), the same views (``deterministic=False``: γ = μ + σε drawn per example
and channel from the ``noise`` stream; ``deterministic=True``: γ = μ), the same KL
(:func:`~bayescomp.nn.saliency_norm.saliency_kl`: μ²/(2σ²) under the default tied prior). At
μ = 1, σ → 0 it is the identity, so a LeNet-5 with saliencies starts as the plain LeNet-5 (and a
pretrained one can be loaded into it unchanged). In the evaluation view it is a fixed
per-channel factor μ_c, which :mod:`bayescomp.nn.fold` multiplies into the input rows of the
channel's consumers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.nn.saliency_norm import (
    SaliencyLogVar,
    SaliencyMean,
    check_saliency_prior,
    saliency_kl,
)
from bayescomp.priors.gaussian import Gaussian
from bayescomp.priors.tied_gaussian import TiedGaussian


class SaliencyScale(nnx.Module):
    """Multiplies channel c of ``x`` (last axis) by γ_c ~ N(μ_c, σ_c²).

    Args:
        num_channels: C.
        prior: :class:`TiedGaussian` (``None``: the default) or :class:`Gaussian`.
        init_mean: Initial μ (1: the identity at the start).
        init_log_var: Initial log σ² (−6: σ ≈ 0.05, as the saliency BatchNorm).
        deterministic: Initial view (False: sample; True: posterior mean).
        rng_collection: The ``nnx.Rngs`` stream the noise is drawn from.
    """

    def __init__(self, num_channels: int, *, prior: TiedGaussian | Gaussian | None = None,
                 init_mean: float = 1.0, init_log_var: float = -6.0,
                 deterministic: bool = False, rng_collection: str = "noise"):
        self.num_channels = int(num_channels)
        self.prior = check_saliency_prior(prior)
        self.saliency_mean = SaliencyMean(jnp.full((num_channels,), init_mean, jnp.float32))
        self.saliency_log_var = SaliencyLogVar(
            jnp.full((num_channels,), init_log_var, jnp.float32))
        self.deterministic = deterministic
        self.rng_collection = rng_collection

    def set_view(self, deterministic: bool | None = None):
        """Select the posterior mean (``True``) or sampling (``False``)."""
        if deterministic is not None:
            self.deterministic = deterministic

    def eval_scale(self) -> jax.Array:
        """The factor of the evaluation view, μ, shape ``(C,)``."""
        return self.saliency_mean[...]

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """``x · γ`` over the last axis; one γ per example (leading axis) when sampling."""
        mu = self.saliency_mean[...]
        if self.deterministic:
            return x * mu
        if rngs is None:
            raise ValueError(
                "SaliencyScale samples its saliencies in training mode and needs `rngs`; call it "
                "with rngs=nnx.Rngs(noise=...) or use nnx.view(model, deterministic=True).")
        eps = jax.random.normal(rngs[self.rng_collection](), (x.shape[0], self.num_channels))
        eps = eps.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (self.num_channels,))
        return x * (mu + jnp.exp(0.5 * self.saliency_log_var[...]) * eps)

    def kl(self) -> jax.Array:
        """Σ_c KL(N(μ_c, σ_c²) ‖ prior) (nats)."""
        return saliency_kl(self.saliency_mean[...], self.saliency_log_var[...], self.prior)
