"""The .bcz file: exact round trip, coder overhead, and every bad file giving CompressedFileError.

Networks are built by hand (no training): LeNet-300 and LeNet-5 with group-normal (GNJ)
posteriors and some groups dropped (structured pruning: positions "full"), LeNet-300 with a
Gaussian (Sparse VD) posterior and unstructured masks (positions "bitmap" or "gaps"), and
weight-shared (codebook, format version 2) networks with unstructured masks as Deep Compression
leaves them. Version-1 files (fixed point only) must stay readable.
"""

import json
import pathlib
import struct
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bayescomp.compression import codec, container
from bayescomp.compression.quantize import QuantizedNetwork, point_model, quantize
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
    newer = small_file[:4] + struct.pack("<H", container.VERSION + 1) + small_file[6:]
    assert f"unsupported format version {container.VERSION + 1}" in _rejects(newer)


def _repacked(data, edit):
    """The file with its header edited and a valid checksum (a well-formed but lying file), of
    the file's own version."""
    version, header, payload = container.read(data)
    edit(header)
    return container.pack(header, payload, version)


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


@pytest.mark.parametrize("which", ["fixed_point", "codebook"])
def test_fuzz_only_compressed_file_errors(small_file, codebook_files, which):
    # Mixed corruptions (byte overwrites, cuts, insertions), each either decodes to the original
    # or raises CompressedFileError; nothing else may escape.
    original = small_file if which == "fixed_point" else codebook_files["lenet5-mixed"][1]
    rng = np.random.default_rng(3)
    for _ in range(150):
        corrupt = bytearray(original)
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
        assert bytes(corrupt) == original


def test_fixed_width_fallback_for_nearly_distinct_values():
    """An unpruned layer at 23 bits: ANS + histogram would exceed fixed-width storage.

    The file must choose the fixed width, stay below float32 size, and round-trip bit for bit.
    """
    from bayescomp.bit_precision import BitPrecision, round_to_bits

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


# ---------------------------------------------------------------------------------------------
# Weight-shared (codebook) layers, format version 2
# ---------------------------------------------------------------------------------------------


def _codebook_network(model_cls, keep, sizes, *, zero_in=(), fixed_point=(), uniform=(), seed=0):
    """A pruned network whose kept weights are drawn from a per-layer codebook.

    Args:
        model_cls: ``LeNet300`` or ``LeNet5``.
        keep: Kept fraction per layer (unstructured, i.i.d. masks).
        sizes: Codebook size per layer.
        zero_in: Layers whose codebook contains +0.0 (kept weights that are exactly 0).
        fixed_point: Layers stored as fixed point (8 significand bits) instead.
        uniform: Layers whose indices are uniform (else peaked in the middle of the codebook,
            as the centroids of bell-shaped weights are used).
    """
    from bayescomp.bit_precision import BitPrecision, round_to_bits

    rng = np.random.default_rng(seed)
    model = model_cls(LayerFactory(), rngs=nnx.Rngs(0))
    names, kernels, biases, masks, codebooks, bits = [], [], [], [], [], []
    for (name, layer), fraction, size in zip(
            [(n, getattr(model, n)) for n in model_cls.layer_names], keep, sizes):
        shape = layer.posterior.weight[...].shape
        mask = rng.random(shape) < fraction
        if name in fixed_point:
            kernel = np.where(mask, np.asarray(round_to_bits(rng.normal(0, 0.1, shape), 8)),
                              0.0).astype(np.float32)
            codebook, width = None, 8
        else:
            codebook = np.unique(rng.normal(0, 0.1, size).astype(np.float32))
            if name in zero_in:
                codebook = np.unique(np.append(codebook[1:], np.float32(0.0)))
            assert codebook.size == size
            p = np.exp(-0.5 * ((np.arange(size) - size / 2) / (size / 6)) ** 2)
            p = None if name in uniform else p / p.sum()
            kernel = np.where(mask, codebook[rng.choice(size, shape, p=p)], np.float32(0.0))
            kernel = kernel.astype(np.float32)
            width = (size - 1).bit_length()
        names.append(name)
        kernels.append(kernel)
        biases.append(rng.normal(size=shape[-1]).astype(np.float32))
        masks.append(mask)
        codebooks.append(codebook)
        bits.append(width)
    precision = BitPrecision(bits, 0, bits, float(max(np.abs(k).max() for k in kernels)))
    return QuantizedNetwork(names, kernels, biases, masks, precision, codebooks)


