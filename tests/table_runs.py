"""A LeNet run's ``metrics.json`` as the tables read it, written for the tables' tests."""

from __future__ import annotations

import json
import pathlib


def write_lenet_run(root: pathlib.Path, seed: int = 0, **changes) -> pathlib.Path:
    """Writes ``root/fashion_mnist/lenet300_gnj/seed<seed>/metrics.json``; returns its directory.

    ``changes`` replace or add fields; a field given as ``None`` is left out of the file.
    """
    run_dir = root / "fashion_mnist" / "lenet300_gnj" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    metrics = {
        "experiment": "lenet300_gnj", "model": "lenet300", "method": "bc_gnj",
        "dataset": "fashion_mnist", "seed": seed, "epochs": 1, "test_error": 9.9,
        "pruned_test_error": 10.3, "quantized_test_error": 10.4, "percent_kept": 22.0,
        "architecture": [447, 130, 19], "bits_per_layer": [6, 3, 9], "exponent_bits": 3,
        "compression": {"pruning": 4.0}, "git_commit": "abc", "config": {"seed": seed},
        **changes,
    }
    metrics = {key: value for key, value in metrics.items() if value is not None}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir
