"""The variational layer: a posterior over the kernel, a prior, a bias and a contraction.

Dense and conv layers differ only in their contraction and kernel layout
(:mod:`bayescomp.nn.dense`, :mod:`bayescomp.nn.conv`); everything else is here once.

Modes (Flax NNX views, like ``nnx.Dropout``):

* ``deterministic=False`` (training): one pre-activation sample per example with the local
  reparameterization trick.
* ``deterministic=True``: the posterior-mean network, E_q[W]; no randomness.
* ``deterministic=True, pruned=True``: the posterior mean with the pruning mask
  ``log α < threshold`` applied — the network that compression keeps.

``train_model = nnx.view(model, deterministic=False)`` and
``eval_model = nnx.view(model, deterministic=True, pruned=True)`` share arrays.

The bias is a point estimate in every method. Molchanov et al.'s Sparse VD does the same; the
Bayesian Compression tutorial instead gives it a Gaussian posterior (``bias_mu``, ``bias_logvar``
initialised near e⁻⁹, a Gaussian-KL term, ``clip_var`` on it;
github.com/KarenUllrich/Tutorial_BayesianCompressionForDL, ``BayesianLayers.py`` and
``example.py``). At that variance the bias noise has σ ≈ e^(-4.5) ≈ 0.01 and its KL against N(0, 1)
is ≈ ½(9 + μ² − 1) ≈ 4 nats per unit, a constant that does not drive pruning (biases are never
pruned), so bayescomp keeps one deterministic bias for all methods; a bias posterior would be a
second ``Posterior`` here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.posteriors.base import Posterior
from bayescomp.posteriors.variables import Bias
from bayescomp.priors.base import Prior, kl_divergence


class VariationalLayer(nnx.Module):
    """Base class of dense and conv variational layers.

    Args:
        posterior: The kernel posterior (owns the variational parameters).
        prior: The prior over the kernel.
        out_features: Number of outputs (size of the bias).
        prune_threshold: Weights (or groups) with ``log α >= prune_threshold`` are removed in the
            pruned view; ``None`` never prunes.
        deterministic: Initial mode, see the module docstring.
        rng_collection: Name of the ``nnx.Rngs`` stream the noise is drawn from.
    """

    def __init__(
        self,
        posterior: Posterior,
        prior: Prior,
        out_features: int,
        *,
        prune_threshold: float | None = None,
        deterministic: bool = False,
        rng_collection: str = "noise",
    ):
        self.posterior = posterior
        self.prior = prior
        self.bias = Bias(jnp.zeros((out_features,), jnp.float32))
        self.prune_threshold = None if prune_threshold is None else float(prune_threshold)
        self.deterministic = deterministic
        self.pruned = False
        self.rng_collection = rng_collection

    def set_view(self, deterministic: bool | None = None, pruned: bool | None = None):
        """Select the layer's mode.

        Args:
            deterministic: If True, use the posterior-mean kernel instead of sampling.
            pruned: If True (with ``deterministic``), apply the pruning mask
                ``log α < prune_threshold`` to the posterior-mean kernel.
        """
        if deterministic is not None:
            self.deterministic = deterministic
        if pruned is not None:
            self.pruned = pruned

    # The contraction and its kernel layout are what dense and conv layers define:
    # ``contract(x, kernel)``, plus ``bias`` where given (``posteriors.base.Contraction``).
    def contract(self, x: jax.Array, kernel: jax.Array,
                 bias: jax.Array | None = None) -> jax.Array:  # pragma: no cover
        raise NotImplementedError

    def keep_mask(self) -> jax.Array | None:
        """Kernel-broadcastable keep mask at this layer's threshold, or None if it never prunes."""
        if self.prune_threshold is None or self.posterior.log_alpha() is None:
            return None
        return self.posterior.keep_mask(self.prune_threshold)

    def mean_bias(self) -> jax.Array:
        """The bias of the deterministic (posterior-mean) layer, see ``Posterior.mean_bias``."""
        return self.posterior.mean_bias(self.bias[...])

    def log_alpha(self) -> jax.Array | None:
        """Log dropout rates of the posterior (per weight or per group); None for point weights."""
        return self.posterior.log_alpha()

    def kl(self) -> jax.Array:
        """KL(q(W) || p(W)) summed over this layer (nats), independent of the inputs."""
        return kl_divergence(self.posterior, self.prior)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Apply the layer.

        Args:
            x: Inputs, ``(batch, in)`` for dense or ``(batch, h, w, in)`` for conv layers.
            rngs: Random streams, required when sampling (``deterministic=False``) with a
                stochastic posterior.

        Returns:
            Pre-activations (no non-linearity).
        """
        bias = self.bias[...]
        if self.deterministic:
            mask = self.keep_mask() if self.pruned else None
            return self.posterior.mean_preactivation(x, self.contract, bias, mask)
        if self.posterior.log_alpha() is None:  # a point estimate needs no key
            return self.posterior.sample_preactivation(x, self.contract, bias, None)
        if rngs is None:
            raise ValueError(
                f"{type(self).__name__} samples its pre-activations in training mode and needs "
                "`rngs`; call it with rngs=nnx.Rngs(noise=...) or use nnx.view(model, "
                "deterministic=True)."
            )
        return self.posterior.sample_preactivation(
            x, self.contract, bias, rngs[self.rng_collection]()
        )
