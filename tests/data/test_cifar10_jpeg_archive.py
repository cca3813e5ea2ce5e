"""The real cifar10_jpeg archive of this project's machines (``../shared/data``).

Skipped where it is absent. The fast test streams the first few hundred members through the
checks and decoder the loader uses; the full decode (tens of seconds) is marked slow.
"""

import pathlib
import tarfile

import numpy as np
import pytest

from bayescomp.data import REGISTRY, cache, image_folder, load_dataset, sources

ARCHIVE = (pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
           / "cifar10-jpeg.tar.gz")


@pytest.fixture
def archive():
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} is absent (it exists only on this project's machines; see "
                    "../shared/data/README.md there)")
    return ARCHIVE


def test_archive_members_are_the_layout_cifar10_jpeg_reads(archive):
    spec = REGISTRY["cifar10_jpeg"]
    decoder = image_folder._Decoder()
    seen = 0
    with tarfile.open(archive, mode="r|*") as stream:
        for member in stream:
            parts = image_folder._member_parts(member, spec.archive.top, str(archive))
            if member.isfile():
                split, name, _ = parts
                assert split in image_folder.SPLITS and name in spec.class_names
                pixels = decoder.decode(stream.extractfile(member), member.name)
                assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
                seen += 1
                if seen == 300:
                    break
    assert seen == 300


@pytest.mark.slow  # decodes 60,000 JPEGs (about a minute): pytest -m slow
def test_cifar10_jpeg_loads_in_full(archive, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path))
    raw = sources.find_raw(REGISTRY["cifar10_jpeg"], data_dir=str(archive.parent))

    assert raw.source == str(archive)
    assert raw.x_train.shape == (50_000, 32, 32, 3) and raw.x_test.shape == (10_000, 32, 32, 3)
    assert raw.class_names == sources.CIFAR10_CLASSES and raw.num_classes == 10
    np.testing.assert_array_equal(np.bincount(raw.y_train), np.full(10, 5000))
    np.testing.assert_array_equal(np.bincount(raw.y_test), np.full(10, 1000))
    # CIFAR-10's training channel means are about 125, 123, 114 (of 255).
    np.testing.assert_allclose(raw.x_train.mean(axis=(0, 1, 2)), [125.3, 123.0, 113.9], atol=1.5)
    # Cached in the cache dir (the shared folder is read-only), and read from there next time.
    assert len(list((tmp_path / "datasets").glob("cifar10-jpeg.tar.gz-*.npz"))) == 1
    data = load_dataset("cifar10_jpeg", data_dir=str(archive))
    assert data.num_classes == 10 and data.x_test.shape == (10_000, 32, 32, 3)
