"""From a trained variational network to the pruned, bit-reduced network that is evaluated.

Louizos et al. (2017) evaluate the network whose kept weights are the posterior means rounded to
each layer's significand bits, with no fine-tuning (the authors' ``example.py`` and
``compression.py``, github.com/KarenUllrich/Tutorial_BayesianCompressionForDL). This module builds
exactly that network as a model of the same class with point weights (a ``Delta`` posterior), so
its error is measured by the same evaluation code as every other network.

A model with BatchNorms (the CIFAR VGGs and ResNets) also needs each BatchNorm's γ, β, running
mean and variance and ε at inference: :class:`QuantizedNetwork` carries them (``norms``), at
full channel count and float32 as trained, except that a channel whose values cannot reach the
logits (no consumer keeps a weight reading it, :func:`~bayescomp.compression.survivors.
norm_channels`) holds the neutral values γ = β = mean = 0, variance = 1 (the BatchNorm then
outputs exactly 0 there). The masked network is the same function either way; the neutral values
make the network a function of what the ``.bcz`` file stores, so that decoding it gives back the
same arrays bit for bit.
"""

from __future__ import annotations

import dataclasses
import io

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp import atomic, compiled_init
from bayescomp.bit_precision import BitPrecision, bit_precision, round_to_bits
from bayescomp.models import hidden_widths
from bayescomp.models.graph import batch_norms, channel_graph, weight_layers
from bayescomp.nn.factory import LayerFactory
from bayescomp.pruning import masked_bias

#: The fields of a BatchNorm that inference reads, in the order the ``.bcz`` file stores them.
NORM_FIELDS = ("scale", "bias", "mean", "var")
#: The values of a channel whose BatchNorm parameters cannot reach the logits: the BatchNorm
#: outputs exactly ``(x - 0)·rsqrt(1 + ε)·0 + 0 = 0`` there.
NEUTRAL_NORM = {"scale": 0.0, "bias": 0.0, "mean": 0.0, "var": 1.0}


@dataclasses.dataclass(frozen=True, eq=False)
class NormParams:
    """One BatchNorm's inference parameters, float32 over all its channels.

    Attributes:
        scale: γ.
        bias: β.
        mean: Running mean.
        var: Running variance.
        epsilon: Added to the variance (``trainer.batch_norm.epsilon`` of the run).
    """

    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float

    def stacked(self) -> np.ndarray:
        """``(4, C)`` float32: γ, β, mean, variance (:data:`NORM_FIELDS` order)."""
        return np.stack([np.asarray(getattr(self, f), np.float32) for f in NORM_FIELDS])

    @classmethod
    def from_stacked(cls, values: np.ndarray, epsilon: float) -> NormParams:
        """The inverse of :meth:`stacked`."""
        values = np.asarray(values, np.float32)
        return cls(*(values[i].copy() for i in range(len(NORM_FIELDS))), epsilon=float(epsilon))

    def restricted(self, needed: np.ndarray) -> NormParams:
        """These parameters with the channels outside ``needed`` set to :data:`NEUTRAL_NORM`."""
        return NormParams(*(np.where(needed, np.asarray(getattr(self, f), np.float32),
                                     np.float32(NEUTRAL_NORM[f])).astype(np.float32)
                            for f in NORM_FIELDS), epsilon=self.epsilon)


def norm_params(model: nnx.Module, masks: dict[str, np.ndarray]) -> dict[str, NormParams] | None:
    """The BatchNorm parameters of ``model`` under ``masks``, by sorted dotted path.

    Channels whose values cannot reach the logits get the neutral values (module docstring).

    Returns:
        ``None`` for a model without BatchNorms.
    """
    from bayescomp.compression.survivors import norm_channels  # late: survivors imports pruning

    norms = batch_norms(model)
    if not norms:
        return None
    graph = channel_graph(model)
    needed = norm_channels(graph, masks)
    group_of = {path: group.name for group in graph.groups for path in group.norms}
    result = {}
    for path in sorted(norms):
        norm = norms[path]
        params = NormParams(*(np.asarray(getattr(norm, f)[...], np.float32) for f in NORM_FIELDS),
                            epsilon=float(norm.epsilon))
        result[path] = params.restricted(needed[group_of[path]])
    return result


