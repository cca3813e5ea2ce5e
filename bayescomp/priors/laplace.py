r"""Zero-mean Laplace prior on point estimates: network slimming's L1 penalty as a prior.

Liu, Li, Shen, Huang, Yan & Zhang, "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017, train with ``CE_mean + s·Σ|γ|`` over every BatchNorm scale γ, applied as the
sub-gradient ``γ.grad += s·sign(γ)`` after each backward pass (``main.py`` of
github.com/Eric-mingjie/network-slimming; s = 1e-4 for VGG, 1e-5 for ResNet-164 and DenseNet-40).
For a point estimate γ that is MAP training under

.. math::

    p(\gamma) = \frac{1}{2b}\,e^{-|\gamma|/b},\qquad
    -\log p(\gamma) = \frac{|\gamma|}{b} + \log 2b .

**Scale.** bayescomp minimises ``NLL_mean + β·KL/N`` (N the training-set size,
:mod:`bayescomp.objectives`), with the "KL" of a point estimate its −log prior (the delta's
entropy, an infinite constant, dropped as in :mod:`bayescomp.priors.flat`). The gradient of the
penalty term is then β·sign(γ)/(b·N), which equals slimming's s·sign(γ) at β = 1 when

.. math::

    b = \frac{1}{N\,s}\qquad\text{i.e. "KL"} = N\,s\,\sum|\gamma| ,

:meth:`Laplace.matching_l1`. (b = 2e-4 for s = 1e-4 on CIFAR's N = 50,000: a very sharp prior,
because the reference's penalty is per example, not per data set.) The normaliser log 2b is a
constant without gradient and is left out, so the value logged as KL is the penalty itself.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bayescomp.errors import ConfigError
from bayescomp.priors.base import Prior


def laplace_penalty(x: jax.Array, scale: float) -> jax.Array:
    """Σ |x| / scale: −log of a zero-mean Laplace(scale) density without its normaliser (nats).

    Written as x·sign(x) with the sign held constant, so the gradient is sign(x)/scale with the
    sub-gradient 0 at x = 0, the reference's ``torch.sign`` (``jnp.abs`` differentiates to 1
    there, which would push an exact zero away from zero).
    """
    return jnp.sum(x * jax.lax.stop_gradient(jnp.sign(x))) / scale


@dataclasses.dataclass(frozen=True)
class Laplace(Prior):
    """p(x) = Laplace(0, scale) for every entry.

    Args:
        scale: The Laplace scale b > 0 (``matching_l1`` gives slimming's).
    """

    scale: float = 1.0

    def __post_init__(self):
        if not self.scale > 0.0:
            raise ConfigError(f"the Laplace prior's scale must be > 0, got {self.scale}")

    @classmethod
    def matching_l1(cls, coefficient: float, n_train: int) -> Laplace:
        """The prior whose penalty, in ``NLL_mean + KL/N``, is ``coefficient·Σ|x|`` per example.

        Args:
            coefficient: Slimming's s (1e-4 VGG, 1e-5 ResNets).
            n_train: N, the training-set size the objective divides the KL by.
        """
        if not (coefficient > 0.0 and n_train > 0):
            raise ConfigError(f"an L1 coefficient needs coefficient > 0 and n_train > 0, got "
                              f"{coefficient} and {n_train}")
        return cls(scale=1.0 / (float(coefficient) * int(n_train)))

    def penalty(self, x: jax.Array) -> jax.Array:
        """Σ |x| / b (nats), the −log prior of point estimates ``x`` up to a constant."""
        return laplace_penalty(x, self.scale)
