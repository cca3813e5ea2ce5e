"""Look inside a variational run, finished or training: ``python -m bayescomp.diagnose RUN_DIR``.

A variational network can be evaluated in more than one way, and when they disagree the
disagreement says where to look:

* **posterior mean**: every layer deterministic, ``E_q[W]`` (with ``E[z]``-scaled biases for
  output-channel group scales); the network the run reports and compresses.
* **sampled**: every layer samples its pre-activations per example, as in training (local
  reparameterization). Reported as the mean ± std of the error over ``--samples`` passes, and as
  the error of their *ensemble* (the average of the passes' softmax outputs, a Monte Carlo
  estimate of the posterior predictive ``E_q[p(y|x, W)]``).
* **one layer sampled**: each variational layer in turn samples while the others use their
  means. If the mean network is much worse than the sampled one, the layer whose sampling
  alone repairs it is where the mean network departs from what training saw (this is how the
  missing ``E[z]`` on conv biases was found: ``Posterior.mean_bias``).
* **compression snapshot**: the pruning, bit precision, quantized error and compression
  ratios the run would report if it stopped at this checkpoint (the run's own thresholds or
  threshold selection; :func:`bayescomp.procedures.variational.compression_snapshot`).

Nothing is written into ``RUN_DIR``, so a run may be diagnosed while it trains (it reads the
latest completed epoch checkpoint). ``--out FILE`` writes the figures as JSON.

Usage::

    python -m bayescomp.diagnose RUN_DIR [--samples 5] [--seed 0] [--no-compression] [--out F]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bayescomp import objectives, runs
from bayescomp.errors import BayescompError, ConfigError
from bayescomp.procedures import variational


def make_probabilities(graphdef, batch_size: int) -> Callable:
    """A jitted ``probabilities(params, x, key) -> (n, classes)`` softmax outputs over batches.

    Each batch draws its noise from ``fold_in(key, batch index)``; a deterministic graph ignores
    the key. ``x`` is padded to a multiple of ``batch_size`` and the padding dropped again.
    """

    @jax.jit
    def batched(params, x_batches, key):
        model = nnx.merge(graphdef, params)

        def body(_, inputs):
            index, xb = inputs
            logits = model(xb, rngs=nnx.Rngs(noise=jax.random.fold_in(key, index)))
            return None, jax.nn.softmax(logits, axis=-1)

        _, probs = jax.lax.scan(body, None, (jnp.arange(x_batches.shape[0]), x_batches))
        return probs.reshape(-1, probs.shape[-1])

    def probabilities(params, x, key) -> jax.Array:
        n = x.shape[0]
        n_batches = math.ceil(n / batch_size)
        pad = n_batches * batch_size - n
        xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
        return batched(params, xp.reshape(n_batches, batch_size, *x.shape[1:]), key)[:n]

    return probabilities


def error_percent(probabilities: jax.Array, labels) -> float:
    """Top-1 error (%) of class probabilities ``(n, classes)`` against integer labels."""
    wrong = np.asarray(jnp.argmax(probabilities, -1)) != np.asarray(labels)
    return 100.0 * float(wrong.mean())


def _view(model: nnx.Module, sampled_layers: set[str]):
    """``(graphdef, params)`` of ``model`` with exactly ``sampled_layers`` sampling."""
    for name, layer in objectives.variational_layers(model):
        layer.set_view(deterministic=name not in sampled_layers, pruned=False)
    return nnx.split(model)


def diagnose(model: nnx.Module, x_test, y_test, *, samples: int = 5, seed: int = 0,
             batch_size: int = 500) -> dict[str, Any]:
    """Errors of the posterior-mean, sampled, ensembled and one-layer-sampled networks.

    Args:
        model: A variational model (e.g. from :func:`bayescomp.runs.load_trained_model`).
        x_test, y_test: Evaluation images and labels.
        samples: Stochastic passes for the sampled and ensemble errors (``>= 1``).
        seed: Seed of the sampling noise.
        batch_size: Evaluation batch size.

    Returns:
        ``{"mean_error", "sampled_errors" (one per pass), "sampled_error_mean",
        "sampled_error_std", "ensemble_error", "one_layer_sampled": {layer: error}}``, errors
        in %; ``one_layer_sampled`` holds the mean over ``samples`` passes.

    Raises:
        ConfigError: ``samples < 1`` or a model without variational layers.
    """
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    names = [name for name, _ in objectives.variational_layers(model)]
    if not names:
        raise ConfigError("the model has no variational layers; diagnose inspects variational "
                          "runs (svd, bc_gnj, bc_ghs, ...), not retrained point networks")
    x_test, y_test = jnp.asarray(x_test), np.asarray(y_test)
    key = jax.random.key(seed)
    keys = jax.random.split(key, samples)

    def passes(sampled_layers: set[str], pass_keys) -> list[jax.Array]:
        graphdef, params = _view(model, sampled_layers)
        probabilities = make_probabilities(graphdef, batch_size)
        return [probabilities(params, x_test, k) for k in pass_keys]

    mean_probs = passes(set(), keys[:1])[0]  # deterministic: one pass suffices
    sampled = passes(set(names), keys)
    sampled_errors = [error_percent(p, y_test) for p in sampled]
    ensemble = jnp.mean(jnp.stack(sampled), axis=0)
    one_layer = {name: float(np.mean([error_percent(p, y_test) for p in passes({name}, keys)]))
                 for name in names}
    _view(model, set())  # leave the model as its deterministic view
    return {
        "mean_error": error_percent(mean_probs, y_test),
        "sampled_errors": sampled_errors,
        "sampled_error_mean": float(np.mean(sampled_errors)),
        "sampled_error_std": float(np.std(sampled_errors, ddof=1)) if samples > 1 else 0.0,
        "ensemble_error": error_percent(ensemble, y_test),
        "one_layer_sampled": one_layer,
    }


def format_report(run_dir, meta: dict, figures: dict, snapshot: dict | None) -> str:
    """The human-readable report printed by the command line."""
    history = meta.get("history") or []
    lines = [f"{run_dir}: checkpoint of epoch {int(meta['epoch'])} "
             f"({len(history)} epochs trained)"]
    if history and "test_error" in history[-1]:
        lines.append(f"  logged posterior-mean test error at that epoch: "
                     f"{history[-1]['test_error']:.2f} %")
    lines += [
        f"  posterior-mean network:        {figures['mean_error']:.2f} %",
        f"  sampled (per-example noise):   {figures['sampled_error_mean']:.2f} ± "
        f"{figures['sampled_error_std']:.2f} % over {len(figures['sampled_errors'])} passes",
        f"  ensemble of those passes:      {figures['ensemble_error']:.2f} %",
        "  one layer sampled, the rest at their means:",
    ]
    lines += [f"    {name:<28s} {error:.2f} %"
              for name, error in figures["one_layer_sampled"].items()]
    if snapshot is not None:
        comp = snapshot["compression"]
        lines += [
            "  compression if the run stopped here:",
            f"    thresholds        {snapshot['prune_thresholds']}",
            f"    architecture      {'-'.join(map(str, snapshot['architecture']))}",
            f"    weights kept      {snapshot['percent_kept']:.2f} %",
            f"    bits per layer    {'-'.join(map(str, snapshot['bits_per_layer']))} "
            f"(exponent {snapshot['exponent_bits']})",
            f"    pruned error      {snapshot['pruned_test_error']:.2f} %",
            f"    quantized error   {snapshot['quantized_test_error']:.2f} %",
            f"    Pruning {comp['pruning']:.1f}x, Fast Prediction {comp['fast_prediction']:.1f}x, "
            f"Maximum Compression (estimate) {comp['max_compression']:.1f}x",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bayescomp.diagnose",
        description="Posterior-mean vs sampled errors, per-layer sampling, and a compression "
                    "snapshot of a variational run's latest checkpoint (nothing is written into "
                    "the run directory).")
    parser.add_argument("run_dir", help="hydra.run.dir of a bayescomp.run variational run")
    parser.add_argument("--samples", type=int, default=5, help="stochastic passes (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--no-compression", action="store_true",
                        help="skip the compression snapshot (pruning, bits, quantized error)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        run_dir = pathlib.Path(args.run_dir)
        cfg, model, meta = runs.load_trained_model(run_dir)
        dataset = runs.load_run_dataset(cfg)
        snapshot = None
        if not args.no_compression:
            with tempfile.TemporaryDirectory() as scratch:  # its plots are not kept
                snapshot = variational.compression_snapshot(cfg, model, dataset,
                                                            pathlib.Path(scratch))
        figures = diagnose(model, dataset.x_test, dataset.y_test, samples=args.samples,
                           seed=args.seed, batch_size=int(cfg.trainer.eval_batch_size))
        report = {"run_dir": str(run_dir), "epoch": int(meta["epoch"]), **figures,
                  "compression_snapshot": snapshot}
        if args.out:
            out = pathlib.Path(args.out)
            if not out.parent.is_dir():
                raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
            out.write_text(json.dumps(report, indent=2) + "\n")
    except BayescompError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(run_dir, meta, figures, snapshot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
