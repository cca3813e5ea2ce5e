r"""Zero-mean Gaussian prior whose variance is tied to the posterior's: KL = μ²/(2σ²).

.. math::

    \mathrm{KL}\big(\mathcal N(\mu, \sigma^2)\,\|\,\mathcal N(0, \sigma^2)\big)
      = \log\frac{\sigma}{\sigma} + \frac{\sigma^2 + \mu^2}{2\sigma^2} - \frac12
      = \frac{\mu^2}{2\sigma^2},

the Gaussian KL of :mod:`bayescomp.priors.gaussian` with the prior standard deviation s set to
the posterior's own σ. Zhao et al., "Variational Convolutional Neural Network Pruning", CVPR 2019,
simplify their channel-saliency KL to a term proportional to μ²/σ² (§3.2); this is that term with its exact factor ½ and the sign that *penalises* a large
signal-to-noise ratio μ/σ, i.e. pushes saliencies to zero. (The only public code, a third-party
layer file, returns −½ Σ (μ/σ)² and tells users to add it to the loss, which rewards large |μ|/σ:
the opposite of sparsity.)

It depends on μ/σ only, like Sparse VD's log α (Molchanov et al., ICML 2017): no prior scale to
tune, the same behaviour in every layer. Its minimum, 0, is at μ = 0 for any σ; where μ ≠ 0 it
pushes σ up, so a channel is kept only where the likelihood pays for a confident, non-zero
saliency. At every q it is an exact KL, but to a prior that moves with q, so the objective is not
a bound on one fixed model's evidence (nor is it with Sparse VD's improper log-uniform prior).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bayescomp.priors.base import Prior


def kl_normal_tied_variance(mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """Σ KL(N(mean, σ²) ‖ N(0, σ²)) = Σ mean²/(2σ²) over all entries (nats), σ² = exp(log_var).

    Args:
        mean: Posterior means, any shape.
        log_var: Posterior log-variances, same shape.

    Returns:
        A scalar.
    """
    return jnp.sum(0.5 * jnp.square(mean) * jnp.exp(-log_var))


@dataclasses.dataclass(frozen=True)
class TiedGaussian(Prior):
    """p(γ) = N(0, σ²) with σ² the posterior's own variance (no hyperparameters)."""

    def kl(self, mean: jax.Array, log_var: jax.Array) -> jax.Array:
        """Σ mean²/(2σ²) (nats)."""
        return kl_normal_tied_variance(mean, log_var)