CODEBOOK_CASES = {
    # Deep Compression's LeNet-300-100: 8 / 9 / 26 % kept, 5-bit (32-entry) codebooks; fc2's
    # codebook holds 0 (kept weights that are exactly zero), fc1's and fc3's do not.
    "lenet300-dc": (LeNet300, dict(keep=(0.08, 0.09, 0.26), sizes=(32, 32, 32), zero_in=("fc2",))),
    # LeNet-5: 8-bit (256-entry) codebooks on the convs (conv2's uniform indices are stored at a
    # fixed width: the histogram costs more than coding saves), one fixed-point layer (fc2) and
    # a one-entry codebook (fc1: zero-width indices).
    "lenet5-mixed": (LeNet5, dict(keep=(0.66, 0.12, 0.08, 0.19), sizes=(256, 256, 1, 0),
                                  zero_in=("conv1",), fixed_point=("fc2",), uniform=("conv2",))),
}


@pytest.fixture(scope="module")
def codebook_files():
    """name -> (QuantizedNetwork, file bytes)."""
    result = {}
    for name, (model_cls, kwargs) in CODEBOOK_CASES.items():
        quantized = _codebook_network(model_cls, **kwargs)
        result[name] = (quantized, codec.encode_network(
            quantized, model_name=NAMES[model_cls], input_shape=(28, 28, 1), num_classes=10))
    return result


@pytest.mark.parametrize("name", list(CODEBOOK_CASES))
def test_codebook_round_trip_is_exact(codebook_files, name):
    quantized, data = codebook_files[name]
    decoded = codec.decode_network(data)
    # Version 2 is the oldest that holds codebooks; no BatchNorms, so no need for version 3.
    assert decoded.version == 2
    assert decoded.precision == quantized.precision
    for kernel, mask, bias, codebook, d_kernel, d_mask, d_bias, d_codebook, layer in zip(
            quantized.kernels, quantized.masks, quantized.biases, quantized.codebooks,
            decoded.kernels, decoded.masks, decoded.biases, decoded.codebooks, decoded.layers):
        np.testing.assert_array_equal(_bits(d_kernel), _bits(kernel))
        np.testing.assert_array_equal(d_mask, mask)
        np.testing.assert_array_equal(d_bias.view(np.uint32), bias.view(np.uint32))
        if codebook is None:
            assert d_codebook is None and layer.values_kind == "fixed_point"
        else:
            assert layer.values_kind == "codebook" and layer.codebook_bytes == 4 * codebook.size
            np.testing.assert_array_equal(_bits(d_codebook), _bits(codebook))
            assert layer.positions in ("bitmap", "gaps")  # unstructured masks
    # The quantized view carries the codebooks along.
    assert decoded.quantized.codebooks is decoded.codebooks


def test_codebook_with_and_without_zero(codebook_files):
    quantized, data = codebook_files["lenet300-dc"]
    decoded = codec.decode_network(data)
    has_zero = [bool(np.any(c == 0)) for c in decoded.codebooks]
    assert has_zero == [False, True, False]
    # fc2: some kept weights are exactly 0 and stay kept (in the mask) after decoding.
    kept_zeros = decoded.masks[1] & (decoded.kernels[1] == 0)
    assert kept_zeros.any()
    np.testing.assert_array_equal(kept_zeros, quantized.masks[1] & (quantized.kernels[1] == 0))