@dataclasses.dataclass
class QuantizedNetwork:
    """The kept, rounded weights of every layer (kernel layout of the model).

    Attributes:
        names: Layer paths, in the model's declared order (``layer_names``).
        kernels: Rounded posterior-mean kernels with removed weights set to exactly 0.
        biases: Biases (float32; zero for removed output channels).
        masks: Keep masks after propagation.
        precision: Bits per layer and exponent bits.
        codebooks: ``None`` for fixed-point weights (every kept weight is ``k·2^-t``, the
            Bayesian Compression rounding). Otherwise one entry per layer: ``None`` for a
            fixed-point layer, or the sorted distinct float32 values its kept weights take
            (weight sharing: Deep Compression's k-means centroids, soft weight-sharing's
            mixture means), which the file stores once and indexes.
        norms: ``None`` for a model without BatchNorms; otherwise every BatchNorm's
            :class:`NormParams` by dotted path, in sorted order (module docstring).
        widths: The model's ``widths`` argument (``model.widths`` of the run), or ``None``
            where it is the output size of every layer but the last
            (:func:`bayescomp.models.hidden_widths`, the LeNets' convention); a ResNet's widths
            are per stage, and cannot be read off its kernels.
    """

    names: list[str]
    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    masks: list[np.ndarray]
    precision: BitPrecision
    codebooks: list[np.ndarray | None] | None = None
    norms: dict[str, NormParams] | None = None
    widths: tuple[int, ...] | None = None


def rounded_kernel(mean: np.ndarray, mask: np.ndarray, bits: int) -> np.ndarray:
    """A layer's kept posterior means rounded to ``2^-bits`` (float32), removed weights 0."""
    # np.where, not a product: a removed weight is +0.0 exactly (never -0.0), so the kernels
    # survive a round trip through the compressed file bit for bit.
    return np.where(mask, np.asarray(round_to_bits(mean, bits)), 0.0).astype(np.float32)


def quantize(model: nnx.Module, masks: dict[str, np.ndarray], *,
             widths=None, bits: list[int] | None = None) -> QuantizedNetwork:
    """Bit precision from the posterior variances, then rounding of the kept posterior means.

    Args:
        model: A trained model of variational layers (with its BatchNorms' running statistics).
        masks: Propagated keep masks by layer path (:func:`bayescomp.pruning.propagated_masks`).
        widths: The ``widths`` the model was built with (``model.widths``); needed only where
            they are not the LeNets' per-layer output sizes (:attr:`QuantizedNetwork.widths`).
        bits: Significand bits per layer to round to instead of the posterior rule's (chosen by
            :func:`bayescomp.bit_selection.select_bits`); the exponent width is unchanged.

    Returns:
        The :class:`QuantizedNetwork`, BatchNorm parameters included.
    """
    layers = weight_layers(model)
    names = [name for name, _ in layers]
    means = [np.asarray(layer.posterior.mean(), np.float64) for _, layer in layers]
    variances = [np.asarray(layer.posterior.variance(), np.float64) for _, layer in layers]
    mask_list = [masks[name] for name in names]
    precision = bit_precision(means, variances, mask_list)
    if bits is not None:
        if len(bits) != len(names):
            raise ValueError(f"{len(bits)} bit widths for the {len(names)} layers {names}")
        precision = dataclasses.replace(
            precision, bits_per_layer=[int(b) for b in bits],
            bits_per_weight=[1 + precision.exponent_bits + int(b) for b in bits])
    kernels, biases = [], []
    for (name, layer), mean, mask, layer_bits in zip(layers, means, mask_list,
                                                     precision.bits_per_layer):
        kernels.append(rounded_kernel(mean, mask, layer_bits))
        biases.append(masked_bias(layer, mask))  # a removed output channel may take its bias
    return QuantizedNetwork(names, kernels, biases, mask_list, precision,
                            norms=norm_params(model, masks),
                            widths=None if widths is None else tuple(int(w) for w in widths))


