r"""Log-uniform prior and Molchanov's approximation of its KL (sparse variational dropout).

.. math::

    p(\log|w|) = \text{const} \quad\Leftrightarrow\quad p(w) \propto 1/|w| .

For q(w) = N(θ, αθ²) the KL depends on α only and has no closed form. Molchanov, Ashukha &
Vetrov (2017), Eq. 14, fit

.. math::

    -\mathrm{KL}(q\,\|\,p) \approx k_1\,\sigma(k_2 + k_3 \log\alpha)
        - \tfrac12 \log(1 + \alpha^{-1}) - k_1,

with k1 = 0.63576, k2 = 1.87320, k3 = 1.48695; its maximum absolute error is below 0.009 nats
(paper §4.2). The constant −k1 makes the approximation tend to 0 as α → ∞. ``log(1 + 1/α)`` is
computed as ``softplus(−log α)`` for stability.

As in the authors' code (github.com/bayesgroup/variational-dropout-sparsifies-dnn,
``nets/layers.py``; not in the paper), log α is clipped to ``log_alpha_clip`` before the
approximation is evaluated.

The same function serves the normal-Jeffreys prior on group scales in Bayesian Compression
(Louizos et al. 2017, §3.1), where α is the dropout rate of q(z).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from bayescomp.posteriors.gaussian import FactorizedGaussian
from bayescomp.priors.base import Prior, register_kl

# Eq. 14 constants (Molchanov et al. 2017).
K1, K2, K3 = 0.63576, 1.87320, 1.48695


def neg_kl_log_uniform_approx(log_alpha: jax.Array) -> jax.Array:
    """Elementwise −KL(N(θ, αθ²) || log-uniform) by Molchanov's Eq. 14, up to its constant.

    Args:
        log_alpha: log α, any shape (already clipped where the caller wants clipping).

    Returns:
        −KL per entry, same shape, in nats; tends to 0 as log α → ∞.
    """
    return K1 * jax.nn.sigmoid(K2 + K3 * log_alpha) - 0.5 * jax.nn.softplus(-log_alpha) - K1


def kl_log_uniform(log_alpha: jax.Array, clip: tuple[float, float] = (-8.0, 8.0)) -> jax.Array:
    """Σ KL(N(θ, αθ²) || log-uniform) over all entries, Molchanov's approximation (Eq. 14).

    Equals ``-sum(neg_kl_log_uniform_approx(clip(log_alpha)))``; its gradient is written out
    (a custom VJP) so the backward pass reuses the forward's exponentials instead of
    differentiating ``sigmoid`` and ``softplus`` again — the KL of every weight is evaluated at
    every step, and this took a quarter of a LeNet-300-100 Sparse VD step
    (``benchmarks/train_speed.py``). ``tests/priors/test_log_uniform.py`` checks the gradient
    against automatic differentiation of the plain formula.

    Args:
        log_alpha: log α, any shape.
        clip: Range log α is clipped to first (reference code: [−8, 8]); the gradient is zero
            outside it, as for ``jnp.clip``.

    Returns:
        A scalar in nats.
    """
    return _kl_log_uniform_clipped(log_alpha, float(clip[0]), float(clip[1]))


def _kl_and_grad(log_alpha, low, high):
    la = jnp.clip(log_alpha, low, high)
    # α = exp(clip(log α)) is written exactly as the factorized Gaussian's forward variance
    # writes it (posteriors/gaussian.py), so that XLA computes the exponential once for both.
    alpha = jnp.exp(la)  # within [e^-8, e^8] after the clip
    s = jax.nn.sigmoid(K2 + K3 * la)
    kl = -jnp.sum(K1 * s - 0.5 * jnp.log1p(1.0 / alpha) - K1)
    # d/d la of -(k1 σ(k2 + k3 la) - ½ log(1 + 1/α)) = -(k1 k3 s (1 - s) + ½ / (1 + α)).
    inside = (log_alpha >= low) & (log_alpha <= high)
    grad = jnp.where(inside, -(K1 * K3 * s * (1.0 - s) + 0.5 / (1.0 + alpha)), 0.0)
    return kl, grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _kl_log_uniform_clipped(log_alpha, low, high):
    return _kl_and_grad(log_alpha, low, high)[0]


def _kl_fwd(log_alpha, low, high):
    return _kl_and_grad(log_alpha, low, high)


def _kl_bwd(low, high, grad, cotangent):
    del low, high
    return (cotangent * grad,)


_kl_log_uniform_clipped.defvjp(_kl_fwd, _kl_bwd)


@dataclasses.dataclass(frozen=True)
class LogUniform(Prior):
    """Improper log-uniform prior p(|w|) ∝ 1/|w|.

    Args:
        log_alpha_clip: Range log α is clipped to before Eq. 14 is evaluated.
    """

    is_proper: ClassVar[bool] = False
    log_alpha_clip: tuple[float, float] = (-8.0, 8.0)


@register_kl(FactorizedGaussian, LogUniform)
def _kl_factorized_gaussian_log_uniform(q: FactorizedGaussian, p: LogUniform) -> jax.Array:
    return kl_log_uniform(q.raw_log_alpha(), tuple(p.log_alpha_clip))