def test_codebook_index_codings(codebook_files):
    from bayescomp.compression import entropy

    layers = codec.decode_network(codebook_files["lenet5-mixed"][1]).layers
    assert [layer.values_kind for layer in layers] == ["codebook"] * 3 + ["fixed_point"]
    codings = {layer.name: layer.values_coding for layer in layers}
    assert codings["conv2"] == "fixed"
    # One entry: every index is 0 and takes 0 bits at a fixed width; nothing is stored.
    assert codings["fc1"] == "fixed" and layers[2].value_bytes == layers[2].value_model_bytes == 0
    for layer in codec.decode_network(codebook_files["lenet300-dc"][1]).layers[:2]:
        # 32 entries, peaked use: on thousands of indices the ANS payload plus its table beats
        # 5 bits each (fc3's 260 indices may not pay for the table; checked below).
        assert layer.values_coding == "ans" and layer.value_overhead <= 0.01
    quantized = codebook_files["lenet300-dc"][0]
    for layer, kernel, mask, codebook in zip(
            codec.decode_network(codebook_files["lenet300-dc"][1]).layers, quantized.kernels,
            quantized.masks, quantized.codebooks):
        indices = np.searchsorted(codebook, kernel[mask])
        coded = entropy.encode(indices)
        fixed_bytes = -(-indices.size * (codebook.size - 1).bit_length() // 8)
        assert layer.values_coding == (
            "fixed" if fixed_bytes < len(coded.model) + len(coded.payload) else "ans")


def test_loaded_codebook_model_predicts_like_point_model(codebook_files, tmp_path):
    quantized, _ = codebook_files["lenet5-mixed"]
    path = tmp_path / "dc.bcz"
    codec.save(path, quantized, model_name="lenet5", input_shape=(28, 28, 1), num_classes=10)
    model, _ = codec.load(path)
    reference = point_model(LeNet5, quantized.kernels, quantized.biases,
                            input_shape=(28, 28, 1), num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 28, 28, 1)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(reference(x)))


def test_codebook_encoder_refuses_weights_off_the_codebook(codebook_files):
    import dataclasses

    quantized, _ = codebook_files["lenet300-dc"]
    kernels = [k.copy() for k in quantized.kernels]
    kept = np.flatnonzero(quantized.masks[0])
    kernels[0].flat[kept[0]] = np.nextafter(kernels[0].flat[kept[0]], np.float32(1))
    with pytest.raises(ValueError, match="not all codebook entries"):
        codec.encode_network(dataclasses.replace(quantized, kernels=kernels),
                             model_name="lenet300", input_shape=(28, 28, 1), num_classes=10)
    # -0.0 is not the codebook's +0.0: the round trip would not be bit-identical.
    kernels = [k.copy() for k in quantized.kernels]
    zero_at = np.flatnonzero(quantized.masks[1] & (quantized.kernels[1] == 0))[0]
    kernels[1].flat[zero_at] = np.float32(-0.0)
    with pytest.raises(ValueError, match="bit for bit"):
        codec.encode_network(dataclasses.replace(quantized, kernels=kernels),
                             model_name="lenet300", input_shape=(28, 28, 1), num_classes=10)
    unsorted = list(quantized.codebooks)
    unsorted[2] = unsorted[2][::-1].copy()
    with pytest.raises(ValueError, match="strictly increasing"):
        codec.encode_network(dataclasses.replace(quantized, codebooks=unsorted),
                             model_name="lenet300", input_shape=(28, 28, 1), num_classes=10)


def _as_version_1(data):
    """A fixed-point file rewritten as version 1 wrote it: no values_kind, version 1 preamble."""
    header, payload = container.unpack(data)
    for layer in header["layers"]:
        assert layer.pop("values_kind") == "fixed_point"
    return container.pack(header, payload, version=1)


