"""The .bcz file: exact round trip, coder overhead, and every bad file giving CompressedFileError.

Networks are built by hand (no training): LeNet-300 and LeNet-5 with group-normal (GNJ)
posteriors and some groups dropped (structured pruning: positions "full"), and LeNet-300 with a
Gaussian (Sparse VD) posterior and unstructured masks (positions "bitmap" or "gaps").
"""

import json
import struct
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.compression import codec, container
from bayescomp.compression.quantize import point_model, quantize
from bayescomp.errors import CompressedFileError
from bayescomp.models import LeNet5, LeNet300
from bayescomp.nn import LayerFactory
from bayescomp.pruning import propagated_masks

NAMES = {LeNet300: "lenet300", LeNet5: "lenet5"}


def _sparse_vd(drop_fraction, periodic_fc1=False):
    model = LeNet300(LayerFactory(posterior="gaussian", prior="log_uniform", threshold=3.0),
                     rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for layer in (model.fc1, model.fc2, model.fc3):
        shape = layer.posterior.log_sigma2[...].shape
        dropped = rng.random(shape) < drop_fraction
        if periodic_fc1 and layer is model.fc1:  # every 17th weight kept: constant gaps
            dropped = (np.arange(np.prod(shape)) % 17 != 0).reshape(shape)
        log_sigma2 = np.where(dropped, 10.0, -20.0)
        layer.posterior.log_sigma2[...] = jnp.asarray(log_sigma2, jnp.float32)
    return model


def _case(name, group_pruned):
    if name == "lenet300-gnj":
        model = group_pruned(LeNet300, {"fc1": range(0, 784, 3), "fc2": range(0, 300, 2),
                                        "fc3": range(40)})
    elif name == "lenet5-gnj":
        model = group_pruned(LeNet5, {"conv1": [3, 5], "conv2": range(0, 50, 3),
                              "fc1": [j for j in range(800) if j % 7 == 0], "fc2": range(100)})
    elif name == "lenet300-gnj-6bit":
        # Posterior variances of a trained network's size: 2·Var ≈ 0.013 gives 6 significand
        # bits, so few distinct values and the entropy coder (not the fixed width) is chosen.
        model = group_pruned(LeNet300, {"fc1": range(0, 784, 3), "fc3": range(40)})
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.posterior.w_log_var[...] = jnp.full_like(layer.posterior.w_log_var[...], -5.0)
    elif name == "lenet300-svd-dense":
        model = _sparse_vd(0.05)
    else:
        model = _sparse_vd(0.95, periodic_fc1=True)
    quantized = quantize(model, propagated_masks(model))
    return type(model), quantized


CASES = ["lenet300-gnj", "lenet300-gnj-6bit", "lenet5-gnj", "lenet300-svd-dense",
         "lenet300-svd-sparse"]


@pytest.fixture(scope="module")
def encoded(group_pruned):
    """name -> (model class, QuantizedNetwork, file bytes), built once."""
    result = {}
    for name in CASES:
        model_cls, quantized = _case(name, group_pruned)
        data = codec.encode_network(quantized, model_name=NAMES[model_cls],
                                    input_shape=(28, 28, 1), num_classes=10)
        result[name] = (model_cls, quantized, data)
    return result


def _bits(array):
    # Raw float32 bit patterns: the round trip must be bit-identical (quantize() writes removed
    # weights as +0.0, never -0.0, and fixed-point rounding never yields -0.0).
    return np.asarray(array, np.float32).view(np.uint32)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_is_exact(encoded, name):
    model_cls, quantized, data = encoded[name]
    decoded = codec.decode_network(data)
    assert decoded.model_name == NAMES[model_cls]
    assert decoded.input_shape == (28, 28, 1) and decoded.num_classes == 10
    assert decoded.names == quantized.names
    assert decoded.precision == quantized.precision
    for kernel, mask, bias, d_kernel, d_mask, d_bias in zip(
            quantized.kernels, quantized.masks, quantized.biases,
            decoded.kernels, decoded.masks, decoded.biases):
        assert d_kernel.dtype == np.float32 and d_kernel.shape == kernel.shape
        np.testing.assert_array_equal(_bits(d_kernel), _bits(kernel))
        np.testing.assert_array_equal(d_mask, np.asarray(mask, bool))
        np.testing.assert_array_equal(d_bias.view(np.uint32), bias.view(np.uint32))
    assert decoded.file_bytes == len(data)


def test_position_codings_are_exercised(encoded):
    positions = {name: {layer.positions for layer in codec.decode_network(data).layers}
                 for name, (_, _, data) in encoded.items()}
    assert positions["lenet300-gnj"] == positions["lenet5-gnj"] == {"full"}
    assert "bitmap" in positions["lenet300-svd-dense"]
    # Random (i.i.d.) masks: the coded bitmap reaches N·H(p) with a 2-entry model and wins; a
    # regular pattern (fc1: every 17th weight) has constant gaps and a near-empty gap stream.
    assert positions["lenet300-svd-sparse"] == {"gaps", "bitmap"}


@pytest.mark.parametrize("name", ["lenet300-gnj", "lenet5-gnj", "lenet300-svd-sparse"])
def test_loaded_model_predicts_exactly_like_point_model(encoded, name, tmp_path):
    model_cls, quantized, data = encoded[name]
    path = tmp_path / "model.bcz"
    size = codec.save(path, quantized, model_name=NAMES[model_cls], input_shape=(28, 28, 1),
                      num_classes=10)
    assert size == len(data) == path.stat().st_size
    assert path.read_bytes() == data
    model, metadata = codec.load(path)
    assert type(model) is model_cls and metadata.file_bytes == size
    reference = point_model(model_cls, quantized.kernels, quantized.biases,
                            input_shape=(28, 28, 1), num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 28, 28, 1)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(reference(x)))


