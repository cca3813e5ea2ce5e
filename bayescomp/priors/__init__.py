"""Priors. ``REGISTRY`` maps the names used in ``conf/method/*.yaml`` to prior classes.

Importing this package imports every prior module, so every ``register_kl`` has run.
"""

from bayescomp.errors import ConfigError, unknown_name_error
from bayescomp.priors.base import Prior, kl_divergence, register_kl
from bayescomp.priors.dirichlet import Dirichlet
from bayescomp.priors.flat import Flat
from bayescomp.priors.gaussian import Gaussian
from bayescomp.priors.gaussian_mixture import GaussianMixture
from bayescomp.priors.group_nj import GroupNormalJeffreys
from bayescomp.priors.horseshoe import GroupHorseshoe
from bayescomp.priors.laplace import Laplace
from bayescomp.priors.log_uniform import LogUniform
from bayescomp.priors.tied_gaussian import TiedGaussian

REGISTRY: dict[str, type[Prior]] = {
    "dirichlet": Dirichlet,
    "flat": Flat,
    "gaussian": Gaussian,
    "gaussian_mixture": GaussianMixture,
    "group_horseshoe": GroupHorseshoe,
    "group_nj": GroupNormalJeffreys,
    "laplace": Laplace,
    "log_uniform": LogUniform,
    "tied_gaussian": TiedGaussian,
}


def get(name: str, **kwargs) -> Prior:
    """Instantiate the prior registered as ``name`` with hyperparameters ``kwargs``.

    Raises:
        ConfigError: Unknown name (the message lists the known ones) or unknown hyperparameter.
    """
    if name not in REGISTRY:
        raise unknown_name_error("prior", name, REGISTRY)
    try:
        return REGISTRY[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad hyperparameters for prior {name!r}: {err}") from None


def names() -> list[str]:
    return sorted(REGISTRY)


__all__ = ["REGISTRY", "get", "names", "Prior", "kl_divergence", "register_kl", "Dirichlet",
           "Flat", "Gaussian", "GaussianMixture", "GroupHorseshoe", "GroupNormalJeffreys",
           "Laplace", "LogUniform", "TiedGaussian"]
