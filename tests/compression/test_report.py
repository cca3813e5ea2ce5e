"""Tests of the compression columns (bayescomp.compression.report).

Hand-made networks check every column against arithmetic written out in comments; the published
Bayesian Compression architectures and bit widths (read from experiments/published/louizos2017.yaml)
check that the accounting reproduces the paper's Pruning and Fast Prediction ratios.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from bayescomp.bit_precision import bit_precision, round_to_bits
from bayescomp.compression import (
    architecture_string,
    compression_report,
    fast_prediction_ratio,
    huffman_code_lengths,
    kept_architecture,
    layer_storage_bits,
    max_compression_ratio,
    pruned_dense_shape,
    pruning_ratio,
    relative_index_diffs,
    structured_masks,
    unstructured_pruning_ratio,
)
from bayescomp.errors import ConfigError

PUBLISHED = Path(__file__).resolve().parents[2] / "experiments" / "published" / "louizos2017.yaml"


# ----------------------------------------------------------------------------------------------
# Hand-made networks (Flax layout: dense (in, out), conv (kh, kw, in, out))
# ----------------------------------------------------------------------------------------------


def _dense_network():
    """fc1 4→3 keeps inputs {0, 2} × outputs {0, 1}; fc2 3→2 keeps (in0, out0) and (in1, out1)."""
    mask_1 = np.zeros((4, 3), dtype=bool)
    mask_1[np.ix_([0, 2], [0, 1])] = True
    mask_2 = np.zeros((3, 2), dtype=bool)
    mask_2[0, 0] = mask_2[1, 1] = True
    return [mask_1, mask_2]


def test_dense_network_by_hand():
    masks = _dense_network()
    # t = [3, 5], E = 2, sign 1 -> bits per weight [6, 8].
    report = compression_report(masks, [3, 5], exponent_bits=2)
    # |W| = 4·3 + 3·2 = 18; |W≠0| = 4 + 2 = 6 -> 33.3 %.
    assert (report.weights_total, report.weights_kept) == (18, 6)
    assert report.percent_kept == pytest.approx(100 * 6 / 18)
    # Pruned dense matrices: fc1 2×2 (out {0,1} × in {0,2}); fc2 2×2 (out {0,1} × in {0,1}),
    # whose off-diagonal zeros stay because no row or column is entirely zero.
    assert [pruned_dense_shape(mask) for mask in masks] == [(2, 2), (2, 2)]
    assert report.weights_kept_dense == 8
    assert report.pruning == pytest.approx(18 / 8)  # 2.25
    assert report.pruning_unstructured == pytest.approx(18 / (2 * 6))  # 1.5
    # Fast Prediction: 32·18 / (4·6 + 4·8) = 576 / 56.
    assert report.bits_per_weight == [6, 8]
    assert report.fast_prediction == pytest.approx(576 / 56)
    # Maximum Compression, fixed-length codes (no weights given); view (out, in):
    #   fc1: bitmaps 3 + 4 = 7; pruned 2×2 full: dense 4·6 = 24 < sparse 4·(6 + 5) = 44 -> 31.
    #   fc2: bitmaps 2 + 3 = 5; pruned 2×2 with positions 0, 3 -> diffs 1, 3:
    #        sparse 2·(8 + 5) = 26 < dense 4·8 = 32 -> 31.
    assert layer_storage_bits(masks[0], 6).total_bits == 31
    storage_2 = layer_storage_bits(masks[1], 8)
    assert (storage_2.format, storage_2.total_bits) == ("sparse", 31)
    assert report.max_compression_mode == "fixed_length"
    assert report.max_compression == pytest.approx(576 / 62)
    # Dense layers are written by their kept inputs: 2 and 2.
    assert report.architecture == [2, 2]
    assert report.architecture_string == "2-2"


def test_dense_network_max_compression_with_huffman_by_hand():
    masks = _dense_network()
    weights_1 = np.zeros((4, 3))
    weights_1[np.ix_([0, 2], [0, 1])] = [[0.5, 0.5], [0.5, -0.25]]
    weights_2 = np.full((3, 2), 0.7)  # values outside the mask must be ignored
    weights_2[0, 0] = weights_2[1, 1] = 1.0
    report = compression_report(masks, [3, 5], exponent_bits=2, weights=[weights_1, weights_2])
    # A stream costs min(Huffman payload + code book, fixed length). Code book: per symbol its
    # fixed width + ceil(log2(max length + 1)) bits for its code length.
    # fc1 (6-bit values): pruned 2×2 = {0.5: 3, -0.25: 1} -> lengths 1, 1 -> 4 bits,
    #   book 2·(6 + 1) = 14 -> 18 (fixed 24) -> dense 18. Sparse: same values 18 + indices (four
    #   1s: one symbol, length 1) 4 + 1·(5 + 1) = 10 (fixed 20) -> 28. Dense: 7 + 18 = 25.
    # fc2 (8-bit values): dense [[1, 0], [0, 1]] = {0: 2, 1: 2} -> 4 + 2·(8 + 1) = 22 (fixed 32).
    #   Sparse: values {1: 2} -> 2 + 9 = 11 (fixed 16); diffs {1, 3} -> Huffman 2 + 2·(5 + 1)
    #   = 14, fixed 2·5 = 10 -> 10; sparse 21 < 22. Total 5 + 21 = 26.
    assert layer_storage_bits(masks[0], 6, weights_1).total_bits == 25
    storage_2 = layer_storage_bits(masks[1], 8, weights_2)
    assert (storage_2.format, storage_2.value_bits, storage_2.index_bits) == ("sparse", 11, 10)
    assert storage_2.total_bits == 26
    assert report.max_compression_mode == "huffman"
    assert report.max_compression == pytest.approx(576 / 51)
    # The other columns do not depend on the weights.
    assert report.fast_prediction == pytest.approx(576 / 56)


def test_conv_and_dense_network_by_hand():
    # conv 2×2, 2 → 3 channels keeps out {0, 2} × in {1}; fc 3 → 2 keeps in {0, 2} × out {0, 1}.
    conv_mask = np.zeros((2, 2, 2, 3), dtype=bool)
    conv_mask[:, :, 1, [0, 2]] = True
    dense_mask = np.zeros((3, 2), dtype=bool)
    dense_mask[[0, 2], :] = True
    masks = [conv_mask, dense_mask]
    report = compression_report(masks, [4, 6], exponent_bits=1)  # bits per weight [6, 8]
    # |W| = 2·2·2·3 + 3·2 = 30; kept 2·1·4 + 2·2 = 12 -> 40 %.
    assert (report.weights_total, report.weights_kept) == (30, 12)
    assert report.percent_kept == pytest.approx(40.0)
    # Conv view (out·in, kh·kw) = (6, 4): rows (o0, i1) and (o2, i1) -> 2×4 = 8. Dense 2×2 = 4.
    assert pruned_dense_shape(conv_mask) == (2, 4)
    assert report.pruning == pytest.approx(30 / 12)  # 2.5
    assert report.pruning_unstructured == pytest.approx(30 / 24)  # 1.25
    # Fast Prediction: 32·30 / (8·6 + 4·8) = 960 / 80 = 12.
    assert report.fast_prediction == pytest.approx(12.0)
    # Max, fixed length: the conv rows are all pairs of out {0, 2} × in {1}, so channel bitmaps
    # 3 + 2 describe them, plus 4 column bits; dense 8·6 = 48 (sparse 8·(6 + 8) = 112) -> 57.
    # fc bitmaps 2 + 3, dense 4·8 = 32 -> 37. 960 / 94.
    assert layer_storage_bits(conv_mask, 6).structure_bits == 3 + 2 + 4
    assert report.max_compression == pytest.approx(960 / 94)
    # conv written by kept outputs (2), dense by kept inputs (2).
    assert report.architecture == [2, 2]


def test_conv_rows_are_channel_pairs_and_columns_are_taps():
    # Two 1×1 channels, only (o0, i0) and (o1, i1) kept: both channels survive, but the view
    # (out·in, 1) drops the rows (o0, i1) and (o1, i0): 2 weights, not 2·2 = 4.
    mask = np.zeros((1, 1, 2, 2), dtype=bool)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 1] = True
    assert pruned_dense_shape(mask) == (2, 1)
    # Those pairs are not a product of channel sets: the row bitmap needs out·in = 4 bits (+ 1).
    assert layer_storage_bits(mask, 8).structure_bits == 4 + 1
    # A 3×3 kernel keeping only its centre tap: the view (1, 9) drops 8 columns.
    centre = np.zeros((3, 3, 1, 1), dtype=bool)
    centre[1, 1] = True
    assert pruned_dense_shape(centre) == (1, 1)


def test_torch_layout_gives_the_same_numbers():
    conv_flax = np.random.default_rng(0).random((3, 3, 4, 5)) < 0.3
    dense_flax = np.random.default_rng(1).random((5, 6)) < 0.5
    conv_torch, dense_torch = conv_flax.transpose(3, 2, 0, 1), dense_flax.T
    flax_report = compression_report([conv_flax, dense_flax], [4, 6], 2).to_dict()
    torch_report = compression_report([conv_torch, dense_torch], [4, 6], 2, layout="torch")
    assert flax_report == torch_report.to_dict()


def test_diagonal_layer_uses_sparse_storage_with_fillers():
    # A 40×40 identity mask: no row or column is empty, so Pruning = 1, but 1,560 of 1,600 entries
    # are zero. Row-major positions 0, 41, 82, ...: gaps 1 then 39 × 41; 41 > 32 = 2^5, so each
    # gap gets one filler (diff 32) and a remainder 9: 1 + 39·2 = 79 entries.
    mask = np.eye(40, dtype=bool)
    diffs, is_filler = relative_index_diffs(np.flatnonzero(mask), 5)
    assert diffs.size == 79 and is_filler.sum() == 39
    # Fixed length, 4-bit values: bitmaps 80 + sparse 79·(4 + 5) = 711 (dense 1,600·4 = 6,400).
    # |W| = 1,600 -> 32·1,600 / 791.
    assert max_compression_ratio([mask], [4]) == pytest.approx(51200 / 791)
    assert pruning_ratio([mask]) == 1.0
    assert unstructured_pruning_ratio([mask]) == pytest.approx(1600 / 80)
    assert fast_prediction_ratio([mask], [4]) == pytest.approx(51200 / 6400)
    # Huffman, all kept weights 0.5: values {0.5: 40, 0 (fillers): 39} -> lengths 1, 1:
    #   79 + 2·(4 + 1) = 89 (fixed 79·4 = 316). Diffs {1: 1, 32: 39, 9: 39} -> lengths
    #   {2, 2, 1} in some order: payload 1·2 + 39·2 + 39·1 = 119, book 3·(5 + ceil(log2 3) = 2)
    #   = 21 -> 140 (fixed 79·5 = 395).
    #   Total 80 + 89 + 140 = 309.
    storage = layer_storage_bits(mask, 4, np.where(mask, 0.5, 0.0))
    assert (storage.format, storage.value_bits, storage.index_bits) == ("sparse", 89, 140)
    assert max_compression_ratio([mask], [4], [np.where(mask, 0.5, 0.0)]) == pytest.approx(
        51200 / 309
    )


def test_weights_rounded_to_zero_need_no_slot():
    # fc 3 → 1, all kept, but the middle weight quantised to 0: view (1, 3) stores columns 0, 2.
    # Dense 1×2 of {0.5: 2}: 2 + 1·(6 + 1) = 9 (fixed 12); bitmaps 1 + 3 -> 13.
    storage = layer_storage_bits(np.ones((3, 1)), 6, np.array([[0.5], [0.0], [0.5]]))
    assert (storage.format, storage.total_bits) == ("dense", 13)


def test_relative_index_diffs_and_fillers():
    # b = 5, diffs 1..32. Gaps 1, 1, 39, 60: 39 = 32 (filler) + 7; 60 = 32 (filler) + 28.
    diffs, is_filler = relative_index_diffs([0, 1, 40, 100], 5)
    np.testing.assert_array_equal(diffs, [1, 1, 32, 7, 32, 28])
    np.testing.assert_array_equal(is_filler, [False, False, True, False, True, False])
    # A gap of exactly 2^b needs no filler; 2^b + 1 needs one.
    np.testing.assert_array_equal(relative_index_diffs([31], 5)[0], [32])
    np.testing.assert_array_equal(relative_index_diffs([32], 5)[0], [32, 1])
    assert relative_index_diffs([], 8)[0].size == 0
    with pytest.raises(ConfigError):
        relative_index_diffs([3, 3], 5)


def test_huffman_code_lengths():
    # 5, 2, 1, 1: merge 1+1 = 2, then 2+2 = 4, then 4+5: depths a 1, b 2, c 3, d 3.
    lengths = huffman_code_lengths({"a": 5, "b": 2, "c": 1, "d": 1})
    assert lengths == {"a": 1, "b": 2, "c": 3, "d": 3}
    assert huffman_code_lengths({"only": 7}) == {"only": 1}
    assert huffman_code_lengths({}) == {}
    # Kraft equality and H <= mean length < H + 1 on random histograms.
    rng = np.random.default_rng(3)
    for _ in range(20):
        counts = dict(enumerate(rng.integers(1, 1000, size=rng.integers(2, 60)).tolist()))
        lengths = huffman_code_lengths(counts)
        assert sum(2.0 ** -length for length in lengths.values()) == pytest.approx(1.0)
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
        mean_length = sum(counts[s] * lengths[s] for s in counts) / total
        assert entropy <= mean_length + 1e-12 < entropy + 1


def test_report_to_dict_is_json_ready():
    report = compression_report(_dense_network(), [3, 5], exponent_bits=2)
    as_dict = report.to_dict()
    assert set(as_dict["compression"]) == {"pruning", "fast_prediction", "max_compression"}
    assert as_dict["architecture_string"] == "2-2"
    assert json.loads(json.dumps(as_dict)) == as_dict


def test_report_rejects_bad_input():
    with pytest.raises(ConfigError):
        compression_report(_dense_network(), [3], exponent_bits=2)
    with pytest.raises(ConfigError):
        compression_report([np.zeros((3, 2))], [3], exponent_bits=2)  # nothing kept
    with pytest.raises(ConfigError):
        compression_report([np.ones(5)], [3], exponent_bits=2)  # neither dense nor conv


def test_report_from_a_posterior():
    # End to end: bit precision from posterior moments, quantised weights, Huffman report.
    rng = np.random.default_rng(4)
    masks = structured_masks([(3, 3, 1, 4), (36, 10)], [3, 20])
    means = [rng.normal(0, 0.3, size=mask.shape) * mask for mask in masks]
    variances = [np.full(mask.shape, 1e-4) for mask in masks]
    widths = bit_precision(means, variances, masks)
    quantised = [
        round_to_bits(mean, bits) for mean, bits in zip(means, widths.bits_per_layer)
    ]
    report = compression_report(
        masks, widths.bits_per_layer, widths.exponent_bits, weights=quantised
    )
    # 2·1e-4 = 2e-4 < 2^-12 = 2.4e-4, not < 2^-13: 12 significand bits everywhere.
    assert report.bits_per_layer == [12, 12]
    assert report.architecture == [3, 20]
    # Huffman codes of real histograms never cost more than the fixed-length codes.
    fixed = compression_report(masks, widths.bits_per_layer, widths.exponent_bits)
    assert report.max_compression >= fixed.max_compression > 1.0


# ----------------------------------------------------------------------------------------------
# Published architectures (Louizos et al. 2017, seed slides)
# ----------------------------------------------------------------------------------------------
#
# What reproduces the published ratios. With the printed per-layer bit widths b_l taken as the
# *whole* width of a stored weight, i.e. no sign or exponent bits on top (s + E = 0, which is
# E = -1 in the tutorial's unguarded formula, reached when 0.545 < max|E[w]| <= 0.595), and the
# ratios *truncated* to integers, the structured accounting gives the published Pruning and Fast
# Prediction exactly in 5 of the 6 BC rows:
#
#   row                    Pruning        published   Fast Prediction   published
#   LeNet-300-100 BC-GNJ   266200/28648 =  9.29 -> 9    36.84 -> 36        36
#   LeNet-300-100 BC-GHS   266200/28090 =  9.48 -> 9    23.51 -> 23        23
#   LeNet-5 BC-GHS         430500/2751  = 156.5 -> 156  419.3 -> 419       419
#   VGG BC-GNJ             14977728/1001286 = 14.96 -> 14   56.78 -> 56    56
#   VGG BC-GHS             14977728/822236  = 18.22 -> 18   59.85 -> 59    59
#   LeNet-5 BC-GNJ         430500/4074  = 105.7 -> 105  355.3 -> 355   108 / 361
#
# Rounding instead of truncating would give 37, 24, 15 and 60 in four of those cells, and any
# s + E >= 1 lowers every Fast Prediction well below the published value (LeNet-300 BC-GNJ:
# 32.8 at s + E = 1, 29.5 at the guarded tutorial width s + E = 2; VGG BC-GNJ 50.8 / 45.9), so
# the published column carries no sign/exponent bits beyond the printed widths.
#
# LeNet-5 BC-GNJ (8-13-88-13, bits 18-10-7-9) is the one row that does not reproduce: conv1
# 8·1·25 = 200, conv2 13·8·25 = 2,600 (the in-channels are the 8 kept by conv1), fc1 88·13 =
# 1,144, fc2 13·10 = 130, 4,074 weights (0.95 %, matching the printed 0.9). 108 and 361 need
# about 3,950-3,986 weights and a bit sum of 38,056-38,161 instead of 38,778. A single-entry
# change reproduces both truncated ratios: 8-13-81-13 or 8-13-88-12 (checked below), so the
# printed architecture probably has a typo or counts fc1 differently; the seed cannot tell
# which. This row is held to 3 % (Pruning is 2.2 % low, Fast Prediction 1.6 %), the size of
# that discrepancy, instead of the exact truncated match.

EXACT_TOLERANCE_EXCEPTIONS = {("lenet_5_caffe", "BC-GNJ"): 0.03}


def _published():
    with open(PUBLISHED) as file:
        return yaml.safe_load(file)


def _kernel_shapes(model):
    shapes = []
    for layer in model["layers"]:
        if layer["kind"] == "conv":
            shapes.append((*layer["kernel"], layer["in"], layer["out"]))
        else:
            shapes.append((layer["in"], layer["out"]))
    return shapes


def _rows_where(predicate):
    rows = []
    for model_key, model in _published()["models"].items():
        for method, row in model["methods"].items():
            if predicate(row):
                rows.append(pytest.param(model_key, method, id=f"{model_key}-{method}"))
    return rows


def _published_report(model_key, method, extra_bits=0):
    model = _published()["models"][model_key]
    row = model["methods"][method]
    masks = structured_masks(_kernel_shapes(model), row["pruned_architecture"])
    report = compression_report(
        masks, row["bit_precision"], exponent_bits=extra_bits, sign_bits=0
    )
    return report, row


BC_ROWS = [
    pytest.param(model_key, method, id=f"{model_key}-{method}")
    for model_key in ("lenet_300_100", "lenet_5_caffe", "vgg")
    for method in ("BC-GNJ", "BC-GHS")
]


def test_published_full_architectures_match_the_layers():
    # The printed "784-300-100", "20-50-800-500" and VGG widths are kept_architecture of the
    # unpruned layers; LeNet-5's |W| is 430,500 and LeNet-300-100's 266,200 (Louizos et al. 2017, Table 2).
    sizes = {}
    for key, model in _published()["models"].items():
        full = [np.ones(shape, dtype=bool) for shape in _kernel_shapes(model)]
        assert kept_architecture(full) == model["architecture"], key
        sizes[key] = sum(mask.size for mask in full)
    assert sizes == {"lenet_300_100": 266200, "lenet_5_caffe": 430500, "vgg": 14977728}


@pytest.mark.parametrize(
    "model_key, method", _rows_where(lambda row: row["pruned_architecture"] is not None)
)
def test_structured_masks_round_trip_the_published_architectures(model_key, method):
    model = _published()["models"][model_key]
    architecture = model["methods"][method]["pruned_architecture"]
    masks = structured_masks(_kernel_shapes(model), architecture)
    assert kept_architecture(masks) == architecture
    assert architecture_string(architecture).count("-") == len(architecture) - 1


@pytest.mark.parametrize("model_key, method", BC_ROWS)
def test_published_bc_ratios_are_reproduced(model_key, method):
    report, row = _published_report(model_key, method)
    # |w≠0|/|w| is printed to one decimal.
    assert round(report.percent_kept, 1) == row["percent_kept"]
    published = (row["pruning"]["value"], row["fast_prediction"]["value"])
    ours = (report.pruning, report.fast_prediction)
    tolerance = EXACT_TOLERANCE_EXCEPTIONS.get((model_key, method))
    if tolerance is None:
        # Truncated, as the paper prints them (see the table above).
        assert tuple(math.floor(value) for value in ours) == published
    else:
        np.testing.assert_allclose(ours, published, rtol=tolerance)


@pytest.mark.parametrize("model_key, method", BC_ROWS)
def test_published_fast_prediction_has_no_sign_or_exponent_bits(model_key, method):
    # One extra bit per weight already misses every published Fast Prediction by more than 5 %.
    report, row = _published_report(model_key, method, extra_bits=1)
    assert report.fast_prediction < 0.95 * row["fast_prediction"]["value"]


def test_lenet5_gnj_single_typo_hypotheses():
    model = _published()["models"]["lenet_5_caffe"]
    row = model["methods"]["BC-GNJ"]
    published = (row["pruning"]["value"], row["fast_prediction"]["value"])
    for change in ({2: 81}, {3: 12}):
        architecture = list(row["pruned_architecture"])
        for index, value in change.items():
            architecture[index] = value
        masks = structured_masks(_kernel_shapes(model), architecture)
        report = compression_report(masks, row["bit_precision"], exponent_bits=0, sign_bits=0)
        assert (math.floor(report.pruning), math.floor(report.fast_prediction)) == published


@pytest.mark.parametrize("model_key, method", BC_ROWS)
def test_fixed_length_max_compression_is_below_fast_prediction(model_key, method):
    # Without weights, Maximum Compression stores the same fixed-length values plus the row and
    # column bitmaps, so it cannot beat Fast Prediction; the published Maximum Compression needs
    # the real value histograms (Huffman), which the slides do not give.
    report, row = _published_report(model_key, method)
    assert report.max_compression < report.fast_prediction


@pytest.mark.parametrize(
    "model_key, method", _rows_where(lambda row: row["pruning"] and row["pruning"]["starred"])
)
def test_starred_pruning_is_the_unstructured_accounting(model_key, method):
    # Starred entries fit |W| / (2|W≠0|) within the rounding of the printed % (± 0.05).
    model = _published()["models"][model_key]
    row = model["methods"][method]
    weights_total = sum(math.prod(shape) for shape in _kernel_shapes(model))
    bounds = []
    for percent in (row["percent_kept"] + 0.05, row["percent_kept"] - 0.05):
        kept = round(weights_total * percent / 100)
        mask = np.zeros((1, weights_total), dtype=bool)
        mask[0, :kept] = True
        bounds.append(unstructured_pruning_ratio([mask]))
    assert math.floor(bounds[0]) <= row["pruning"]["value"] <= math.ceil(bounds[1])


def test_pruning_column_follows_the_accounting():
    # Unstructured methods (DC, SWS) report |W| / (2|W≠0|) in the Pruning column, structured
    # ones |W| / Σ N_l; both ratios are always in the dict.
    masks = _dense_network()
    structured = compression_report(masks, [3, 5], exponent_bits=2).to_dict()
    unstructured = compression_report(masks, [3, 5], exponent_bits=2,
                                      pruning_accounting="unstructured").to_dict()
    assert structured["compression"]["pruning"] == structured["pruning_structured"]
    assert unstructured["compression"]["pruning"] == unstructured["pruning_unstructured"]
    assert structured["pruning_unstructured"] == unstructured["pruning_unstructured"]
    assert unstructured["pruning_accounting"] == "unstructured"
    with pytest.raises(ConfigError):
        compression_report(masks, [3, 5], exponent_bits=2, pruning_accounting="starred")
