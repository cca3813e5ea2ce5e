r"""BatchNorm whose scale is a variational channel saliency (variational CNN pruning).

Zhao, Ni, Zhang, Zhao, Zhang & Tian, "Variational Convolutional Neural Network Pruning", CVPR
2019. Batch normalisation is rewritten so that one per-channel factor multiplies both its terms,

.. math::

    y = \gamma\,(\hat x + \tilde\beta),\qquad
    \hat x = \frac{x - m}{\sqrt{v + \epsilon}},\qquad
    q(\gamma_c) = \mathcal N(\mu_c, \sigma_c^2),

so that γ_c → 0 removes channel c's output entirely, shift included (plain BatchNorm's
γx̂ + β keeps β when γ = 0). μ is a :class:`SaliencyMean`, log σ² a :class:`SaliencyLogVar`
(own Variable types: a phase or an optimiser can address them), β̃ the inherited
:class:`~bayescomp.nn.norm.NormBias`, and m, v the inherited ``nnx.BatchStat`` running statistics,
updated exactly as :class:`~bayescomp.nn.norm.BatchNorm` updates them (PyTorch's momentum
convention, unbiased running variance): the statistics code is BatchNorm's own, run with a unit
affine (:meth:`SaliencyBatchNorm.standardize`). BatchNorm's own scale is removed: γ is the
saliency.

Views, as :class:`~bayescomp.nn.layer.VariationalLayer` and :class:`~bayescomp.nn.norm.BatchNorm`:

* ``deterministic=False`` (training): γ = μ + σ ε with ε ~ N(0, 1) drawn per example and channel
  from the ``noise`` stream (the reparameterisation trick; one draw per example rather than one per
  batch as in the third-party code is the local reparameterisation of Kingma, Salimans & Welling,
  NeurIPS 2015: the same marginal per example, a lower-variance gradient);
* ``deterministic=True`` (evaluation): γ = μ, the posterior mean. The network is then a plain
  BatchNorm network with scale μ and shift μβ̃ (:meth:`SaliencyBatchNorm.eval_affine`,
  :meth:`SaliencyBatchNorm.as_batch_norm`), which is what export folds;
* ``use_running_average``: the inherited choice between batch statistics and running averages.

KL. ``kl()`` is Σ_c KL(q(γ_c) ‖ p(γ_c)) with one of two zero-mean Gaussian priors:

* :class:`~bayescomp.priors.tied_gaussian.TiedGaussian` (**default**): the prior variance tied to
  σ², KL = μ²/(2σ²). It is the form the paper simplifies its KL to (Zhao et al., CVPR 2019,
  §3.2: a term proportional to μ²/σ²), it depends on the signal-to-noise ratio μ/σ only (no
  prior scale to tune per network), and a channel the likelihood does not need goes to μ = 0, where the KL no longer acts on σ: the
  likelihood alone sets σ there, and in practice leaves it near or above its start (LeNet-5 on
  Fashion-MNIST: σ ≥ 0.065 for all 166 fc1 channels at μ ≈ 0), so the pruning rule tests
  |μ| < τ and the paper's σ < θ is an option (:mod:`bayescomp.procedures.vcnn`).
* :class:`~bayescomp.priors.gaussian.Gaussian` with standard deviation s: the closed form
  log(s/σ) + (σ² + μ²)/(2s²) − ½, a fixed proper prior (a true ELBO). It pulls an unneeded channel
  to N(0, s²), so its σ ends near s: the rule's θ must then sit above s, and s sets how hard μ is
  pulled (μ/s² per nat), a scale to tune per network.

Both have the sign that pushes saliencies to zero; the only public implementation (a
third-party drop-in BatchNorm whose README says to add its KL to the loss) returns −½Σ(μ/σ)²,
the opposite sign.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.nn.norm import BatchNorm
from bayescomp.priors.gaussian import Gaussian, kl_normal_zero_mean
from bayescomp.priors.tied_gaussian import TiedGaussian, kl_normal_tied_variance


def saliency_kl(mean: jax.Array, log_var: jax.Array,
                prior: TiedGaussian | Gaussian | None = None) -> jax.Array:
    """Σ_c KL(N(μ_c, σ_c²) ‖ p(γ_c)) of channel saliencies (nats), see the module docstring.

    The one KL of every channel-saliency module (this BatchNorm and the per-channel
    :class:`~bayescomp.nn.saliency_scale.SaliencyScale`): μ²/(2σ²) summed for the
    :class:`TiedGaussian` prior (``None``, the default), log(s/σ) + (σ² + μ²)/(2s²) − ½ for a
    :class:`Gaussian` of standard deviation s.

    Args:
        mean: μ per channel.
        log_var: log σ² per channel.
        prior: The prior.
    """
    if isinstance(prior, Gaussian):
        return kl_normal_zero_mean(mean, log_var, prior.std)
    return kl_normal_tied_variance(mean, log_var)


def check_saliency_prior(prior) -> TiedGaussian | Gaussian:
    """``prior`` (``None``: :class:`TiedGaussian`), refused unless a zero-mean Gaussian one."""
    prior = TiedGaussian() if prior is None else prior
    if not isinstance(prior, (TiedGaussian, Gaussian)):
        raise ConfigError(f"a channel saliency takes a tied_gaussian or gaussian prior, got "
                          f"{type(prior).__name__}")
    return prior


class SaliencyMean(nnx.Param):
    """Posterior mean μ of a channel saliency, q(γ) = N(μ, σ²) (one per channel)."""


class SaliencyLogVar(nnx.Param):
    """Posterior log-variance log σ² of a channel saliency (one per channel)."""


class _UnitAffine:
    """A BatchNorm seen with γ = 1 and β = 0: everything else (its statistics Variables, momentum,
    epsilon, view) is the wrapped module's, so ``BatchNorm.__call__`` run on it returns x̂ and
    updates the wrapped module's running averages in place."""

    def __init__(self, norm: BatchNorm):
        self._norm = norm
        self.scale = jnp.ones((norm.num_features,), jnp.float32)  # x̂·1 + 0 is x̂ exactly
        self.bias = jnp.zeros((norm.num_features,), jnp.float32)

    def __getattr__(self, name):
        return getattr(self._norm, name)


