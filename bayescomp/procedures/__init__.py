"""How a run is carried out, by method: a plain registry of procedures.

A procedure is ``run(cfg, workdir) -> metrics``: it trains (or retrains) ``cfg.model`` with
``cfg.method`` on ``cfg.data`` in ``workdir``, writes ``metrics.json`` there and returns the
metrics. ``conf/method/*.yaml`` names its procedure with the key ``procedure`` (default
``variational``):

* ``variational``: variational inference over the weights, then pruning and bit reduction
  (:func:`bayescomp.procedures.variational.run`; dense baselines, Sparse VD, Bayesian
  Compression).
* ``deep_compression``: magnitude pruning with retraining, k-means weight sharing and centroid
  fine-tuning of a finished dense run (:func:`bayescomp.procedures.deep_compression.run`; Han et
  al. 2016).
* ``soft_weight_sharing``: retraining of a finished dense run under a learned Gaussian-mixture
  prior, then quantisation to the mixture means
  (:func:`bayescomp.procedures.soft_weight_sharing.run`; Ullrich, Meeds & Welling 2017).
* ``dirichlet``: Dirichlet importance switches trained on a frozen finished dense run, the top
  channels per layer kept, masked retraining (:func:`bayescomp.procedures.dirichlet.run`;
  Adamczewski & Park, AISTATS 2021).
* ``vcnn``: Gaussian channel saliencies trained jointly with the weights on the ELBO, channels
  with |μ| < τ removed (optionally also σ < θ), no retraining (optional fine-tuning)
  (:func:`bayescomp.procedures.vcnn.run`; Zhao et al., CVPR 2019).
* ``slimming``: L1 on channel scales, one global percentile threshold, fine-tuning
  (:func:`bayescomp.procedures.slimming.run`; Liu et al., ICCV 2017).

A procedure is a short script of :class:`bayescomp.loop.Phase` s carried out by
:meth:`bayescomp.loop.TrainingRun.fit`, and ends with :func:`bayescomp.metrics.finish_run`.

Retraining procedures (Deep Compression, soft weight-sharing) start from a finished dense run
and register themselves here too. Entries are ``"module:function"`` strings, imported on use, so
that importing the registry does not import every method.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from bayescomp.errors import unknown_name_error

REGISTRY: dict[str, str] = {
    "variational": "bayescomp.procedures.variational:run",
    "deep_compression": "bayescomp.procedures.deep_compression:run",
    "soft_weight_sharing": "bayescomp.procedures.soft_weight_sharing:run",
    "dirichlet": "bayescomp.procedures.dirichlet:run",
    "vcnn": "bayescomp.procedures.vcnn:run",
    "slimming": "bayescomp.procedures.slimming:run",
}


def get(name: str) -> Callable[..., dict[str, Any]]:
    """The procedure registered as ``name``.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the known procedures).
    """
    if name not in REGISTRY:
        raise unknown_name_error("procedure", name, REGISTRY)
    module_name, function_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)