@pytest.mark.parametrize("name", CASES)
def test_coder_overhead_below_one_percent(encoded, name):
    # Coded value payload vs. the empirical entropy bound Σ −log2 p̂ of the same symbols, for
    # entropy-coded layers. The model (symbol table + counts) is counted separately
    # (value_model_bytes), not in this ratio. Layers stored at a fixed width were chosen because
    # that is smaller than payload + model, which test_fixed_width_is_chosen_only_when_smaller
    # checks.
    for layer in codec.decode_network(encoded[name][2]).layers:
        if layer.num_values > 1000 and layer.values_coding == "ans":
            assert layer.value_overhead <= 0.01, layer


def test_the_overhead_check_sees_entropy_coded_layers(encoded):
    big_ans = [layer for name in CASES for layer in codec.decode_network(encoded[name][2]).layers
               if layer.num_values > 1000 and layer.values_coding == "ans"]
    assert len(big_ans) >= 2


@pytest.mark.parametrize("name", CASES)
def test_fixed_width_is_chosen_only_when_smaller(encoded, name):
    from bayescomp.compression import entropy

    quantized = encoded[name][1]
    for layer, kernel, mask, bits in zip(codec.decode_network(encoded[name][2]).layers,
                                         quantized.kernels, quantized.masks,
                                         quantized.precision.bits_per_layer):
        values = np.rint(kernel[mask].astype(np.float64) * 2.0**bits).astype(np.int64)
        coded = entropy.encode(values)
        ans_bytes = len(coded.model) + len(coded.payload)
        fixed_bytes = len(codec._pack_fixed(values)[1])
        assert layer.values_coding == ("fixed" if fixed_bytes < ans_bytes else "ans")


# ---------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------


def _rejects(data, source="bad.bcz"):
    with pytest.raises(CompressedFileError) as info:
        codec.decode_network(data, source=source)
    message = str(info.value)
    assert source in message and ("bayescomp.compress" in message or "check the path" in message)
    return message


@pytest.fixture(scope="module")
def small_file(encoded):
    return encoded["lenet5-gnj"][2]


def test_truncated_files(small_file):
    rng = np.random.default_rng(0)
    lengths = list(range(0, 64)) + sorted(rng.integers(64, len(small_file), 60).tolist())
    lengths.append(len(small_file) - 1)
    for length in lengths:
        message = _rejects(small_file[:length])
        if length >= container.PREAMBLE_SIZE:
            assert "truncated" in message


