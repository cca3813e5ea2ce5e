"""Weight posteriors. ``REGISTRY`` maps the names used in ``conf/method/*.yaml`` to classes."""

from bayescomp.errors import unknown_name_error
from bayescomp.posteriors.base import Posterior
from bayescomp.posteriors.delta import Delta
from bayescomp.posteriors.gaussian import FactorizedGaussian
from bayescomp.posteriors.group_lognormal import GroupLogNormal
from bayescomp.posteriors.group_normal import GroupNormal

REGISTRY: dict[str, type[Posterior]] = {
    "delta": Delta,
    "gaussian": FactorizedGaussian,
    "group_lognormal": GroupLogNormal,
    "group_normal": GroupNormal,
}


def get(name: str) -> type[Posterior]:
    """Return the posterior class registered as ``name`` (ConfigError listing names otherwise)."""
    if name not in REGISTRY:
        raise unknown_name_error("posterior", name, REGISTRY)
    return REGISTRY[name]


__all__ = ["REGISTRY", "get", "Posterior", "Delta", "FactorizedGaussian", "GroupNormal"]
