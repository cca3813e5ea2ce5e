"""Augmentation on device (pad, random crop, flip) against a NumPy reference, its statistics,
and a resumed augmented run against an uninterrupted one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayescomp.data import augment
from bayescomp.errors import ConfigError


def _images(batch=64, size=8, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, channels)).astype(
        np.float32)


def _numpy_padded(images, pad, padding, fill):
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    if padding == "reflect":
        return np.pad(images, widths, mode="reflect")
    return np.stack([np.pad(images[..., c], widths[:3], constant_values=fill[c])
                     for c in range(images.shape[-1])], axis=-1)


def _which_crop(out, padded, size, pad):
    """The (row, column, flipped) placements of ``out`` inside ``padded`` (NumPy, exhaustive)."""
    found = []
    for flipped in (False, True):
        candidate = out[:, ::-1] if flipped else out
        for row in range(2 * pad + 1):
            for col in range(2 * pad + 1):
                if np.array_equal(padded[row:row + size, col:col + size], candidate):
                    found.append((row, col, flipped))
    return found


@pytest.mark.parametrize("padding", ["zero", "reflect"])
def test_every_output_is_a_crop_of_the_padded_image_or_its_flip(padding):
    images, pad, fill = _images(), 2, (0.5, -1.0, 2.0)
    out = np.asarray(augment.CropFlip(pad=pad, padding=padding, fill=fill)(
        jax.random.key(0), jnp.asarray(images)))
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = _numpy_padded(images, pad, padding, fill)
    for i in range(len(images)):
        # Exact: cropping moves pixels and the fill is added to exact zeros.
        assert _which_crop(out[i], padded[i], 8, pad), f"image {i} is no crop"


def test_zero_padding_fills_the_border_with_the_black_pixel_per_channel():
    images = np.full((1, 4, 4, 2), 7.0, np.float32)
    padded = augment.CropFlip(pad=3, fill=(-1.5, 0.25))._padded(jnp.asarray(images))
    padded = np.asarray(padded)
    assert padded.shape == (1, 10, 10, 2)
    assert np.all(padded[0, 3:7, 3:7] == 7.0)
    border = np.ones((10, 10), bool)
    border[3:7, 3:7] = False
    assert np.all(padded[0][border] == [-1.5, 0.25])


def test_offsets_are_uniform_and_flips_fair():
    # Distinct pixel values make each placement identifiable; 4096 draws of 5x5 = 25 offsets.
    batch, size, pad = 4096, 6, 2
    base = np.arange(size * size, dtype=np.float32).reshape(1, size, size, 1) + 1.0
    images = np.repeat(base, batch, axis=0)
    out = np.asarray(augment.CropFlip(pad=pad, fill=(0.0,))(jax.random.key(1),
                                                             jnp.asarray(images)))
    padded = _numpy_padded(base, pad, "zero", (0.0,))[0]
    placements = [_which_crop(o, padded, size, pad) for o in out]
    assert all(len(p) == 1 for p in placements)  # distinct values: exactly one placement
    rows, cols, flips = np.array([p[0] for p in placements]).T
    # Binomial standard deviations: a flip count within 5 σ of n/2 (σ = 32), each of the 25
    # offsets within 5 σ of n/25 (σ = 12.5): a fair sampler fails with probability < 1e-5.
    assert abs(flips.sum() - batch / 2) < 5 * np.sqrt(batch / 4)
    counts = np.bincount(rows * (2 * pad + 1) + cols, minlength=(2 * pad + 1) ** 2)
    expected = batch / (2 * pad + 1) ** 2
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected * (1 - 1 / 25)))


def test_same_key_same_batch_other_key_other_batch():
    images = jnp.asarray(_images())
    crop = augment.CropFlip(pad=4)
    a = crop(jax.random.key(3), images)
    assert np.array_equal(a, crop(jax.random.key(3), images))
    assert not np.array_equal(a, crop(jax.random.key(4), images))


def test_no_pad_no_flip_is_the_identity():
    images = jnp.asarray(_images())
    out = augment.CropFlip(pad=0, flip=False)(jax.random.key(0), images)
    assert np.array_equal(out, images)


def test_the_augmentation_key_leaves_the_noise_key_alone():
    key = jax.random.key(5)
    assert not np.array_equal(jax.random.key_data(augment.step_key(key)),
                              jax.random.key_data(key))


class _Data:
    black_pixel = (0.1, 0.2, 0.3)


@pytest.mark.parametrize("setting,default,expected", [
    (None, True, True), (None, False, False), (True, False, True), (False, True, False)])
def test_from_config_follows_the_dataset_default_unless_told(setting, default, expected):
    got = augment.from_config({"augment": setting}, _Data(), augment_by_default=default)
    assert (got is not None) == expected
    if got is not None:
        assert got.fill == (0.1, 0.2, 0.3) and got.pad == 4 and got.padding == "zero"


@pytest.mark.parametrize("cfg,message", [
    ({"augment": "yes"}, "data.augment must be"),
    ({"augment": True, "augment_padding": "wrap"}, "unknown data.augment_padding"),
    ({"augment": True, "augment_pad": -1}, "data.augment_pad"),
    ({"augment": True, "augment_flip": "no"}, "data.augment_flip"),
])
def test_bad_settings_are_one_line(cfg, message):
    with pytest.raises(ConfigError, match=message):
        augment.from_config(cfg, _Data(), augment_by_default=False)


# Slow (~20 s idle: three short runs). The default run keeps what it rests on: resume
# bit-identity of runs whose step noise is keyed from the step (tests/test_loop.py), and the
# augmentation's key from that step key (step_key tests above).
@pytest.mark.slow
def test_an_augmented_run_resumes_bit_identically_and_differs_from_an_unaugmented_one(
        smoke_cfg, tmp_path):
    from bayescomp.procedures import variational

    def cfg(epochs, augment="true"):
        return smoke_cfg("lenet300_dense", "optimizer.schedule=constant",
                         f"trainer.epochs={epochs}", "trainer.tensorboard=false",
                         f"data.augment={augment}")

    straight = variational.run(cfg(2), tmp_path / "straight")
    variational.run(cfg(1), tmp_path / "resumed")
    resumed = variational.run(cfg(2), tmp_path / "resumed")
    plain = variational.run(cfg(2, "false"), tmp_path / "plain")
    fields = ("loss", "nll", "train_accuracy", "test_error")
    # Same crops and flips after the resume: the key chain is restored, so the same XLA
    # programs see the same inputs (as tests/test_loop.py's resume test, same tolerance).
    for got, want in zip(resumed["history"], straight["history"]):
        for field in fields:
            assert got[field] == pytest.approx(want[field], rel=1e-6, abs=1e-7), field
    assert any(plain["history"][1][f] != straight["history"][1][f] for f in fields)


def test_null_and_its_resolved_value_are_one_trajectory(compose):
    from bayescomp import runs

    def trajectory(*overrides):
        return runs.trajectory_config(compose(["+experiment=resnet20_dense", *overrides]))

    assert trajectory("data.augment=true") == trajectory()  # CIFAR: null means on
    assert trajectory("data.augment=false") != trajectory()
    assert augment.resolved_setting(None, "fashion_mnist") is False
    assert augment.resolved_setting(None, "cifar10_jpeg") is True
