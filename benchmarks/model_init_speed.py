"""Seconds to build a model in a fresh process: eager construction against compiled
initialisation (``bayescomp.compiled_init``, what ``runs.build_model`` does).

A run builds its model once, in a process that has compiled nothing yet, so each variant is
timed in its own fresh Python process (imports excluded: the clock starts after them), the two
alternated round by round; the median within-round ratio compiled / eager is the number to
quote on a VM whose speed drifts. Also printed: a histogram figure's drawing time, the old way
(``ax.hist`` + ``tight_layout``) against ``bayescomp.histogram_figure``, in this process.

Usage::

    python benchmarks/model_init_speed.py [--experiments resnet20_dense vgg16_dense lenet5_ghs]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
import jax
from flax import nnx
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from bayescomp import models, runs
from bayescomp import nn as bnn
experiment, variant = sys.argv[1], sys.argv[2]
with initialize_config_dir(config_dir=sys.argv[3], version_base="1.3"):
    cfg = compose("config", overrides=[f"+experiment={experiment}"])
shape = (28, 28, 1) if cfg.model.name.startswith("lenet") else (32, 32, 3)
start = time.perf_counter()
if variant == "eager":
    batch_norm = cfg.trainer.get("batch_norm")
    factory = bnn.from_config(OmegaConf.to_container(cfg.method, resolve=True),
                              None if batch_norm is None else OmegaConf.to_container(batch_norm))
    model = models.get(cfg.model.name)(factory, rngs=nnx.Rngs(params=0), input_shape=shape,
                                       num_classes=10)
else:
    model = runs.build_model(cfg, shape, 10, 0)
jax.block_until_ready(nnx.state(model))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def build_seconds(experiment: str, variant: str) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, experiment, variant, str(REPO / "conf")],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def figure_seconds(repeats: int = 5) -> tuple[float, float]:
    """Median seconds of one log-count histogram figure: ``ax.hist`` + ``tight_layout`` against
    :mod:`bayescomp.histogram_figure` (235,200 values, LeNet-300-100's first layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from bayescomp import histogram_figure

    values = np.random.default_rng(0).normal(size=235_200)

    def old():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(values, bins=100, color="tab:blue")
        ax.set_yscale("log")
        ax.set_xlabel("log α")
        ax.set_ylabel("count (weights or groups)")
        ax.axvline(1.0, color="tab:red", linestyle="--", label="threshold 1")
        ax.legend(fontsize=8)
        ax.set_title("fc1")
        fig.tight_layout()
        fig.savefig(io.BytesIO(), format="png", dpi=100)
        plt.close(fig)

    def new():
        fig, ax = histogram_figure.log_count_axes(title="fc1", xlabel="log α",
                                                  ylabel="count (weights or groups)")
        histogram_figure.add_histogram(ax, values, 100, color="tab:blue")
        ax.axvline(1.0, color="tab:red", linestyle="--", label="threshold 1")
        ax.legend(fontsize=8)
        fig.savefig(io.BytesIO(), format="png", dpi=100)
        plt.close(fig)

    old(), new()  # imports, font cache
    times: dict = {old: [], new: []}
    for _ in range(repeats):
        for draw in (old, new):
            start = time.perf_counter()
            draw()
            times[draw].append(time.perf_counter() - start)
    return statistics.median(times[old]), statistics.median(times[new])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+",
                        default=["resnet20_dense", "vgg16_dense", "lenet5_ghs"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for experiment in args.experiments:
        eager, compiled = [], []
        for _ in range(args.rounds):
            eager.append(build_seconds(experiment, "eager"))
            compiled.append(build_seconds(experiment, "compiled"))
        ratios = [c / e for e, c in zip(eager, compiled)]
        print(f"{experiment}: eager {statistics.median(eager):.2f} s, compiled "
              f"{statistics.median(compiled):.2f} s; compiled/eager median within-round ratio "
              f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}, "
              f"{args.rounds} rounds)", flush=True)
    old, new = figure_seconds()
    print(f"histogram figure: ax.hist + tight_layout {1e3 * old:.0f} ms, histogram_figure "
          f"{1e3 * new:.0f} ms (ratio {new / old:.2f})")


if __name__ == "__main__":
    main()
