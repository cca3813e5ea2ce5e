"""Variational layers (Flax NNX) and the factories that hand them to models."""

from bayescomp.nn.conv import VariationalConv
from bayescomp.nn.dense import VariationalDense
from bayescomp.nn.factory import LayerFactory, from_config
from bayescomp.nn.layer import VariationalLayer

__all__ = ["VariationalConv", "VariationalDense", "VariationalLayer", "LayerFactory", "from_config"]