def point_model(model_cls, kernels, biases, *, input_shape, num_classes, norms=None,
                widths=None) -> nnx.Module:
    """A model of ``model_cls`` with point weights set to ``kernels`` and ``biases``.

    Args:
        model_cls: A model class from :mod:`bayescomp.models`.
        kernels: One kernel per layer, in the model's ``layer_names`` order and layout.
        biases: One bias per layer.
        input_shape: ``(h, w, c)``.
        num_classes: Number of outputs.
        norms: BatchNorm path → :class:`NormParams` (:attr:`QuantizedNetwork.norms`); each
            BatchNorm is set to them (ε included) and to its running-average view. ``None``
            leaves a model's BatchNorms at their initial values (γ = 1, β = 0, mean 0,
            variance 1), as point models were built before networks carried them.
        widths: The model's ``widths``; ``None`` reads them off the kernels
            (:func:`bayescomp.models.hidden_widths`, the LeNets' convention).

    Returns:
        The deterministic model (point weights need no random key in any view).

    Raises:
        ValueError: ``norms`` does not name exactly the model's BatchNorms with their channel
            counts, or the kernels do not fit.
    """
    widths = hidden_widths(kernels) if widths is None else tuple(widths)
    input_shape = tuple(int(d) for d in input_shape)
    # The initial values are overwritten below; one compiled program per architecture builds
    # them (bayescomp.compiled_init) instead of one small XLA program per weight shape. The
    # widths go to the model as given (it checks them); the key holds their repr.
    model = compiled_init.initialize(
        ("point_model", model_cls, input_shape, int(num_classes), repr(widths)),
        lambda key: model_cls(LayerFactory(), rngs=nnx.Rngs(params=key), input_shape=input_shape,
                              num_classes=num_classes, widths=widths),
        0)
    layers = weight_layers(model)
    if len(layers) != len(kernels):
        raise ValueError(f"{model_cls.__name__} has {len(layers)} layers, got {len(kernels)} kernels")
    for (_, layer), kernel, bias in zip(layers, kernels, biases):
        layer.posterior.weight[...] = jnp.asarray(kernel, jnp.float32)
        layer.bias[...] = jnp.asarray(bias, jnp.float32)
    if norms is not None:
        set_norms(model, norms)
    return model


def quantized_model(model_cls, quantized: QuantizedNetwork, *, input_shape,
                    num_classes) -> nnx.Module:
    """:func:`point_model` of ``quantized``: its kernels, biases, BatchNorms and widths."""
    return point_model(model_cls, quantized.kernels, quantized.biases, input_shape=input_shape,
                       num_classes=num_classes, norms=quantized.norms, widths=quantized.widths)


def set_norms(model: nnx.Module, norms: dict[str, NormParams]) -> None:
    """Set every BatchNorm of ``model`` to ``norms`` (by path), in running-average view.

    Raises:
        ValueError: ``norms`` does not name exactly the model's BatchNorms, or a channel count
            differs.
    """
    modules = batch_norms(model)
    if sorted(modules) != sorted(norms):
        raise ValueError(f"{type(model).__name__} has BatchNorms {sorted(modules)}, the network "
                         f"carries {sorted(norms)}")
    for path, norm in modules.items():
        params = norms[path]
        for field in NORM_FIELDS:
            value = np.asarray(getattr(params, field), np.float32)
            if value.shape != (norm.num_features,):
                raise ValueError(f"BatchNorm {path}: {field} of shape {value.shape} for "
                                 f"{norm.num_features} channels")
            getattr(norm, field)[...] = jnp.asarray(value)
        # A static attribute, not an array: the decoded network must divide by the ε it was
        # trained with (trainer.batch_norm.epsilon), whatever the factory's default is.
        norm.epsilon = float(params.epsilon)
        norm.use_running_average = True


#: File name of a run's quantized network (:func:`save_quantized`), which
#: ``python -m bayescomp.compress`` prefers over re-deriving the network from a checkpoint.
QUANTIZED_FILE = "quantized_network.npz"