def test_version_1_files_are_still_read(encoded):
    for name in ("lenet5-gnj", "lenet300-svd-sparse"):
        _, quantized, data = encoded[name]
        old = _as_version_1(data)
        assert struct.unpack_from("<H", old, 4) == (1,)
        decoded = codec.decode_network(old)
        assert decoded.version == 1 and decoded.codebooks is None
        for kernel, d_kernel in zip(quantized.kernels, decoded.kernels):
            np.testing.assert_array_equal(_bits(d_kernel), _bits(kernel))


#: A real version-1 file: results/fashion_mnist/lenet300_svd/seed0/model.bcz as committed at
#: e88a448 (written by that commit's coder; its metrics.json recorded 6144 kept weights,
#: architecture 752-76-51 and 11185 bytes). Kept as a fixture because results/ is rewritten.
VERSION_1_FILE = pathlib.Path(__file__).parent / "data" / "lenet300_svd_version1.bcz"


def test_a_real_version_1_file_is_still_read():
    assert VERSION_1_FILE.read_bytes()[4:6] == struct.pack("<H", 1)
    model, decoded = codec.load(VERSION_1_FILE)
    assert decoded.version == 1 and decoded.codebooks is None
    assert decoded.file_bytes == VERSION_1_FILE.stat().st_size == 11185
    assert sum(int(mask.sum()) for mask in decoded.masks) == 6144
    assert [k.shape for k in decoded.kernels] == [(784, 300), (300, 100), (100, 10)]


def test_a_version_1_file_cannot_hold_codebook_layers(codebook_files):
    header, payload = container.unpack(codebook_files["lenet300-dc"][1])
    assert "malformed" in _rejects(container.pack(header, payload, version=1))


@pytest.mark.parametrize("edit", [
    _layer(0, codebook_size=31),
    _layer(0, codebook_size=0),
    _layer(0, codebook_size=2**30),
    _layer(0, index_bits=-1),
    _layer(0, values_kind="huffman"),
    lambda h: h["layers"][0].pop("values_kind"),
    lambda h: h["layers"][0]["streams"].pop("codebook"),
    # The codebook read from the bias bytes: not sorted, or the indices do not fit.
    lambda h: h["layers"][2]["streams"].update(codebook=h["layers"][0]["streams"]["bias"][:1]
                                               + [128]),
    lambda h: h["layers"][2].update(values_coding="fixed", value_width=4),
])
def test_headers_describing_impossible_codebook_layers(codebook_files, edit):
    assert "malformed" in _rejects(_repacked(codebook_files["lenet300-dc"][1], edit))


# ---------------------------------------------------------------------------------------------
# quantized_network.npz (quantize.save_quantized / load_quantized)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["lenet5-mixed", "fixed_point"])
def test_saved_quantized_network_round_trips(codebook_files, encoded, which, tmp_path):
    from bayescomp.compression import quantize as quantize_lib

    quantized = (codebook_files[which][0] if which != "fixed_point"
                 else encoded["lenet300-svd-sparse"][1])
    path = tmp_path / "quantized_network.npz"
    quantize_lib.save_quantized(path, quantized)
    loaded = quantize_lib.load_quantized(path)
    assert loaded.names == quantized.names and loaded.precision == quantized.precision
    for a, b in zip(quantized.kernels + quantized.biases, loaded.kernels + loaded.biases):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    for a, b in zip(quantized.masks, loaded.masks):
        np.testing.assert_array_equal(np.asarray(a, bool), b)
    if quantized.codebooks is None:
        assert loaded.codebooks is None
    else:
        for a, b in zip(quantized.codebooks, loaded.codebooks):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(_bits(a), _bits(b))


def test_bad_quantized_network_files_are_config_errors(tmp_path):
    from bayescomp.compression import quantize as quantize_lib
    from bayescomp.errors import ConfigError

    with pytest.raises(ConfigError, match="no such file"):
        quantize_lib.load_quantized(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match="cannot be read"):
        quantize_lib.load_quantized(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ConfigError, match="not a quantized network"):
        quantize_lib.load_quantized(tmp_path / "other.npz")