def test_single_bit_flips(small_file):
    rng = np.random.default_rng(1)
    for position in rng.integers(0, 8 * len(small_file), 200):
        corrupt = bytearray(small_file)
        corrupt[position // 8] ^= 1 << (position % 8)
        _rejects(bytes(corrupt))


def test_trailing_bytes(small_file):
    assert "unexpected bytes" in _rejects(small_file + b"\x00")


def test_foreign_files(small_file):
    assert "empty" in _rejects(b"")
    assert "not a bayescomp" in _rejects(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert "not a bayescomp" in _rejects(b"BCZ\x01" + small_file[4:])
    rng = np.random.default_rng(2)
    for _ in range(20):
        _rejects(rng.bytes(int(rng.integers(1, 500))))
        _rejects(container.MAGIC + rng.bytes(int(rng.integers(0, 500))))


def test_wrong_version(small_file):
    newer = small_file[:4] + struct.pack("<H", 2) + small_file[6:]
    assert "unsupported format version 2" in _rejects(newer)


def _repacked(data, edit):
    """The file with its header edited and a valid checksum (a well-formed but lying file)."""
    header, payload = container.unpack(data)
    edit(header)
    return container.pack(header, payload)


def _layer(index, **fields):
    def edit(header):
        header["layers"][index].update(fields)
    return edit


@pytest.mark.parametrize("edit", [
    _layer(0, kernel_shape=[5, 5, 1]),
    _layer(0, kernel_shape=[5, 5, -1, 20]),
    _layer(0, kernel_shape=[5, 5, 1, 2**40]),
    _layer(1, kind="dense"),
    _layer(2, kept_inputs=799),
    _layer(2, num_values=12),
    _layer(0, significand_bits=-1),
    _layer(0, significand_bits="8"),
    _layer(3, positions="huffman"),
    _layer(3, streams={"input_keep": [0, 10**9]}),
    _layer(3, streams=None),
    lambda h: h["layers"][1]["streams"].update(values=[0, 4]),
    # An entropy-coded layer without its model (layer 0 may be stored at a fixed width: switch
    # it to "ans" first, which an empty model must then fail to decode).
    lambda h: (h["layers"][0].update(values_coding="ans"),
               h["layers"][0]["streams"].update(values_model=[0, 0])),
    _layer(0, values_coding="zip"),
    _layer(0, values_coding="fixed", value_width=99),
    _layer(0, values_coding="fixed", value_width=1),
    lambda h: h.update(layers=[]),
    lambda h: h.update(input_shape=[28, 28]),
    lambda h: h.update(payload_length=1),
    lambda h: h.update(coder="huffman"),
    lambda h: h.update(max_abs_weight=None),
    lambda h: h.pop("layers"),
])
def test_headers_describing_impossible_networks(small_file, edit):
    assert "malformed" in _rejects(_repacked(small_file, edit))


def test_header_that_is_not_json(small_file):
    header, payload = container.unpack(small_file)
    body = json.dumps(header).encode()[:-1]  # drop the closing brace
    length = container.PREAMBLE_SIZE + len(body) + len(payload) + 4
    raw = struct.pack("<4sHHQI", container.MAGIC, 1, 0, length, len(body)) + body + payload
    assert "not valid UTF-8 JSON" in _rejects(raw + struct.pack("<I", zlib.crc32(raw)))


def test_load_errors_name_the_file(tmp_path, small_file):
    with pytest.raises(CompressedFileError, match="missing.bcz"):
        codec.load(tmp_path / "missing.bcz")
    path = tmp_path / "cut.bcz"
    path.write_bytes(small_file[:-10])
    with pytest.raises(CompressedFileError, match="cut.bcz.*truncated"):
        codec.load(path)
    wrong = _repacked(small_file, lambda h: h.update(model="lenet300"))
    path.write_bytes(wrong)
    with pytest.raises(CompressedFileError, match="cut.bcz.*LeNet300"):
        codec.load(path)
    path.write_bytes(_repacked(small_file, lambda h: h.update(input_shape=[32, 32, 1])))
    with pytest.raises(CompressedFileError, match="do not match LeNet5"):
        codec.load(path)


def test_fuzz_only_compressed_file_errors(small_file):
    # Mixed corruptions (byte overwrites, cuts, insertions), each either decodes to the original
    # or raises CompressedFileError; nothing else may escape.
    rng = np.random.default_rng(3)
    for _ in range(150):
        corrupt = bytearray(small_file)
        kind = rng.integers(3)
        at = int(rng.integers(len(corrupt)))
        if kind == 0:
            corrupt[at] = int(rng.integers(256))
        elif kind == 1:
            del corrupt[at: at + int(rng.integers(1, 50))]
        else:
            corrupt[at:at] = rng.bytes(int(rng.integers(1, 50)))
        try:
            codec.decode_network(bytes(corrupt), source="fuzz.bcz")
        except CompressedFileError:
            continue
        assert bytes(corrupt) == small_file


def test_fixed_width_fallback_for_nearly_distinct_values():
    """An unpruned layer at 23 bits: ANS + histogram would exceed fixed-width storage.

    The file must choose the fixed width, stay below float32 size, and round-trip bit for bit.
    """
    from bayescomp.bit_precision import BitPrecision, round_to_bits
    from bayescomp.compression.quantize import QuantizedNetwork

    rng = np.random.default_rng(0)
    kernels, biases, masks = [], [], []
    for shape in [(784, 300), (300, 100), (100, 10)]:
        kernels.append(np.asarray(round_to_bits(rng.normal(0, 0.05, shape), 23), np.float32))
        biases.append(rng.normal(size=shape[-1]).astype(np.float32))
        masks.append(np.ones(shape, bool))
    quantized = QuantizedNetwork(["fc1", "fc2", "fc3"], kernels, biases, masks,
                                 BitPrecision([23, 23, 23], 2, [26, 26, 26], 0.3))
    data = codec.encode_network(quantized, model_name="lenet300", input_shape=(28, 28, 1),
                                num_classes=10)
    assert len(data) < 4 * sum(k.size for k in kernels)
    decoded = codec.decode_network(data)
    for original, restored in zip(kernels, decoded.kernels):
        np.testing.assert_array_equal(_bits(original), _bits(restored))