def save_quantized(path, quantized: QuantizedNetwork) -> None:
    """Write ``quantized`` to an ``.npz`` file (numpy arrays only, no pickle), atomically.

    Keys: ``names`` (unicode array), ``kernel_{i}``, ``bias_{i}``, ``mask_{i}`` per layer
    ``i = 000, 001, …``, ``codebook_{i}`` for the layers that have one (``has_codebooks`` says
    whether the network carries a codebook list at all), and the :class:`BitPrecision` fields
    ``bits_per_layer``, ``exponent_bits``, ``bits_per_weight``, ``max_abs_weight``. A network
    with BatchNorms adds ``norm_paths`` (unicode, sorted), ``norm_{j}`` (``(4, C)`` float32: γ,
    β, running mean, running variance) and ``norm_epsilon`` (float64, one per BatchNorm); one
    with :attr:`QuantizedNetwork.widths` adds ``widths`` (int64). Files written before these
    keys existed are read as networks without them. Kernels, codebooks and BatchNorm
    parameters are stored as float32 bit patterns, so :func:`load_quantized` gives them back
    bit for bit.

    Args:
        path: The file to write (``RUN_DIR/quantized_network.npz`` by convention,
            :data:`QUANTIZED_FILE`).
        quantized: The network.
    """
    count = len(quantized.names)
    codebooks = quantized.codebooks
    arrays = {
        "names": np.asarray(quantized.names, dtype=str),
        "has_codebooks": np.asarray(codebooks is not None),
        "bits_per_layer": np.asarray(quantized.precision.bits_per_layer, np.int64),
        "exponent_bits": np.asarray(quantized.precision.exponent_bits, np.int64),
        "bits_per_weight": np.asarray(quantized.precision.bits_per_weight, np.int64),
        "max_abs_weight": np.asarray(quantized.precision.max_abs_weight, np.float64),
    }
    for i in range(count):
        arrays[f"kernel_{i:03d}"] = np.asarray(quantized.kernels[i], np.float32)
        arrays[f"bias_{i:03d}"] = np.asarray(quantized.biases[i], np.float32)
        arrays[f"mask_{i:03d}"] = np.asarray(quantized.masks[i], bool)
        if codebooks is not None and codebooks[i] is not None:
            arrays[f"codebook_{i:03d}"] = np.asarray(codebooks[i], np.float32)
    if quantized.norms is not None:
        norm_paths = sorted(quantized.norms)
        arrays["norm_paths"] = np.asarray(norm_paths, dtype=str)
        arrays["norm_epsilon"] = np.asarray([quantized.norms[p].epsilon for p in norm_paths],
                                            np.float64)
        for j, norm_path in enumerate(norm_paths):
            arrays[f"norm_{j:03d}"] = quantized.norms[norm_path].stacked()
    if quantized.widths is not None:
        arrays["widths"] = np.asarray(quantized.widths, np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic.write_bytes(path, buffer.getvalue())


def load_quantized(path) -> QuantizedNetwork:
    """Read a network written by :func:`save_quantized`.

    Raises:
        ConfigError: The file is missing, not an ``.npz`` file of this layout, or inconsistent
            (the message names it and says to rerun the run that wrote it).
    """
    import zipfile

    from bayescomp.errors import ConfigError

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{path}: {what}; rerun the run that wrote it (same command and "
                           "hydra.run.dir) to write it again")

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise bad("no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise bad(f"cannot be read as a quantized network ({error})") from None
    try:
        names = [str(name) for name in arrays["names"]]
        count = len(names)
        kernels = [arrays[f"kernel_{i:03d}"] for i in range(count)]
        biases = [arrays[f"bias_{i:03d}"] for i in range(count)]
        masks = [arrays[f"mask_{i:03d}"] for i in range(count)]
        codebooks = None
        if bool(arrays["has_codebooks"]):
            codebooks = [arrays.get(f"codebook_{i:03d}") for i in range(count)]
        precision = BitPrecision(
            bits_per_layer=[int(b) for b in arrays["bits_per_layer"]],
            exponent_bits=int(arrays["exponent_bits"]),
            bits_per_weight=[int(b) for b in arrays["bits_per_weight"]],
            max_abs_weight=float(arrays["max_abs_weight"]))
        norms = None
        if "norm_paths" in arrays:  # absent in files of networks without BatchNorms
            norms = {}
            for j, norm_path in enumerate(str(p) for p in arrays["norm_paths"]):
                values = arrays[f"norm_{j:03d}"]
                if (values.dtype != np.float32 or values.ndim != 2
                        or values.shape[0] != len(NORM_FIELDS)):
                    raise ValueError(f"norm_{j:03d} of {values.dtype} {values.shape}")
                norms[norm_path] = NormParams.from_stacked(values,
                                                           float(arrays["norm_epsilon"][j]))
        widths = (tuple(int(w) for w in arrays["widths"]) if "widths" in arrays else None)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise bad(f"is not a quantized network file (missing or bad entry {error})") from None
    for name, kernel, bias, mask in zip(names, kernels, biases, masks):
        if (kernel.dtype != np.float32 or mask.dtype != bool or mask.shape != kernel.shape
                or bias.shape != kernel.shape[-1:] or np.any(kernel[~mask] != 0)):
            raise bad(f"layer {name} is inconsistent (kernel, mask and bias shapes or dtypes, "
                      "or removed weights that are not 0)")
    if len(precision.bits_per_layer) != count:
        raise bad("bits_per_layer does not have one entry per layer")
    return QuantizedNetwork(names, kernels, biases, masks, precision, codebooks, norms, widths)
