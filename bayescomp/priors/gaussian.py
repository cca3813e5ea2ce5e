r"""Zero-mean Gaussian prior and its closed-form KL against a factorised Gaussian posterior.

.. math::

    \mathrm{KL}\big(\mathcal N(\mu, \sigma^2)\,\|\,\mathcal N(0, s^2)\big)
      = \log\frac{s}{\sigma} + \frac{\sigma^2 + \mu^2}{2 s^2} - \frac12 ,

summed over weights (e.g. Kingma & Welling 2014, Appendix B). With s = 1 this is the
``½(−log σ² + σ² + μ² − 1)`` term of Bayesian Compression's KL for q(W|z) (Louizos et al. 2017).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bayescomp.posteriors.gaussian import FactorizedGaussian
from bayescomp.priors.base import Prior, register_kl


def kl_normal_zero_mean(mean: jax.Array, log_var: jax.Array, prior_std: float = 1.0) -> jax.Array:
    """Σ KL(N(mean, exp(log_var)) || N(0, prior_std²)) over all entries (nats).

    Args:
        mean: Posterior means, any shape.
        log_var: Posterior log-variances, same shape.
        prior_std: Prior standard deviation s.

    Returns:
        A scalar.
    """
    prior_var = prior_std * prior_std
    return jnp.sum(
        0.5 * (jnp.log(prior_var) - log_var)
        + (jnp.exp(log_var) + mean * mean) / (2.0 * prior_var)
        - 0.5
    )


@dataclasses.dataclass(frozen=True)
class Gaussian(Prior):
    """p(w) = N(0, std²) for every weight.

    Args:
        std: Prior standard deviation.
    """

    std: float = 1.0


@register_kl(FactorizedGaussian, Gaussian)
def _kl_factorized_gaussian_gaussian(q: FactorizedGaussian, p: Gaussian) -> jax.Array:
    # The KL uses the posterior's own log σ², not the α-clipped variance of the forward pass.
    return kl_normal_zero_mean(q.theta[...], q.log_sigma2[...], p.std)
