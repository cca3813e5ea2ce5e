"""Variable types of variational layers.

Each kind of variational parameter is its own ``nnx.Param`` subclass (as Flax does for
``LoRAParam``), so filters can address one kind without matching names by string. Examples:
``nnx.state(model, PosteriorLogVar)`` for the variance clipping of Bayesian Compression, or a
separate learning rate for the group scales. List a subclass before ``nnx.Param`` in any
``nnx.split`` filter, because ``nnx.Param`` matches its subclasses too.
"""

from flax import nnx


class PosteriorMean(nnx.Param):
    """Mean θ of a factorised Gaussian weight posterior, q(w) = N(θ, σ²)."""


class PosteriorLogVar(nnx.Param):
    """Log-variance log σ² of a factorised Gaussian weight posterior."""


class GroupMean(nnx.Param):
    """Location parameter of a group scale posterior q(z) (one entry per group)."""


class GroupLogVar(nnx.Param):
    """Log-variance parameter of a group scale posterior q(z) (one entry per group)."""


class GlobalScaleParam(nnx.Param):
    """Location or log-variance of a layer-wide (global) scale posterior, e.g. the horseshoe's s."""


class PointWeight(nnx.Param):
    """A point-estimated weight (a delta posterior): the dense baseline and soft weight-sharing."""


class Bias(nnx.Param):
    """The point-estimated bias of a weight layer (every method; see :mod:`bayescomp.nn.layer`)."""