class SaliencyBatchNorm(BatchNorm):
    """BatchNorm with a Gaussian channel saliency: y = γ (x̂ + β̃), q(γ) = N(μ, σ²).

    Args:
        num_features: Channels.
        prior: :class:`TiedGaussian` (``None``: the default) or :class:`Gaussian` (``std`` s), see
            the module docstring.
        init_mean: Initial μ; 1 starts as a plain BatchNorm with γ = 1.
        init_log_var: Initial log σ²; −6 (σ ≈ 0.05) starts with 5 % multiplicative noise. (The
            third-party code draws μ and log σ² from |N(0, 1)|, i.e. σ ≥ 1 at the start.)
        momentum: Weight of the new batch in the running averages (PyTorch's convention).
        epsilon: Added to the variance.
        use_running_average: Initial statistics view.
        deterministic: Initial saliency view (False: sample; True: posterior mean).
        rng_collection: The ``nnx.Rngs`` stream the noise is drawn from.
    """

    def __init__(self, num_features: int, *, prior: TiedGaussian | Gaussian | None = None,
                 init_mean: float = 1.0, init_log_var: float = -6.0, momentum: float = 0.1,
                 epsilon: float = 1e-5, use_running_average: bool = False,
                 deterministic: bool = False, rng_collection: str = "noise"):
        prior = check_saliency_prior(prior)
        super().__init__(num_features, momentum=momentum, epsilon=epsilon,
                         use_running_average=use_running_average)
        del self.scale  # γ is the saliency; a second, unused scale would train and be exported
        self.saliency_mean = SaliencyMean(jnp.full((num_features,), init_mean, jnp.float32))
        self.saliency_log_var = SaliencyLogVar(
            jnp.full((num_features,), init_log_var, jnp.float32))
        self.prior = prior
        self.deterministic = deterministic
        self.rng_collection = rng_collection

    def set_view(self, use_running_average: bool | None = None,
                 deterministic: bool | None = None):
        """Select the statistics (batch or running) and the saliency (sample or mean)."""
        super().set_view(use_running_average=use_running_average)
        if deterministic is not None:
            self.deterministic = deterministic

    def standardize(self, x: jax.Array) -> jax.Array:
        """x̂ = (x − m)/√(v + ε) by BatchNorm's own code (batch statistics and the running update,
        or the running averages, as the view says)."""
        return BatchNorm.__call__(_UnitAffine(self), x)

    def eval_affine(self) -> tuple[jax.Array, jax.Array]:
        """``(scale, shift)`` of the evaluation view, y = x̂·scale + shift: ``(μ, μβ̃)``."""
        mu = self.saliency_mean[...]
        return mu, mu * self.bias[...]

    def as_batch_norm(self) -> BatchNorm:
        """The plain BatchNorm (running-average view) equal to this layer's evaluation view."""
        plain = BatchNorm(self.num_features, momentum=self.momentum, epsilon=self.epsilon,
                          use_running_average=True)
        scale, shift = self.eval_affine()
        plain.scale[...] = scale
        plain.bias[...] = shift
        plain.mean[...] = self.mean[...]
        plain.var[...] = self.var[...]
        return plain

    def load_batch_norm(self, norm: BatchNorm) -> None:
        """Start from a trained BatchNorm: μ = γ, β̃ = β/γ, its running statistics.

        The evaluation view then equals ``norm``'s, except on a channel with γ = 0, which a
        plain BatchNorm turns into the constant β and this layer into 0 (β̃ = 0 there).
        """
        gamma, beta = norm.scale[...], norm.bias[...]
        safe = jnp.where(gamma == 0.0, 1.0, gamma)
        self.saliency_mean[...] = gamma
        self.bias[...] = jnp.where(gamma == 0.0, 0.0, beta / safe)
        self.mean[...] = norm.mean[...]
        self.var[...] = norm.var[...]

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None,
                 relu: bool = False) -> jax.Array:
        """``γ (x̂ + β̃)`` over the last axis of ``x`` (``(batch, ..., C)``), through a ReLU where
        ``relu`` (as :class:`~bayescomp.nn.norm.BatchNorm` takes it; applied here after the
        saliency, by XLA).

        Args:
            x: Activations.
            rngs: Random streams; required in the sampling view (``deterministic=False``).
            relu: Whether the output goes through ``max(·, 0)``.
        """
        shifted = self.standardize(x) + self.bias[...]
        mu = self.saliency_mean[...]
        if self.deterministic:
            return jax.nn.relu(shifted * mu) if relu else shifted * mu
        if rngs is None:
            raise ValueError(
                "SaliencyBatchNorm samples its saliencies in training mode and needs `rngs`; "
                "call it with rngs=nnx.Rngs(noise=...) or use nnx.view(model, deterministic=True).")
        eps = jax.random.normal(rngs[self.rng_collection](), (x.shape[0], self.num_features))
        eps = eps.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (self.num_features,))
        gamma = mu + jnp.exp(0.5 * self.saliency_log_var[...]) * eps
        return jax.nn.relu(shifted * gamma) if relu else shifted * gamma

    def kl(self) -> jax.Array:
        """Σ_c KL(N(μ_c, σ_c²) ‖ prior) (nats), see the module docstring."""
        return saliency_kl(self.saliency_mean[...], self.saliency_log_var[...], self.prior)
