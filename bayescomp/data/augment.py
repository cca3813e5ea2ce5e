r"""Training-time augmentation on device: padding, random crop, random horizontal flip.

The standard CIFAR augmentation of He et al. (2016, "Deep Residual Learning for Image
Recognition", CVPR, §4.2): "4 pixels are padded on each side, and a 32×32 crop is randomly
sampled from the padded image or its horizontal flip". Every CIFAR pruning paper bayescomp
reproduces (Li et al. 2017, Liu et al. 2017, Zhao et al. 2019, Adamczewski & Park 2021) trains
with it.

It runs inside the jitted training step on the batch the step gathered, so the data never leaves
the device and no host pipeline is needed. Randomness comes from a key the step derives from its
own noise key (:data:`KEY_STREAM`), which the loop derives from the run's seed and the step
index; a resumed run therefore draws exactly the crops and flips of an uninterrupted one.

Padding modes:

``"zero"``
    Black pixels, as torchvision's ``RandomCrop(32, padding=4)`` applied before normalisation
    pads them. The batch is already preprocessed, so the fill is the preprocessed value of a
    black pixel per channel (``fill``), not 0: with per-channel standardisation a black pixel is
    ``−mean/std``, and filling 0 would pad with the training set's mean colour instead.
``"reflect"``
    Mirror the border without repeating the edge pixel (``numpy.pad``'s ``"reflect"``), as
    some CIFAR recipes do (e.g. the Wide ResNet code of Zagoruyko & Komodakis 2016).

A crop offset is uniform over the ``2·pad + 1`` positions per axis and a flip has probability
1/2, independently per image.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bayescomp.errors import ConfigError

PADDING_MODES = ("zero", "reflect")

# fold_in constant that separates the augmentation key from the step's noise key: the noise
# key itself stays what it was without augmentation, so switching augmentation off reproduces
# earlier runs bit for bit.
KEY_STREAM = 0x41554720  # "AUG "


@dataclasses.dataclass(frozen=True)
class CropFlip:
    """Pad, random crop back to the input size, random horizontal flip (NHWC batches).

    Attributes:
        pad: Pixels added on each side before cropping (4 for CIFAR); 0 crops nothing.
        padding: ``"zero"`` or ``"reflect"`` (see the module docstring).
        fill: Per-channel value of a padded pixel in ``"zero"`` mode (the preprocessed black
            pixel), shape ``(C,)``; ignored for ``"reflect"``.
        flip: Whether to flip horizontally with probability 1/2.
    """

    pad: int = 4
    padding: str = "zero"
    fill: tuple[float, ...] = (0.0,)
    flip: bool = True

    def __post_init__(self):
        if self.padding not in PADDING_MODES:
            raise ConfigError(f"unknown data.augment_padding {self.padding!r}; known: "
                              f"{', '.join(PADDING_MODES)}")
        if not isinstance(self.pad, int) or isinstance(self.pad, bool) or self.pad < 0:
            raise ConfigError(f"data.augment_pad must be a non-negative integer, got "
                              f"{self.pad!r}")
        object.__setattr__(self, "fill", tuple(float(v) for v in self.fill))

    def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """Augment a batch ``(B, H, W, C)``; the result has the same shape and dtype."""
        batch, height, width, _ = images.shape
        crop_key, flip_key = jax.random.split(key)
        out = images
        if self.pad:
            out = self._crop(crop_key, self._padded(images), height, width)
        if self.flip:
            flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
            out = jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
        return out

    def _padded(self, images: jax.Array) -> jax.Array:
        widths = ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0))
        if self.padding == "reflect":
            return jnp.pad(images, widths, mode="reflect")
        fill = jnp.broadcast_to(jnp.asarray(self.fill, images.dtype), (images.shape[-1],))
        # Pad with zeros and add the fill on the border only: one pad, no per-channel loop.
        border = jnp.pad(jnp.zeros(images.shape[1:3], images.dtype), widths[1:3],
                         constant_values=1)
        return jnp.pad(images, widths) + border[None, :, :, None] * fill

    def _crop(self, key: jax.Array, padded: jax.Array, height: int, width: int) -> jax.Array:
        # A one-hot row/column selection as two batched matmuls would also work; a vmapped
        # dynamic_slice is exact (no arithmetic on the pixels) and as fast on CPU and GPU.
        offsets = jax.random.randint(key, (padded.shape[0], 2), 0, 2 * self.pad + 1)

        def crop_one(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                         (height, width, image.shape[-1]))

        return jax.vmap(crop_one)(padded, offsets)


def step_key(noise_key: jax.Array) -> jax.Array:
    """The augmentation key of a training step with noise key ``noise_key``."""
    return jax.random.fold_in(noise_key, KEY_STREAM)


def resolved_setting(setting, dataset_name: str) -> bool:
    """What ``data.augment`` means for the dataset ``dataset_name``: ``null`` is the dataset's
    default (on for the CIFAR family and image folders, off for MNIST-like data)."""
    if setting is not None:
        return bool(setting)
    from bayescomp.data.sources import REGISTRY

    spec = REGISTRY.get(dataset_name)
    return spec is not None and spec.family == "cifar"


def from_config(data_cfg, dataset, *, augment_by_default: bool) -> CropFlip | None:
    """The run's augmentation from the ``data`` settings, or ``None`` when it is off.

    Args:
        data_cfg: The ``data`` mapping: ``augment`` (``null``: ``augment_by_default``;
            ``true``/``false`` force it), ``augment_pad`` (default 4), ``augment_padding``
            (``"zero"`` or ``"reflect"``), ``augment_flip`` (default true).
        dataset: The loaded :class:`bayescomp.data.Dataset`; its ``black_pixel`` is the fill
            of ``"zero"`` padding.
        augment_by_default: What ``augment: null`` means for this dataset (on for the CIFAR
            family and image folders, off for MNIST-like data).

    Raises:
        ConfigError: A setting of the wrong type or value.
    """
    setting = data_cfg.get("augment")
    if setting is None:
        setting = augment_by_default
    if not isinstance(setting, bool):
        raise ConfigError(f"data.augment must be true, false or null (the dataset's default), "
                          f"got {setting!r}")
    if not setting:
        return None
    flip = data_cfg.get("augment_flip", True)
    if not isinstance(flip, bool):
        raise ConfigError(f"data.augment_flip must be true or false, got {flip!r}")
    return CropFlip(pad=data_cfg.get("augment_pad", 4),
                    padding=str(data_cfg.get("augment_padding", "zero")),
                    fill=tuple(dataset.black_pixel), flip=flip)
