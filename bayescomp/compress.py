"""Compress a finished run into a ``.bcz`` file: ``python -m bayescomp.compress RUN_DIR [--out PATH]``.

Every procedure ends by saving its quantized network (``RUN_DIR/quantized_network.npz``,
:func:`bayescomp.metrics.finish_run`): the kept posterior means rounded to their bits for the
variational methods, the weight-shared network for Deep Compression and soft weight-sharing.
That artifact is written as the entropy-coded file (:mod:`bayescomp.compression.codec`), decoded
again, and the decoded network's test error measured. The run's ``metrics.json`` gains:

* ``compressed_bytes``: the size of the file on disk;
* ``compressed_test_error``: the error of the network decoded from the file (equal to
  ``quantized_test_error``: the same weights, bit for bit);
* ``compression.max_compression_measured``: float32 bytes of all original weights / file bytes;
* ``compression_file``: for honesty beside it — the file's entropy bound (Σ −log2 p̂ of the coded
  symbols under their empirical models, plus every byte that is not a coded symbol stream: the
  stored models, bitmaps, biases, codebooks, BatchNorm parameters, header, preamble and
  checksum), the header bytes, the bytes of the BatchNorm parameters (``norm_bytes``: 16 per
  stored channel, raw float32), and the bytes of gzip and zstd applied to the same quantized
  arrays (the kernels as float32 with removed weights zeroed, the biases, and the BatchNorms'
  γ, β, mean and variance), with a per-layer table.

A model with BatchNorms (VGG, ResNet) is written as format version 3, which stores them and the
run's ``model.widths`` (:mod:`bayescomp.compression.codec`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import re
import sys
import tempfile
import zlib

import numpy as np
import zstandard
from flax import nnx

from bayescomp import data as data_lib
from bayescomp import metrics, models, provenance, runs
from bayescomp.compression import codec, container, quantize
from bayescomp.errors import BayescompError, ConfigError
from bayescomp.evaluation import Evaluator

log = logging.getLogger(__name__)


def compress_run(run_dir: str | pathlib.Path, out: str | pathlib.Path | None = None,
                 evaluate: bool = True) -> dict:
    """Write the run's ``.bcz`` file, check it decodes to the same network, update metrics.

    Args:
        run_dir: A run's output directory.
        out: Where to write the file (default ``RUN_DIR/model.bcz``).
        evaluate: Also load the run's test set and measure the decoded network's error.

    Returns:
        The dictionary of file measurements added to ``metrics.json``.
    """
    run_dir = pathlib.Path(run_dir)
    saved = run_dir / quantize.QUANTIZED_FILE
    if not saved.is_file():
        raise ConfigError(f"{run_dir} holds no {quantize.QUANTIZED_FILE}, which every finished "
                          "run writes; rerun the run's command in that directory to finish it "
                          "(a finished run is re-evaluated without training)")
    # One writer per run directory: a training process still running in it (or a second
    # compress) holds the lock, and this one stops with a line naming it.
    with runs.lock_run_directory(run_dir):
        return _compress_locked(run_dir, saved, out, evaluate)


def _compress_locked(run_dir: pathlib.Path, saved: pathlib.Path, out, evaluate: bool) -> dict:
    cfg = runs.read_run_config(run_dir)
    quantized = quantize.load_quantized(saved)
    spec = data_lib.REGISTRY[cfg.data.name]
    out = pathlib.Path(out) if out else run_dir / "model.bcz"
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the path of the file to write, "
                          f"e.g. {out / 'model.bcz'}")
    # Read first: an unreadable metrics.json is refused before anything is written.
    run_metrics = (metrics.read_metrics(run_dir) if (run_dir / "metrics.json").exists()
                   else None)
    # The file is written beside its destination under a fresh name, decoded, checked and
    # evaluated there, and only then moved over an existing file, after which nothing can fail
    # but the metrics write: if anything fails, the previous file and the metrics that
    # describe it stay as they were.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.parent.resolve() == run_dir.resolve():
            _remove_leftover_staging_files(out)
        handle, staging_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.",
                                                suffix=".staging")
        os.close(handle)
        staging = pathlib.Path(staging_name)
        try:
            measured = _write_and_measure(staging, quantized, cfg, spec, evaluate)
            staging.replace(out)
        finally:
            staging.unlink(missing_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot write {out}: {error.strerror or error}; check that its "
                          "directory exists and is writable") from None
    measured["compressed_file"] = str(out)

    if run_metrics is not None:
        run_metrics["compressed_bytes"] = measured["compressed_bytes"]
        if "compressed_test_error" in measured:
            run_metrics["compressed_test_error"] = measured["compressed_test_error"]
        else:  # not measured for this file (--no-eval): an older file's error would mislead
            run_metrics.pop("compressed_test_error", None)
        run_metrics.setdefault("compression", {})["max_compression_measured"] = measured[
            "max_compression_measured"]
        run_metrics["compression_file"] = measured["compression_file"]
        metrics.write_metrics(run_dir, run_metrics)
    return measured


def _remove_leftover_staging_files(out: pathlib.Path) -> None:
    """Removes the staging files a killed ``compress`` left beside ``out`` in its run directory.

    Only called while this process holds the run directory's lock, so no other ``compress`` of
    this run can be writing there (only one of another run pointed here with ``--out`` could);
    a staging file there is a leftover. Only names ``mkstemp`` makes for ``out`` (eight random
    characters) are removed, never other files that merely look alike.
    """
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.[A-Za-z0-9_]{{8}}\.staging$")
    leftovers = [path for path in out.parent.iterdir() if pattern.match(path.name)]
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers:
        log.warning("removed %d staging file(s) left by an interrupted compress: %s",
                    len(leftovers), ", ".join(path.name for path in leftovers))


def run_widths(cfg) -> tuple[int, ...]:
    """The ``widths`` the run's model was built with: ``model.widths``, else the model's default."""
    from omegaconf import OmegaConf

    widths = cfg.model.get("widths")
    if widths is None:
        return tuple(models.default_widths(cfg.model.name))
    widths = OmegaConf.to_object(widths) if OmegaConf.is_config(widths) else widths
    return tuple(int(w) for w in widths)


def _same_norms(encoded, decoded) -> bool:
    """Both ``None``, or the same BatchNorms with bit-identical parameters and ε."""
    if encoded is None or decoded is None:
        return encoded is None and decoded is None
    if sorted(encoded) != sorted(decoded):
        return False
    return all(encoded[path].epsilon == decoded[path].epsilon
               and np.array_equal(encoded[path].stacked().view(np.uint32),
                                  decoded[path].stacked().view(np.uint32))
               for path in encoded)


def _write_and_measure(out: pathlib.Path, quantized, cfg, spec, evaluate: bool) -> dict:
    """Write ``out``, check it decodes bit for bit, and measure it (see :func:`compress_run`)."""
    file_bytes = codec.save(out, quantized, model_name=cfg.model.name,
                            input_shape=spec.image_shape, num_classes=spec.num_classes,
                            dataset=cfg.data.name,
                            preprocess=cfg.data.get("preprocess", "reference"),
                            widths=quantized.widths or run_widths(cfg))
    decoded_model, decoded = codec.load(out)
    # A mismatch here is a codec bug, never bad input: the file just written must decode to the
    # network that was encoded, bit for bit (kernels up to the sign of removed zeros).
    for what, originals, restored_all in (("kernels", quantized.kernels, decoded.kernels),
                                          ("biases", quantized.biases, decoded.biases),
                                          ("masks", quantized.masks, decoded.masks)):
        for original, restored in zip(originals, restored_all, strict=True):
            original, restored = np.asarray(original), np.asarray(restored)
            if what == "kernels":
                original, restored = original + np.float32(0), restored + np.float32(0)
            same = (np.array_equal(original.view(np.uint32), restored.view(np.uint32))
                    if original.dtype == np.float32 else np.array_equal(original, restored))
            if not same or original.shape != restored.shape:
                raise AssertionError(f"the decoded {what} differ from the encoded ones")
    if not _same_norms(quantized.norms, decoded.norms):
        raise AssertionError("the decoded BatchNorm parameters differ from the encoded ones")

    weights_total = sum(int(np.size(k)) for k in quantized.kernels)
    norm_arrays = [params.stacked() for _, params in sorted((quantized.norms or {}).items())]
    raw = b"".join(np.asarray(a, "<f4").tobytes()
                   for a in quantized.kernels + quantized.biases + norm_arrays)
    # Every byte of the file that is not a coded symbol stream counts at its size: the symbol
    # tables (value and position models), bitmaps, raw biases, codebooks and BatchNorm
    # parameters, the header, and the container's preamble and checksum. What remains between
    # this bound and the file is then the coders' own overhead.
    entropy_bits = 8 * decoded.norm_bytes + sum(
        layer.value_entropy_bits + layer.position_entropy_bits
        + 8 * (layer.bitmap_bytes + layer.bias_bytes + layer.value_model_bytes
               + layer.position_model_bytes + layer.codebook_bytes)
        for layer in decoded.layers)
    framing_bytes = container.PREAMBLE_SIZE + container.CHECKSUM_SIZE
    measured = {
        "compressed_bytes": file_bytes,
        "max_compression_measured": 4.0 * weights_total / file_bytes,
        "compression_file": {
            "file_bytes": file_bytes,
            "header_bytes": decoded.header_bytes,
            "format_version": decoded.version,
            "norm_bytes": decoded.norm_bytes,
            "entropy_bound_bytes": entropy_bits / 8 + decoded.header_bytes + framing_bytes,
            "gzip_bytes": len(zlib.compress(raw, 9)),
            "zstd_bytes": len(zstandard.ZstdCompressor(level=19).compress(raw)),
            "float32_bytes": 4 * weights_total,
            # The code that wrote the file (may postdate training).
            "git_commit": provenance.git_commit(),
            "layers": [
                {"name": layer.name, "positions": layer.positions,
                 "values_kind": layer.values_kind, "codebook_bytes": layer.codebook_bytes,
                 # "fixed": fixed-width integers, chosen where nearly every value is distinct
                 # (ANS would need a histogram as large as the data), so the overhead over the
                 # empirical entropy, which ignores that histogram, is not the coder's.
                 "values_coding": layer.values_coding,
                 "num_values": layer.num_values, "value_bytes": layer.value_bytes,
                 "value_entropy_bytes": layer.value_entropy_bits / 8,
                 "value_overhead_percent": (
                     100.0 * (8 * layer.value_bytes / layer.value_entropy_bits - 1)
                     if layer.value_entropy_bits > 0 else 0.0),
                 "value_model_bytes": layer.value_model_bytes,
                 "position_bytes": layer.position_bytes,
                 "position_model_bytes": layer.position_model_bytes,
                 "position_entropy_bytes": layer.position_entropy_bits / 8,
                 "bitmap_bytes": layer.bitmap_bytes,
                 "bias_bytes": layer.bias_bytes}
                for layer in decoded.layers],
        },
    }
    if evaluate:
        dataset = runs.load_run_dataset(cfg)
        measured["compressed_test_error"] = test_error(decoded_model, dataset,
                                                       int(cfg.trainer.eval_batch_size))

    return measured


def test_error(model: nnx.Module, dataset, batch_size: int = 1000) -> float:
    """Test error (%) of a deterministic model on ``dataset``'s test split."""
    import jax.numpy as jnp

    return Evaluator(batch_size).error(model, jnp.asarray(dataset.x_test),
                                       jnp.asarray(dataset.y_test))


