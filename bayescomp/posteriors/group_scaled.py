r"""Group-scaled Gaussian posteriors: Bayesian Compression's q(z) q(W | z).

Louizos, Ullrich & Welling (2017), "Bayesian Compression for Deep Learning", §3: every group of
weights (the outgoing weights of one input unit of a dense layer, or one output channel of a
conv layer) shares a scale z_g, and

.. math::

    q(W, z) = \prod_g q(z_g) \prod_{ij} \mathcal N\big(w_{ij} \mid z_g\,\mu_{ij},\; z_g^2\sigma^2_{ij}\big).

Training samples z per example and applies the local reparameterization trick to W given z:

* groups on the **inputs** (dense): ``x̃ = x · z`` (``z`` of shape ``(batch, in)``), then
  ``b ~ N(contract(x̃, μ) + bias, contract(x̃², σ²))``;
* groups on the **outputs** (conv): ``b = z · (m + sqrt(v) ε)`` with
  ``m = contract(x, μ) + bias``, ``v = contract(x², σ²)`` and ``z`` of shape ``(batch, out)``;
  so the bias of a conv channel is scaled by its z too (as in the authors' ``Conv2dGroupNJ``).

Subclasses define q(z) only (:class:`~bayescomp.posteriors.group_normal.GroupNormal` for the
normal-Jeffreys prior, :class:`~bayescomp.posteriors.group_lognormal.GroupLogNormal` for the
horseshoe). The weight moments follow from independence of z and W̃ (product of independent
random variables): ``E[w] = E[z] μ`` and ``Var[w] = E[z²](μ² + σ²) − E[z]² μ²``, which for a
Gaussian z is the ``μ_z²σ² + σ_z²μ² + σ_z²σ²`` of the authors' code.
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.posteriors.variables import PosteriorLogVar, PosteriorMean
from bayescomp.posteriors.base import VARIANCE_EPS, Contraction, Posterior
from bayescomp.posteriors.noise import standard_normal


class GroupScaledGaussian(Posterior):
    """Base class: Gaussian W given a per-group scale z; subclasses define q(z).

    Args:
        kernel_shape: ``(in, out)`` or ``(kh, kw, in, out)``.
        group_axis: ``-2`` (input units) or ``-1`` (output channels).
        rngs: Random streams for initialisation.
        weight_log_var_init: Mean of the initial log σ² of W̃ (reference: −9, jitter 0.01).
        max_weight_var: If set, log σ² of W̃ is clipped to ≤ log(max_weight_var) after every
            optimiser step (the reference's ``clip_var``; 0.04 i.e. σ ≤ 0.2 on fc1).
    """

    def __init__(self, kernel_shape, *, group_axis: int, rngs: nnx.Rngs,
                 weight_log_var_init: float = -9.0, max_weight_var: float | None = None):
        if group_axis not in (-1, -2):
            raise ValueError(f"group_axis must be -1 (outputs) or -2 (inputs), got {group_axis}")
        self.group_axis = group_axis
        self.kernel_shape = tuple(kernel_shape)
        self.num_groups = self.kernel_shape[group_axis]
        fan_in = 1
        for size in self.kernel_shape[:-1]:
            fan_in *= size
        # Reference init: W mean ~ N(0, 1/sqrt(fan_in)) (dense) / U(±1/sqrt(fan_in)) (conv);
        # one normal init for both, same scale.
        self.w_mean = PosteriorMean(
            jax.random.normal(rngs.params(), self.kernel_shape) / jnp.sqrt(fan_in))
        self.w_log_var = PosteriorLogVar(
            weight_log_var_init + 0.01 * jax.random.normal(rngs.params(), self.kernel_shape))
        # a Python constant of the layer, computed as it always was (float32 XLA log) also when
        # the model is built under jit (bayescomp.compiled_init)
        with jax.ensure_compile_time_eval():
            self.max_log_var = (None if max_weight_var is None
                                else float(jnp.log(max_weight_var)))

    # --- q(z): what subclasses define -------------------------------------------------------

    @abc.abstractmethod
    def sample_z(self, key: jax.Array, batch: int) -> jax.Array:
        """One z per example and group, shape ``(batch, num_groups)``."""

    @abc.abstractmethod
    def z_mean(self) -> jax.Array:
        """E_q[z], shape ``(num_groups,)``."""

    @abc.abstractmethod
    def z_second_moment(self) -> jax.Array:
        """E_q[z²], shape ``(num_groups,)``."""

    @abc.abstractmethod
    def log_alpha(self) -> jax.Array:
        """Group log dropout rate, shape ``(num_groups,)``: high means the group is noise."""

    # --- shared maths ------------------------------------------------------------------------

    def _groups_to_kernel(self, per_group: jax.Array) -> jax.Array:
        """Reshape ``(num_groups,)`` so it broadcasts against the kernel along the group axis."""
        shape = [1] * len(self.kernel_shape)
        shape[self.group_axis] = self.num_groups
        return per_group.reshape(shape)

    def keep_mask(self, threshold: float) -> jax.Array:
        """Kernel-broadcastable mask: 1 for groups with ``log α < threshold``."""
        return self._groups_to_kernel((self.log_alpha() < threshold).astype(jnp.float32))

    def mean_bias(self, bias: jax.Array) -> jax.Array:
        """E[z]·bias on output-channel groups, the bias itself on input groups.

        A conv channel's training pre-activation is ``z · (m + sqrt(v) ε)`` with
        ``m = contract(x, μ) + bias`` (module doc), so its expectation over q is
        ``E[z] · contract(x, μ) + E[z] · bias = contract(x, E[W]) + E[z] · bias``: the mean
        network's bias is scaled by E[z] like its kernel. (Input groups scale x, not the bias.)
        Using the raw bias instead made LeNet-5 BC-GHS's posterior-mean network 4 points worse
        than the network it trained (12.7 against 8.5 % test error at epoch 49 on Fashion-MNIST,
        with E[z] down to 0.13 in the conv layers). The authors' ``Conv2dGroupNJ`` agrees with
        this in its evaluation mode (z fixed at its mean multiplies conv + bias) but its
        ``deterministic`` mode, the compressed network, convolves with E[W] and adds the raw
        ``bias_mu``: the same inconsistency, harmless while E[z] stays near its initial 1.
        """
        if self.group_axis == -1:
            return bias * self.z_mean()
        return bias

    @property
    def masks_bias(self) -> bool:
        return self.group_axis == -1  # a removed output channel takes its bias with it

    def weight_variance(self) -> jax.Array:
        """σ² of W̃ given z (kernel-shaped)."""
        return jnp.exp(self.w_log_var[...])

    def mean(self) -> jax.Array:
        return self.w_mean[...] * self._groups_to_kernel(self.z_mean())

    def load_mean(self, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        """μ = ``kernel`` / E[z] per group (q(z) keeps its initialisation, E[z] ≈ 1), and the
        bias divided by E[z] on output-channel groups (:meth:`mean_bias`), so the posterior-mean
        network is the dense one. Louizos et al. (NeurIPS 2017, §5) start their VGG from a
        pretrained network this way."""
        ez = self.z_mean()
        self.w_mean[...] = (jnp.asarray(kernel, jnp.float32).reshape(self.w_mean.shape)
                            / self._groups_to_kernel(ez))
        return bias / ez if self.group_axis == -1 else bias

    def variance(self) -> jax.Array:
        mu = self.w_mean[...]
        ez = self._groups_to_kernel(self.z_mean())
        ez2 = self._groups_to_kernel(self.z_second_moment())
        return ez2 * (mu * mu + self.weight_variance()) - (ez * mu) ** 2

    def sample_preactivation(self, x, contract: Contraction, bias, key) -> jax.Array:
        z_key, noise_key = jax.random.split(key)
        z = self.sample_z(z_key, x.shape[0])  # (batch, groups)
        if self.group_axis == -2:  # scale the inputs: x is (batch, ..., in)
            xz = x * z.reshape(z.shape[0], *([1] * (x.ndim - 2)), z.shape[1])
            mean = contract(xz, self.w_mean[...], bias)
            var = contract(xz * xz, self.weight_variance())
            return mean + jnp.sqrt(var + VARIANCE_EPS) * standard_normal(
                noise_key, mean.shape, mean.dtype)
        mean = contract(x, self.w_mean[...], bias)  # (batch, ..., out)
        var = contract(x * x, self.weight_variance())
        sample = mean + jnp.sqrt(var + VARIANCE_EPS) * standard_normal(
            noise_key, mean.shape, mean.dtype)
        return sample * z.reshape(z.shape[0], *([1] * (mean.ndim - 2)), z.shape[1])

    def project(self) -> None:
        """Clip log σ² of W̃ to ``log(max_weight_var)`` (called after every optimiser step)."""
        if self.max_log_var is not None:
            self.w_log_var[...] = jnp.minimum(self.w_log_var[...], self.max_log_var)
