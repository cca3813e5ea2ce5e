"""From a trained variational network to the pruned, bit-reduced network that is evaluated.

Louizos et al. (2017) evaluate the network whose kept weights are the posterior means rounded to
each layer's significand bits, with no fine-tuning (the authors' ``example.py`` and
``compression.py``, github.com/KarenUllrich/Tutorial_BayesianCompressionForDL). This module builds
exactly that network as a model of the same class with point weights (a ``Delta`` posterior), so
its error is measured by the same evaluation code as every other network.
"""

from __future__ import annotations

import dataclasses
import io

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp import atomic
from bayescomp.bit_precision import BitPrecision, bit_precision, round_to_bits
from bayescomp.models import hidden_widths
from bayescomp.models.graph import weight_layers
from bayescomp.nn.factory import LayerFactory
from bayescomp.pruning import masked_bias


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
    """

    names: list[str]
    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    masks: list[np.ndarray]
    precision: BitPrecision
    codebooks: list[np.ndarray | None] | None = None


def quantize(model: nnx.Module, masks: dict[str, np.ndarray]) -> QuantizedNetwork:
    """Bit precision from the posterior variances, then rounding of the kept posterior means.

    Args:
        model: A trained model of variational layers.
        masks: Propagated keep masks by layer path (:func:`bayescomp.pruning.propagated_masks`).

    Returns:
        The :class:`QuantizedNetwork`.
    """
    layers = weight_layers(model)
    names = [name for name, _ in layers]
    means = [np.asarray(layer.posterior.mean(), np.float64) for _, layer in layers]
    variances = [np.asarray(layer.posterior.variance(), np.float64) for _, layer in layers]
    mask_list = [masks[name] for name in names]
    precision = bit_precision(means, variances, mask_list)
    kernels, biases = [], []
    for (name, layer), mean, mask, bits in zip(layers, means, mask_list, precision.bits_per_layer):
        # np.where, not a product: a removed weight is +0.0 exactly (never -0.0), so the kernels
        # survive a round trip through the compressed file bit for bit.
        kernels.append(np.where(mask, np.asarray(round_to_bits(mean, bits)), 0.0).astype(
            np.float32))
        biases.append(masked_bias(layer, mask))  # a removed output channel may take its bias
    return QuantizedNetwork(names, kernels, biases, mask_list, precision)


def point_model(model_cls, kernels, biases, *, input_shape, num_classes) -> nnx.Module:
    """A model of ``model_cls`` with point weights set to ``kernels`` and ``biases``.

    Args:
        model_cls: A model class from :mod:`bayescomp.models`.
        kernels: One kernel per layer, in the model's ``layer_names`` order and layout.
        biases: One bias per layer.
        input_shape: ``(h, w, c)``.
        num_classes: Number of outputs.

    The hidden widths are read off the kernels (``model.widths`` of the run).

    Returns:
        The deterministic model (point weights need no random key in any view).
    """
    model = model_cls(LayerFactory(), rngs=nnx.Rngs(params=0), input_shape=tuple(input_shape),
                      num_classes=num_classes, widths=hidden_widths(kernels))
    layers = weight_layers(model)
    if len(layers) != len(kernels):
        raise ValueError(f"{model_cls.__name__} has {len(layers)} layers, got {len(kernels)} kernels")
    for (_, layer), kernel, bias in zip(layers, kernels, biases):
        layer.posterior.weight[...] = jnp.asarray(kernel, jnp.float32)
        layer.bias[...] = jnp.asarray(bias, jnp.float32)
    return model


#: File name of a run's quantized network (:func:`save_quantized`), which
#: ``python -m bayescomp.compress`` prefers over re-deriving the network from a checkpoint.
QUANTIZED_FILE = "quantized_network.npz"


def save_quantized(path, quantized: QuantizedNetwork) -> None:
    """Write ``quantized`` to an ``.npz`` file (numpy arrays only, no pickle), atomically.

    Keys: ``names`` (unicode array), ``kernel_{i}``, ``bias_{i}``, ``mask_{i}`` per layer
    ``i = 000, 001, …``, ``codebook_{i}`` for the layers that have one (``has_codebooks`` says
    whether the network carries a codebook list at all), and the :class:`BitPrecision` fields
    ``bits_per_layer``, ``exponent_bits``, ``bits_per_weight``, ``max_abs_weight``. Kernels and
    codebooks are stored as float32 bit patterns, so :func:`load_quantized` gives them back bit
    for bit.

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
    except (KeyError, TypeError, ValueError) as error:
        raise bad(f"is not a quantized network file (missing or bad entry {error})") from None
    for name, kernel, bias, mask in zip(names, kernels, biases, masks):
        if (kernel.dtype != np.float32 or mask.dtype != bool or mask.shape != kernel.shape
                or bias.shape != kernel.shape[-1:] or np.any(kernel[~mask] != 0)):
            raise bad(f"layer {name} is inconsistent (kernel, mask and bias shapes or dtypes, "
                      "or removed weights that are not 0)")
    if len(precision.bits_per_layer) != count:
        raise bad("bits_per_layer does not have one entry per layer")
    return QuantizedNetwork(names, kernels, biases, masks, precision, codebooks)