test_error.__test__ = False  # not a pytest test


def _print_summary(measured: dict) -> None:
    info = measured["compression_file"]
    print(f"{'layer':<8} {'positions':<9} {'values':>8} {'value B':>9} {'entropy B':>10} "
          f"{'overhead':>9} {'model B':>8} {'pos B':>7}")
    for layer in info["layers"]:
        # Fixed-width values (nearly all distinct, see codec.py) are not entropy coded, so their
        # excess over the empirical entropy is no coder overhead: shown as "fixed".
        overhead = ("fixed" if layer.get("values_coding") == "fixed"
                    else f"{layer['value_overhead_percent']:.2f}%")
        print(f"{layer['name']:<8} {layer['positions']:<9} {layer['num_values']:>8} "
              f"{layer['value_bytes']:>9} {layer['value_entropy_bytes']:>10.1f} "
              f"{overhead:>9} {layer['value_model_bytes']:>8} "
              f"{layer['position_bytes']:>7}")
    norms = f", BatchNorms {info['norm_bytes']} B" if info.get("norm_bytes") else ""
    print(f"file {info['file_bytes']} B (header {info['header_bytes']} B{norms}, entropy bound "
          f"{info['entropy_bound_bytes']:.0f} B); gzip {info['gzip_bytes']} B, zstd "
          f"{info['zstd_bytes']} B of the same quantized arrays; float32 {info['float32_bytes']} B")
    print(f"maximum compression (measured): {measured['max_compression_measured']:.1f}x")
    if "compressed_test_error" in measured:
        print(f"test error of the decoded network: {measured['compressed_test_error']:.2f} %")


