"""Models. ``REGISTRY`` maps the names used in ``conf/model/*.yaml`` to model classes.

Every model takes ``widths``, its prunable channel counts (``conf/model/*.yaml``;
:mod:`bayescomp.models.widths`, whose ``widths_from_kernels`` recovers them from a list of
kernels, as :func:`hidden_widths` does for the LeNets, e.g. when a compressed file is decoded).
Every model declares its topology once (:mod:`bayescomp.models.graph`): the class attribute
``layer_names``, the order of its weight layers in every per-layer list, and the method
``channel_groups()``, which layers' outputs, BatchNorms and layers' inputs share one channel
index (residual adds, zero-padded shortcuts and flattens included). Pruning, export,
quantization and threshold selection read that declaration and nothing else.
"""

import inspect

from bayescomp.errors import unknown_name_error
from bayescomp.models.lenet import LeNet5, LeNet300, hidden_widths
from bayescomp.models.resnet import ResNet8, ResNet20, ResNet56, ResNet110, ResNet164
from bayescomp.models.vgg import VGG16, VGG19, VGGLike

REGISTRY = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "vgg16": VGG16,
    "vgg_like": VGGLike,
    "vgg19": VGG19,
    "resnet8": ResNet8,
    "resnet20": ResNet20,
    "resnet56": ResNet56,
    "resnet110": ResNet110,
    "resnet164": ResNet164,
}


def default_widths(name: str) -> list[int]:
    """The widths model ``name`` is built with unless ``model.widths`` says otherwise: its class
    attribute ``default_widths`` where a family shares one constructor (VGGs, ResNets), else
    its constructor's default."""
    model_cls = get(name)
    widths = getattr(model_cls, "default_widths", None)
    if widths is None:
        widths = inspect.signature(model_cls.__init__).parameters["widths"].default
    return list(widths)


def get(name: str):
    """Return the model class registered as ``name`` (ConfigError listing names otherwise)."""
    if name not in REGISTRY:
        raise unknown_name_error("model", name, REGISTRY)
    return REGISTRY[name]


__all__ = ["REGISTRY", "VGG16", "VGG19", "LeNet5", "LeNet300", "ResNet8", "ResNet20", "ResNet56",
           "ResNet110", "ResNet164", "VGGLike", "default_widths", "get", "hidden_widths"]
