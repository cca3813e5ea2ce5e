r"""The empirical-Bayes Gaussian-mixture prior of soft weight-sharing.

Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network Compression", ICLR 2017,
arXiv:1702.04008, and the authors' tutorial (``empirical_priors.py`` of
github.com/KarenUllrich/Tutorial-SoftWeightSharingForNNCompression). One mixture is shared by every
weight of the network:

.. math::

    p(\mathbf w) = \prod_i \sum_{j=0}^{J-1} \pi_j\,\mathcal N(w_i \mid \mu_j, \lambda_j^{-1}),

with

* component 0 the *pruning* component: :math:`\mu_0 = 0` and :math:`\pi_0` fixed (paper 0.999,
  tutorial 0.99);
* learnable means :math:`\mu_1..\mu_{J-1}`, log precisions :math:`\gamma_j = \log\lambda_j
  = -\log\sigma_j^2` (all J of them) and logits :math:`\rho` of the other mixing proportions,
  :math:`\pi_{1..J-1} = (1-\pi_0)\,\mathrm{softmax}(\rho)`;
* a Gamma hyper-prior on every precision, :math:`\lambda_j \sim \mathrm{Gamma}(\alpha_j,
  \text{rate } \beta_j)`, with :math:`(\alpha, \beta) = (5000, 2)` for the zero component and
  :math:`(250, 0.1)` for the others (the tutorial's values: both have
  :math:`\mathrm E[\lambda] = 2500`, :math:`\sigma \approx 0.02`, the zero component's 20×
  more concentrated).

The parameters are point estimates learned jointly with the weights (empirical Bayes); the
retraining loss is ``CE + (τ/N)·(−log p(w) − log p(λ))`` (:mod:`bayescomp.procedures.soft_weight_sharing`).

Conventions fixed here, used alike in training and post-processing:

* **One π normalisation.** ``log π = [log π0, log(1−π0) + log_softmax(ρ)]`` everywhere. The
  reference's post-processing used raw ρ as log π while its training normalised
  (tutorial ``helpers.py`` vs ``empirical_priors.py``), so a constant shift of ρ changed its
  quantisation but not its loss; here it changes neither.
* **Hyper-prior density over λ, not γ.** ``log p(λ_j) = α log β − log Γ(α) + (α−1) log λ_j −
  β λ_j``: the tutorial's ``(1−α)γ + βλ`` (up to its constant), i.e. a Gamma density over the
  precision without the Jacobian ``dλ/dγ = λ`` of the γ parameterisation (MAP in λ-space).
  The constant is included so the value equals ``scipy.stats.gamma(α, scale=1/β).logpdf(λ)``.
* **Biases.** ``include_biases=True`` (the tutorial's choice: its prior covers every trainable
  tensor, and its post-processing quantises every tensor) puts biases under the same prior and
  quantises them to the same means; ``False`` leaves biases unregularised and in float32.
  Biases never count towards |W| in the compression columns either way.

Every log-density is a ``logsumexp`` over components of ``log π_j + ½γ_j − ½log 2π −
½λ_j(w−μ_j)²``, stable for weights far from every mean and for very sharp components.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayescomp.errors import ConfigError
from bayescomp.posteriors.delta import Delta
from bayescomp.priors.base import Prior, register_kl

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GaussianMixture(Prior):
    """Hyper-parameters of the soft weight-sharing mixture prior (the learnable parameters are a
    :class:`MixtureParams`).

    Args:
        num_components: J, components including the zero component (paper 17, tutorial 16).
        pi_zero: Fixed mixing proportion π0 of the zero component (paper 0.999, tutorial 0.99).
        init_means_half_width: ``None``: the J−1 learnable means start evenly spaced over
            [min, max] of the pretrained weights (our default: a dense net trained without
            weight decay spans far more than the tutorial's ±0.6, e.g. ±1.8 for
            LeNet-300-100 on Fashion-MNIST, and a weight beyond every mean is pulled in by one
            edge component). A number ``a``: evenly spaced over [−a, a] (the tutorial's
            ``linspace(-0.6, 0.6, J-1)``).
        init_std: Initial standard deviation of every component. ``None``: the standard
            deviation of the pretrained weights under the prior (our default: it makes the
            start independent of the weight scale; 0.22 for LeNet-300-100 on Fashion-MNIST). A
            number: that value (the tutorial's 0.25).
        zero_gamma_shape: α of the Gamma hyper-prior on the zero component's precision.
        zero_gamma_rate: β (rate) of that hyper-prior.
        gamma_shape: α of the Gamma hyper-prior on the other precisions.
        gamma_rate: β (rate) of that hyper-prior.
        include_biases: Whether biases are under the prior (and quantised with the weights).

    Raises:
        ConfigError: On a value outside its domain.
    """

    num_components: int = 17
    pi_zero: float = 0.999
    init_means_half_width: float | None = None
    init_std: float | None = None
    zero_gamma_shape: float = 5000.0
    zero_gamma_rate: float = 2.0
    gamma_shape: float = 250.0
    gamma_rate: float = 0.1
    include_biases: bool = True

    is_proper: ClassVar[bool] = True

    def __post_init__(self):
        if not _is_number(self.num_components) or int(self.num_components) != self.num_components \
                or self.num_components < 2:
            raise ConfigError(f"gaussian_mixture num_components must be an integer >= 2 (the zero "
                              f"component and at least one more), got {self.num_components!r}")
        if not (_is_number(self.pi_zero) and 0.0 < self.pi_zero < 1.0):
            raise ConfigError(f"gaussian_mixture pi_zero must lie in (0, 1), got {self.pi_zero!r}")
        if self.init_means_half_width is not None and not (
                _is_number(self.init_means_half_width) and self.init_means_half_width > 0):
            raise ConfigError("gaussian_mixture init_means_half_width must be null (pretrained "
                              f"weight range) or > 0, got {self.init_means_half_width!r}")
        if self.init_std is not None and not (_is_number(self.init_std) and self.init_std > 0):
            raise ConfigError("gaussian_mixture init_std must be null (std of the pretrained "
                              f"weights) or > 0, got {self.init_std!r}")
        for name in ("zero_gamma_shape", "zero_gamma_rate", "gamma_shape",
                     "gamma_rate"):
            value = getattr(self, name)
            if not (_is_number(value) and value > 0):
                raise ConfigError(f"gaussian_mixture {name} must be a finite number > 0, "
                                  f"got {value!r}")
        if not isinstance(self.include_biases, bool):
            raise ConfigError("gaussian_mixture include_biases must be true or false, got "
                              f"{self.include_biases!r}")

    @property
    def gamma_shapes(self) -> np.ndarray:
        """α_j for j = 0..J−1."""
        return np.array([self.zero_gamma_shape] + [self.gamma_shape] * (self.num_components - 1))

    @property
    def gamma_rates(self) -> np.ndarray:
        """β_j for j = 0..J−1."""
        return np.array([self.zero_gamma_rate] + [self.gamma_rate] * (self.num_components - 1))


def _is_number(value) -> bool:
    """A finite real number (not a bool, not a string)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


class MixtureParams(NamedTuple):
    """The learnable mixture parameters (a pytree, optimised beside the weights).

    Attributes:
        means: ``(J−1,)`` means μ_1..μ_{J−1} (μ_0 = 0 is not a parameter).
        log_precisions: ``(J,)`` γ_j = log λ_j = −log σ_j², zero component first.
        rhos: ``(J−1,)`` logits of π_1..π_{J−1} (π_0 is fixed).
    """

    means: jax.Array
    log_precisions: jax.Array
    rhos: jax.Array


def init_mixture(prior: GaussianMixture, pretrained_weights) -> MixtureParams:
    """The mixture's starting point.

    Means evenly spaced over the pretrained range (or ±``init_means_half_width``), every
    σ_j = ``init_std`` (or the pretrained weights' standard deviation), and ρ uniform, so
    π_1..π_{J−1} = (1−π0)/(J−1) each.

    Args:
        prior: The hyper-parameters.
        pretrained_weights: The weights the prior will cover (any shape, or a list of arrays);
            used only for their range and spread.

    Returns:
        float32 :class:`MixtureParams`.

    Raises:
        ConfigError: No weights, or a non-finite weight.
    """
    flat = np.concatenate([np.ravel(np.asarray(w, np.float64))
                           for w in _as_list(pretrained_weights)])
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise ConfigError("the pretrained weights are empty or not finite; the mixture cannot be "
                          "initialised from them")
    if prior.init_means_half_width is None:
        low, high = float(flat.min()), float(flat.max())
    else:
        low, high = -float(prior.init_means_half_width), float(prior.init_means_half_width)
    init_std = float(flat.std()) if prior.init_std is None else float(prior.init_std)
    if not init_std > 0:
        raise ConfigError("the pretrained weights are all equal (standard deviation 0); set "
                          "method.prior.init_std to a number")
    count = prior.num_components - 1
    # Uniform logits: their common value does not matter (softmax), the reference's
    # log((1−π0)/(J−1)) is used so that raw ρ and the normalised log π agree at the start.
    rho = math.log((1.0 - prior.pi_zero) / count)
    return MixtureParams(
        means=jnp.asarray(np.linspace(low, high, count), jnp.float32),
        log_precisions=jnp.full((prior.num_components,), -2.0 * math.log(init_std),
                                jnp.float32),
        rhos=jnp.full((count,), rho, jnp.float32),
    )


def _as_list(weights) -> list:
    return list(weights) if isinstance(weights, (list, tuple)) else [weights]


def component_means(params: MixtureParams) -> jax.Array:
    """All J means, μ_0 = 0 first."""
    return jnp.concatenate([jnp.zeros((1,), params.means.dtype), params.means])


def log_mixing_proportions(rhos: jax.Array, pi_zero: float) -> jax.Array:
    """log π_j for j = 0..J−1: ``[log π0, log(1−π0) + log_softmax(ρ)]``.

    The one normalisation used in training and in post-processing (module docstring).
    """
    rhos = jnp.asarray(rhos)
    return jnp.concatenate([jnp.full((1,), math.log(pi_zero), rhos.dtype),
                            math.log1p(-pi_zero) + jax.nn.log_softmax(rhos)])


def component_log_densities(weights: jax.Array, means: jax.Array, log_precisions: jax.Array,
                            log_pis: jax.Array) -> jax.Array:
    r"""``log π_j + log N(w_i | μ_j, λ_j⁻¹)`` for every weight and component.

    .. math:: \log\pi_j + \tfrac12\gamma_j - \tfrac12\log 2\pi - \tfrac12 e^{\gamma_j}(w_i-\mu_j)^2

    Args:
        weights: ``(n,)`` weights.
        means: ``(J,)`` all means.
        log_precisions: ``(J,)`` γ_j.
        log_pis: ``(J,)`` log π_j.

    Returns:
        ``(n, J)``. Its row-wise ``logsumexp`` is log p(w_i); its row-wise argmax is the most
        responsible component of w_i.
    """
    diff = weights[:, None] - means[None, :]
    return (log_pis + 0.5 * log_precisions - _HALF_LOG_2PI
            - 0.5 * jnp.exp(log_precisions) * diff * diff)


def log_prior(weights: jax.Array, params: MixtureParams, pi_zero: float) -> jax.Array:
    r"""Σ_i log Σ_j π_j N(w_i | μ_j, λ_j⁻¹), computed with ``logsumexp`` over components.

    Args:
        weights: The weights, any shape (flattened).
        params: The mixture parameters.
        pi_zero: π0.

    Returns:
        A scalar (nats).
    """
    log_pis = log_mixing_proportions(params.rhos, pi_zero)
    densities = component_log_densities(jnp.ravel(weights), component_means(params),
                                        params.log_precisions, log_pis)
    return jnp.sum(jax.nn.logsumexp(densities, axis=1))


def log_hyper_prior(log_precisions: jax.Array, prior: GaussianMixture) -> jax.Array:
    r"""Σ_j log Gamma(λ_j | α_j, rate β_j) at λ_j = e^{γ_j}.

    .. math:: \sum_j \alpha_j\log\beta_j - \log\Gamma(\alpha_j) + (\alpha_j-1)\gamma_j
              - \beta_j e^{\gamma_j}

    A density over λ (no Jacobian of γ = log λ), as the tutorial's ``(1−α)γ + βλ`` loss
    (the SWS tutorial's ``empirical_priors.py``); the constants make it equal scipy's Gamma
    log-pdf.
    """
    shapes = jnp.asarray(prior.gamma_shapes, log_precisions.dtype)
    rates = jnp.asarray(prior.gamma_rates, log_precisions.dtype)
    constant = shapes * jnp.log(rates) - jax.scipy.special.gammaln(shapes)
    return jnp.sum(constant + (shapes - 1.0) * log_precisions - rates * jnp.exp(log_precisions))


def negative_log_prior(weights: list[jax.Array] | jax.Array, params: MixtureParams,
                       prior: GaussianMixture) -> jax.Array:
    """The complexity term ``−log p(w) − log p(λ)`` of the retraining loss (before ``τ/N``).

    Args:
        weights: The tensors under the prior (a list, or one array).
        params: The mixture parameters.
        prior: The hyper-parameters.

    Returns:
        A scalar (nats).
    """
    flat = jnp.concatenate([jnp.ravel(w) for w in _as_list(weights)])
    return -log_prior(flat, params, prior.pi_zero) - log_hyper_prior(params.log_precisions, prior)


def gaussian_kl(mean_a, log_precision_a, mean_b, log_precision_b):
    r"""KL(N(μ_a, λ_a⁻¹) ‖ N(μ_b, λ_b⁻¹)), elementwise (broadcasts).

    .. math:: \tfrac12(\gamma_a - \gamma_b) + \tfrac{\lambda_b}2\big(\lambda_a^{-1}
              + (\mu_a-\mu_b)^2\big) - \tfrac12

    Args:
        mean_a, log_precision_a: The first Gaussian (μ_a, γ_a = log λ_a).
        mean_b, log_precision_b: The second.

    Returns:
        The KL in nats (numpy, float64).
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    gamma_a, gamma_b = np.asarray(log_precision_a, np.float64), np.asarray(log_precision_b,
                                                                             np.float64)
    return (0.5 * (gamma_a - gamma_b)
            + 0.5 * np.exp(gamma_b) * (np.exp(-gamma_a) + (mean_a - mean_b) ** 2) - 0.5)


@register_kl(Delta, GaussianMixture)
def _kl_delta_gaussian_mixture(q: Delta, p: GaussianMixture):
    # The mixture is one prior over the whole network with learnable parameters, so it has no
    # per-layer term: soft weight-sharing adds −log p(w) − log p(λ) of all layers at once
    # (bayescomp.procedures.soft_weight_sharing). As for the flat prior, KL(δ‖p) would otherwise hold the
    # infinite, gradient-free entropy of a delta.
    del q, p
    return jnp.zeros((), jnp.float32)