def gain_lines(metrics: dict) -> list[str]:
    """What compression gained, from a compressed run's ``metrics.json``: architecture, weights,
    bits, the errors at every stage and the compression ratios (Louizos et al., NeurIPS 2017,
    Tables 1 and 2)."""
    ratios = metrics.get("compression") or {}
    kept, total = metrics["weights_kept"], metrics["weights_total"]
    lines = [f"{metrics['model']} {metrics['method']} on {metrics['dataset']}, "
             f"{metrics['epochs']} epochs:",
             f"  pruned architecture  {metrics.get('architecture_string', '?')} (inputs kept per "
             f"layer, of {'-'.join(str(n) for n in metrics.get('layers', []))})",
             f"  weights kept         {kept:,} of {total:,} ({100.0 * kept / total:.2f} %)"]
    if metrics.get("bits_per_layer"):
        lines.append(f"  bits per layer       {' '.join(map(str, metrics['bits_per_layer']))}")
    errors = [(label, metrics.get(key)) for label, key in (
        ("trained", "test_error"), ("pruned", "pruned_test_error"),
        ("quantized", "quantized_test_error"), ("decoded file", "compressed_test_error"))]
    lines.append("  test error           " + ", ".join(
        f"{value:.2f} % {label}" for label, value in errors if value is not None))
    named = [("Pruning", "pruning"), ("Fast Prediction", "fast_prediction"),
             ("Maximum Compression", "max_compression"),
             ("measured file", "max_compression_measured")]
    lines.append("  compression          " + ", ".join(
        f"{label} {ratios[key]:.1f}x" for label, key in named if ratios.get(key)))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="output directory of a run (hydra.run.dir)")
    parser.add_argument("--out", default=None, help="file to write (default RUN_DIR/model.bcz)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip measuring the decoded network's test error")
    args = parser.parse_args(argv)
    try:
        measured = compress_run(args.run_dir, args.out, evaluate=not args.no_eval)
    except BayescompError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {measured['compressed_file']}")
    _print_summary(measured)
    metrics_path = pathlib.Path(args.run_dir) / "metrics.json"
    if metrics_path.is_file():
        print("\n".join(gain_lines(json.loads(metrics_path.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
