"""Models. ``REGISTRY`` maps the names used in ``conf/model/*.yaml`` to model classes.

Every model takes ``widths``, its hidden layer widths (``conf/model/*.yaml``), and
:func:`hidden_widths` recovers them from a list of kernels (used when a compressed file is
decoded). Every model declares its topology once (:mod:`bayescomp.models.graph`): the class
attribute ``layer_names``, the order of its weight layers in every per-layer list, and the method
``channel_groups()``, which layers' outputs, BatchNorms and layers' inputs share one channel
index (residual adds and flattens included). Pruning, export, quantization and threshold
selection read that declaration and nothing else.
"""

import inspect

from bayescomp.errors import unknown_name_error
from bayescomp.models.lenet import LeNet5, LeNet300, hidden_widths

REGISTRY = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
}


def default_widths(name: str) -> list[int]:
    """The widths model ``name`` is built with unless ``model.widths`` says otherwise."""
    return list(inspect.signature(get(name).__init__).parameters["widths"].default)


def get(name: str):
    """Return the model class registered as ``name`` (ConfigError listing names otherwise)."""
    if name not in REGISTRY:
        raise unknown_name_error("model", name, REGISTRY)
    return REGISTRY[name]


__all__ = ["REGISTRY", "default_widths", "get", "hidden_widths", "LeNet300", "LeNet5"]
