r"""Dirichlet importance switch over the channels of one layer (Dirichlet pruning).

Adamczewski & Park, "Dirichlet Pruning for Convolutional Neural Networks", AISTATS 2021
(arXiv:2011.05985). A layer with C channels gets a switch s on the simplex,

.. math::

    q(s) = \mathrm{Dir}(\varphi),\quad \varphi = \mathrm{softplus}(\theta),\qquad
    p(s) = \mathrm{Dir}(\alpha_0\mathbf 1),

and multiplies channel j of its input by :math:`C\,s_j`. θ is a :class:`SwitchLogit`, its own
Variable type, so a phase trains the switches alone with ``trains=SwitchLogit`` while the
pretrained weights and BatchNorm statistics stay frozen.

**Scale C·s_j, not s_j.** The reference multiplies by s_j (``methods/lenet5_switch_integral.py``
of github.com/kamadforge/dirichlet_pruning), which sums to 1: at uniform switches every channel
shrinks by 1/C (1/512 in a VGG layer). The switches are trained on a *frozen, pretrained* network,
whose later layers expect the activations they were trained on; shrinking them by 1/C changes the
network's function before a single step is taken (with frozen BatchNorm statistics nothing
renormalises it; the reference escaped this only because its switch sits before a train-mode
BatchNorm, which also cancels the switch itself: conv → switch → BatchNorm in the authors'
``lenet5_switch_integral.py``, github.com/kamadforge/dirichlet_pruning). With
C·s_j the mean switch is exactly 1, so at uniform φ (θ initialised to one constant) the point
network *is* the pretrained network, and every sample has E[C s_j] = 1. The factor C changes
neither the ranking of channels within a layer (pruning keeps the top k of s) nor the KL; it
makes switch values comparable across layers of different widths (C·s_j > 1: more important than
the layer's average channel).

**Placement.** Put the switch after the layer's BatchNorm (or run BatchNorm on its running
averages, ``batch_norm="running"``), never before a batch-statistics BatchNorm, which would
normalise the scale away. Since C·s_j > 0 commutes with ReLU and max-pooling, any place between
the BatchNorm and the next weight layer gives the same network. The models ask for it with
``layers.channel(group, C, after_norm=...)`` and apply it after the group's ReLU: LeNet-5
(conv1, conv2, fc1), the CIFAR VGGs (every conv and fc1, after BatchNorm and ReLU) and the CIFAR
ResNets (each block's inner channels, ``relu(bn1(conv1(x)))``); the Dirichlet procedure also
runs BatchNorm on its running averages while the switches train, so the pretrained statistics
are used and never updated (:mod:`bayescomp.procedures.dirichlet`).

**Modes** (``mode``, the reference's two scripts):

* ``"integral"``: a reparameterised sample per example: g_j ~ Gamma(φ_j, 1) and s = g/Σg, drawn
  in log space (``jax.random.loggamma`` and a softmax, so small concentrations do not underflow to
  0/0). JAX differentiates the Gamma sampler implicitly (Figurnov, Mohamed & Mnih, "Implicit
  Reparameterization Gradients", NeurIPS 2018), so ∂s/∂θ flows through the sample.
* ``"point"``: the Dirichlet mean φ/Σφ (no noise), the reference's point estimate; the KL is
  still taken on φ (:mod:`bayescomp.priors.dirichlet`).

The deterministic view (``nnx.view(model, deterministic=True)``, evaluation) uses the mean in
both modes.

**Samples per example, and averaging over S.** The reference draws S samples per batch, shared by
all its examples, and averages the *logits* over them. Here each example draws its own switch
(the local reparameterisation argument of Kingma, Salimans & Welling, NeurIPS 2015: each
example's marginal is unchanged, the gradient estimator's variance is lower), so one forward pass
already averages the likelihood over B draws. A likelihood averaged over S draws per example,
(1/S) Σ_s −log p(y | x, s^{(s)}) — the Monte Carlo estimate of the ELBO's expected
log-likelihood, not the reference's log-likelihood of averaged logits — is the objective's
business, not the module's: repeat the batch S times (``jnp.repeat(x, S, 0)``, labels alike)
before the forward pass and take the mean NLL over the S·B rows. Every stochastic module in
bayescomp draws per-example noise, so the S copies are independent draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bayescomp.errors import ConfigError
from bayescomp.priors.dirichlet import Dirichlet

MODES = ("integral", "point")

#: θ initialisations of the reference: −1 for LeNet-5 (φ ≈ 0.313,
#: ``methods/lenet5_switch_integral.py``), 0.05 for VGG (φ ≈ 0.72, ``methods/script_vgg_vggswitch.py``).
INIT_LENET = -1.0
INIT_VGG = 0.05


class SwitchLogit(nnx.Param):
    """θ of a Dirichlet importance switch, φ = softplus(θ) (one per channel)."""


class DirichletSwitch(nnx.Module):
    """Multiplies channel j of ``x`` (last axis) by C·s_j, s ~ Dir(softplus(θ)).

    Args:
        num_channels: C.
        prior: The Dirichlet prior Dir(α0·1) (default ``Dirichlet()``, α0 = 0.05).
        init: Initial θ of every channel (:data:`INIT_LENET`, :data:`INIT_VGG`).
        mode: ``"integral"`` (sampled) or ``"point"`` (the mean), see the module docstring.
        rescale: Multiply by C·s_j (True, see the module docstring) or by s_j as the reference.
        deterministic: Initial view; ``nnx.view(model, deterministic=...)`` changes it.
        rng_collection: The ``nnx.Rngs`` stream the samples are drawn from.
    """

    def __init__(self, num_channels: int, *, prior: Dirichlet | None = None,
                 init: float = INIT_LENET, mode: str = "integral", rescale: bool = True,
                 deterministic: bool = False, rng_collection: str = "noise"):
        if mode not in MODES:
            raise ConfigError(f"unknown Dirichlet switch mode {mode!r}; known: {', '.join(MODES)}")
        self.num_channels = int(num_channels)
        self.logit = SwitchLogit(jnp.full((num_channels,), init, jnp.float32))
        self.prior = Dirichlet() if prior is None else prior
        self.mode = mode
        self.gain = float(num_channels) if rescale else 1.0
        self.deterministic = deterministic
        self.rng_collection = rng_collection

    def set_view(self, deterministic: bool | None = None):
        """Select the mean (``True``) or the training mode (``False``)."""
        if deterministic is not None:
            self.deterministic = deterministic

    def concentration(self) -> jax.Array:
        """φ = softplus(θ), shape ``(C,)``."""
        return jax.nn.softplus(self.logit[...])

    def mean(self) -> jax.Array:
        """E[s] = φ / Σφ, shape ``(C,)``; pruning ranks channels by it."""
        phi = self.concentration()
        return phi / jnp.sum(phi)

    def sample(self, key: jax.Array, batch_shape: tuple[int, ...] = ()) -> jax.Array:
        """Reparameterised draws of s, shape ``batch_shape + (C,)``.

        ``log g ~ LogGamma(φ)`` and ``s = softmax(log g) = g / Σg``: a normalised Gamma vector
        is Dirichlet, and the log-space form keeps concentrations ≪ 1 finite.
        """
        phi = self.concentration()
        log_g = jax.random.loggamma(key, phi, (*batch_shape, self.num_channels))
        return jax.nn.softmax(log_g, axis=-1)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """``x · C s`` over the last axis; one sample per example (leading axis) when sampling.

        Args:
            x: Activations ``(batch, ..., C)``.
            rngs: Random streams; required in the ``"integral"`` training view.
        """
        if self.deterministic or self.mode == "point":
            return x * (self.gain * self.mean())
        if rngs is None:
            raise ValueError(
                "DirichletSwitch samples its switches in training mode and needs `rngs`; call it "
                "with rngs=nnx.Rngs(noise=...) or use nnx.view(model, deterministic=True).")
        s = self.sample(rngs[self.rng_collection](), (x.shape[0],))
        s = s.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (self.num_channels,))
        return x * (self.gain * s)

    def kl(self) -> jax.Array:
        """KL(Dir(φ) ‖ Dir(α0·1)) on the concentrations φ (nats)."""
        return self.prior.kl(self.concentration())
