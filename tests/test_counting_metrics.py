"""``counting`` of a pruned network (bayescomp/counting.py) and in every run's ``metrics.json``.

The structural count must be the exported network's (its kernels' sizes), and equal
``counting.count`` with keep vectors where whole units are pruned; ``nonzero_macs`` is the kept
weights times the output positions.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from bayescomp import counting, metrics, pruning
from bayescomp.compression import quantize
from bayescomp.compression.export import export_model, export_pruned
from bayescomp.models import LeNet5
from bayescomp.nn import LayerFactory

LENET5_SHAPE = (28, 28, 1)
LENET5_LAYERS = ("conv1", "conv2", "fc1", "fc2")


def _fc1_rows(channels):
    """fc1's input rows of conv2's ``channels``: row p·50 + c for each of the 16 positions."""
    return [p * 50 + c for p in range(16) for c in channels]


def _kernel_sizes(network, names):
    return {name: int(getattr(network, name).kernel[...].size) for name in names}


def test_structural_count_of_pruned_lenet5_units_is_count_with_their_keep_vectors(group_pruned):
    """Whole units pruned (conv channels, fc1's rows of whole conv2 channels, fc1 outputs via
    fc2's inputs): the structural count is ``count`` with the kept units as keep vectors."""
    model = group_pruned(LeNet5, {"conv1": range(12), "conv2": range(30),
                                  "fc1": _fc1_rows(range(30)), "fc2": range(400)})
    masks = pruning.propagated_masks(model)
    keep = {"conv1": np.arange(20) >= 12, "conv2": np.arange(50) >= 30,
            "fc1": np.arange(500) >= 400}
    structure = counting.pruned_structure(model, masks)
    for group, vector in keep.items():
        np.testing.assert_array_equal(structure.keep[group], vector)
    pruned = counting.count_pruned(model, LENET5_SHAPE, masks)
    assert pruned.as_dict() == counting.count(model, LENET5_SHAPE, keep).as_dict()
    assert {n: c.weights for n, c in pruned.layers.items()} == {
        "conv1": 25 * 8, "conv2": 25 * 8 * 20, "fc1": 16 * 20 * 100, "fc2": 100 * 10}
    assert _kernel_sizes(export_model(model, masks, input_shape=LENET5_SHAPE),
                         LENET5_LAYERS) == {n: c.weights for n, c in pruned.layers.items()}


def test_structural_count_drops_the_rows_export_drops(group_pruned):
    """fc1 rows pruned one by one (BC-GNJ's input-unit groups): the exported fc1 reads only the
    kept rows, so the count is rows × outputs, not 16 positions × channels × outputs."""
    model = group_pruned(LeNet5, {"conv2": range(30), "fc1": _fc1_rows(range(30)) + [30, 81]})
    masks = pruning.propagated_masks(model)
    pruned = counting.count_pruned(model, LENET5_SHAPE, masks)
    assert pruned.layers["fc1"].weights == (16 * 20 - 2) * 500
    assert pruned.layers["fc1"].macs == pruned.layers["fc1"].weights
    assert _kernel_sizes(export_model(model, masks, input_shape=LENET5_SHAPE),
                         LENET5_LAYERS) == {n: c.weights for n, c in pruned.layers.items()}


def test_nonzero_macs_by_hand():
    model = nnx.eval_shape(lambda: LeNet5(LayerFactory(), rngs=nnx.Rngs(0)))
    shapes = {"conv1": (5, 5, 1, 20), "conv2": (5, 5, 20, 50), "fc1": (800, 500),
              "fc2": (500, 10)}
    masks = {name: np.zeros(shape, bool) for name, shape in shapes.items()}
    masks["conv1"][0, 0, 0, :3] = True      # 3 weights × 24·24 output positions
    masks["conv2"][1, 2, 3, 4:14] = True    # 10 weights × 8·8
    masks["fc1"][5, :7] = True              # 7 weights, one position
    masks["fc2"][0, 0] = masks["fc2"][9, 9] = True
    assert counting.nonzero_macs(model, LENET5_SHAPE, masks) == {
        "conv1": 3 * 576, "conv2": 10 * 64, "fc1": 7, "fc2": 2}
    summary = counting.summary(model, LENET5_SHAPE, masks)
    assert summary["nonzero_macs"] == 3 * 576 + 10 * 64 + 7 + 2
    assert summary["nonzero_macs_ratio"] == pytest.approx(2_293_000 / summary["nonzero_macs"])
    assert summary["dense"]["macs"] == 2_293_000


def _fake_run(widths=None):
    cfg = OmegaConf.create({"model": {"name": "lenet5", "widths": widths}})
    dataset = types.SimpleNamespace(x_train=np.zeros((1, *LENET5_SHAPE), np.float32),
                                    num_classes=10)
    return cfg, dataset


def test_a_procedures_own_counting_is_kept_and_gains_nonzero_macs():
    cfg, dataset = _fake_run()
    masks = [np.ones(shape, bool) for shape in ((5, 5, 1, 20), (5, 5, 20, 50), (800, 500),
                                                (500, 10))]
    network = types.SimpleNamespace(names=list(LENET5_LAYERS), masks=masks)
    own = {"dense": {"macs": 2_293_000}, "pruned": {"macs": 1}, "params_ratio": 2.0,
           "macs_ratio": 3.0}
    entry = metrics.run_counting(cfg, dataset, network, own)
    assert {k: entry[k] for k in own} == own
    assert entry["nonzero_macs"] == 2_293_000 and entry["nonzero_macs_ratio"] == 1.0
    computed = metrics.run_counting(cfg, dataset, network)
    assert computed["pruned"] == computed["dense"] and computed["macs_ratio"] == 1.0


def _check_counting(run_dir, written: dict, model_name: str, input_shape):
    """``counting`` of a finished run: dense as ``count``, pruned as its exported network,
    nonzero as its kept weights × positions."""
    entry = written["counting"]
    assert json.loads((run_dir / "metrics.json").read_text())["counting"] == entry
    network = quantize.load_quantized(run_dir / quantize.QUANTIZED_FILE)
    model = counting.shape_model(model_name, input_shape, 10, network.widths)
    assert entry["dense"] == counting.count(model, input_shape).as_dict()
    exported = export_pruned(network.kernels, network.biases, network.masks,
                             model_name=model_name, input_shape=input_shape, num_classes=10,
                             norms=network.norms, widths=network.widths)
    assert {n: c["weights"] for n, c in entry["pruned"]["layers"].items()} == _kernel_sizes(
        exported, network.names)
    positions = {n: c["macs"] // c["weights"] for n, c in entry["dense"]["layers"].items()}
    assert entry["nonzero_macs_per_layer"] == {
        n: kept * positions[n] for n, kept in zip(network.names, written["kept_per_layer"])}
    assert entry["macs_ratio"] == pytest.approx(entry["dense"]["macs"] / entry["pruned"]["macs"])
    return entry


def test_variational_run_writes_counting(finished_smoke_run):
    run_dir, written = finished_smoke_run("lenet300_svd")
    entry = _check_counting(run_dir, written, "lenet300", (28, 28, 1))
    assert entry["dense"]["macs"] == 784 * 300 + 300 * 100 + 100 * 10
    # Dense layers, one position each: the nonzero multiply-adds are the kept weights.
    assert entry["nonzero_macs"] == written["weights_kept"]


def test_deep_compression_run_writes_counting(smoke_cfg, pretrained_dense_run, tmp_path):
    from bayescomp.procedures import deep_compression

    # LeNet-300-100: its dense run is the one most tests share (the conv positions are
    # checked above, on LeNet-5).
    cfg = smoke_cfg("lenet300_dc", "method.prune_rounds=1",
                    f"method.pretrained_run={pretrained_dense_run('lenet300')}")
    written = deep_compression.run(cfg, tmp_path)
    entry = _check_counting(tmp_path, written, "lenet300", (28, 28, 1))
    assert entry["dense"]["macs"] == 266_200
    # Unstructured: most units keep a weight, so the structural count stays near dense while
    # the kept weights' multiply-adds are what magnitude pruning removed.
    assert entry["nonzero_macs"] < entry["pruned"]["macs"] <= entry["dense"]["macs"]
