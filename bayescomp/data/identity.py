"""Telling look-alike datasets apart by their content: MNIST against Fashion-MNIST.

MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747) ship as IDX
files with the same names and shapes, so a ``data.dir`` holding the other one would load and be
reported (and tabled against published numbers) under the wrong name. Two statistics of the
images tell them apart, on the full splits and on subsets:

* **The outer pixel ring.** MNIST's digits were size-normalised into a 20x20 box and centred by
  their centre of mass in the 28x28 field (LeCun et al. 1998, and the MNIST page), so they
  rarely reach the outermost rows and columns. Fashion-MNIST's products were scaled so that
  their longer side spans the whole 28 pixels (Xiao et al. 2017, §3), so almost every image
  does: 99.97 % of the training and 99.98 % of the test images of the Debian files, and at least
  99.8 % in every class. A per-image property, so it does not depend on which classes a subset
  holds.
* **The mean pixel.** 0.1307 (MNIST) and 0.2860 (Fashion-MNIST) on the full training splits;
  a subset's mean lies between its classes' means (Fashion-MNIST's: 0.136 sandal .. 0.391
  coat, measured on both splits of the Debian files), widened by its sampling error. It keeps
  data that looks like neither (random test fixtures: mean 0.5) from being taken for
  Fashion-MNIST.

A split is refused only when it matches another registered dataset's :class:`Signature` and not
its own: the check exists to catch the look-alike mix-up, and data that resembles neither (a
fixture, a user's own images stored under the name) cannot be attributed to anything. Splits
of fewer than :data:`MIN_IMAGES` images are not judged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bayescomp.errors import DataError

#: Splits smaller than this are not judged: too few images to tell the datasets apart reliably.
MIN_IMAGES = 20

#: A split's mean pixel may lie this many standard errors outside a signature's range.
_MEAN_TOLERANCE_SE = 4.0


@dataclasses.dataclass(frozen=True)
class Signature:
    """What the images of one dataset look like, for any split or subset of at least 20 images.

    Attributes:
        pixel_mean: ``(low, high)`` bounds on the mean pixel (0..1) of a split: the range of the
            per-class means, so that any mixture of classes lies inside.
        ring_fraction: ``(low, high)`` bounds on the fraction of images with a nonzero pixel on
            the outermost ring (first and last row and column).
    """

    pixel_mean: tuple[float, float]
    ring_fraction: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class _Stats:
    count: int
    mean: float            # mean pixel, 0..1
    mean_error: float      # standard error of ``mean`` over images
    ring_fraction: float   # fraction of images that reach the outer ring


def _measure(images: np.ndarray) -> _Stats:
    """Statistics of ``uint8`` images of shape ``(N, H, W, C)``."""
    count = images.shape[0]
    per_image = images.reshape(count, -1).mean(axis=1, dtype=np.float64) / 255.0
    ring = np.concatenate([images[:, 0].reshape(count, -1), images[:, -1].reshape(count, -1),
                           images[:, :, 0].reshape(count, -1),
                           images[:, :, -1].reshape(count, -1)], axis=1)
    return _Stats(count=count, mean=float(per_image.mean()),
                  mean_error=float(per_image.std() / np.sqrt(count)),
                  ring_fraction=float((ring > 0).any(axis=1).mean()))


def _matches(signature: Signature, stats: _Stats) -> bool:
    slack = _MEAN_TOLERANCE_SE * stats.mean_error
    low, high = signature.pixel_mean
    ring_low, ring_high = signature.ring_fraction
    return (low - slack <= stats.mean <= high + slack
            and ring_low <= stats.ring_fraction <= ring_high)


def check(name: str, signatures: dict[str, Signature], split: str, images: np.ndarray,
          source: str) -> None:
    """Refuses a split of dataset ``name`` that looks like another dataset and not like ``name``.

    Args:
        name: The dataset the images were loaded as.
        signatures: The :class:`Signature` of every dataset that has one, by name.
        split: ``"train"`` or ``"test"``, for the message.
        images: The split's ``uint8`` images, ``(N, H, W, C)``.
        source: Where they came from, for the message.

    Raises:
        DataError: If the split matches another dataset's signature and not ``name``'s.
    """
    own = signatures.get(name)
    if own is None or images.shape[0] < MIN_IMAGES:
        return
    stats = _measure(images)
    if _matches(own, stats):
        return
    others = [other for other, signature in signatures.items()
              if other != name and _matches(signature, stats)]
    if not others:
        return
    other = others[0]
    word = "training" if split == "train" else split
    expected = signatures[other]
    raise DataError(
        f"the {name} {split} split from {source} ({stats.count} images) has a mean {word} pixel "
        f"of {stats.mean:.4f} and {stats.ring_fraction:.1%} of its images reach the outer pixel "
        f"ring, which looks like {other} (mean {expected.pixel_mean[0]}..{expected.pixel_mean[1]}"
        f", ring {expected.ring_fraction[0]:.0%}..{expected.ring_fraction[1]:.0%}), not {name} "
        f"(mean {own.pixel_mean[0]}..{own.pixel_mean[1]}, ring {own.ring_fraction[0]:.0%}.."
        f"{own.ring_fraction[1]:.0%}). Point data.dir at the {name} files, or choose the dataset "
        f"the files hold (data={other})")
