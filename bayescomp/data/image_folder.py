"""Image classification data stored as image files, one folder per class.

The layout (that of torchvision's ``ImageFolder``, with the two splits side by side)::

    <root>/train/<class>/<any name>.png|.jpg|.jpeg
    <root>/test/<class>/<any name>.png|.jpg|.jpeg

Classes are the folder names in sorted order (label 0 is the first); within a class, images are
taken in sorted file-name order, so the arrays do not depend on the order a file system or an
archive lists them in. Hidden files (names starting with ``.``, e.g. macOS's ``._*`` and
``.DS_Store``) are ignored; anything else that is not a PNG or JPEG file in a class folder is an
error, so no image is silently dropped.

The same tree may also be read straight from a tar archive (optionally gzip-, bzip2- or
xz-compressed) whose members lie under one top folder, ``<top>/train/<class>/...``; the archive
is streamed with :mod:`tarfile` and never extracted, so its member names cannot place files
anywhere. Every member is checked: directories and regular files of that layout only (no links,
devices or paths outside ``<top>/``), and no file above :data:`MAX_IMAGE_BYTES`.

Images are decoded with Pillow, which is only allowed its PNG and JPEG decoders. All images must
have one size. Grayscale images (Pillow modes ``1``, ``L``, ``LA``) give one channel; colour
images (``RGB``, ``RGBA``, ``P``, ``CMYK``, ``YCbCr``, ...) three, with any alpha channel dropped;
if both occur, grayscale images are repeated over three channels. 16-bit and float images are
refused rather than silently rescaled. Decoding happens once: the arrays are cached as ``uint8``
(:mod:`bayescomp.data.cache`).

Everything wrong with a tree or archive (a class missing from one split, an empty class, an
unreadable or undecodable image, mixed sizes, a stray file, an unexpected archive member) is one
:class:`~bayescomp.errors.DataError` that names the file and what to do.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import tarfile
import zlib

import numpy as np
from PIL import Image

from bayescomp.data import cache
from bayescomp.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

#: The largest archive member read as an image; a CIFAR JPEG is about 1 KB.
MAX_IMAGE_BYTES = 16 * 2**20

_GRAY_MODES = ("1", "L", "LA")
_COLOR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


@dataclasses.dataclass(frozen=True)
class FolderData:
    """Decoded images of both splits.

    Attributes:
        x_train: ``uint8`` images, ``(N_train, H, W, C)`` with ``C`` 1 or 3.
        y_train: ``int32`` labels, indices into ``class_names``.
        x_test: ``uint8`` images, ``(N_test, H, W, C)``.
        y_test: ``int32`` labels.
        class_names: The class folder names, sorted; label ``i`` is ``class_names[i]``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------------------------
# Decoding


class _Decoder:
    """Decodes images one by one, checking that all have the size of the first."""

    def __init__(self):
        self.size: tuple[int, int] | None = None  # Pillow's (width, height)
        self.first: str | None = None

    def decode(self, file, where: str) -> np.ndarray:
        """Returns the ``uint8`` pixels of one image, ``(H, W)`` or ``(H, W, 3)``."""
        redo = "replace or remove the file"
        try:
            with Image.open(file, formats=("PNG", "JPEG")) as image:
                # The header gives size and mode before any pixel is decoded.
                if self.size is not None and image.size != self.size:
                    raise DataError(
                        f"{where} is {image.size[1]}x{image.size[0]} pixels but {self.first} is "
                        f"{self.size[1]}x{self.size[0]}; all images must have one size (resize "
                        "them beforehand)")
                if image.mode in _GRAY_MODES:
                    pixels = np.asarray(image.convert("L"))
                elif image.mode in _COLOR_MODES:
                    pixels = np.asarray(image.convert("RGB"))
                else:
                    raise DataError(f"{where} is a {image.mode} image (16-bit or float pixels); "
                                    "convert it to 8-bit grayscale or RGB")
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            # OSError includes PIL.UnidentifiedImageError and "image file is truncated".
            raise DataError(f"cannot decode {where} as a PNG or JPEG image ({error}); "
                            f"{redo}") from None
        if self.size is None:
            self.size, self.first = (pixels.shape[1], pixels.shape[0]), where
        return pixels


def _stack(images: list[np.ndarray], color: bool, size: tuple[int, int] | None) -> np.ndarray:
    """Stacks ``(H, W)`` and ``(H, W, 3)`` images into ``(N, H, W, C)``."""
    channels = 3 if color else 1
    height, width = (size[1], size[0]) if size is not None else (0, 0)
    out = np.empty((len(images), height, width, channels), np.uint8)
    for index, pixels in enumerate(images):
        out[index] = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    return out


def _assemble(entries: dict[str, dict[str, list[tuple[str, np.ndarray]]]], decoder: _Decoder,
              where: str) -> FolderData:
    """Labels and stacks decoded images given as ``{split: {class: [(file name, pixels)]}}``."""
    _check_classes({split: set(classes) for split, classes in entries.items()}, where)
    class_names = tuple(sorted(entries["train"]))
    color = any(pixels.ndim == 3 for classes in entries.values()
                for images in classes.values() for _, pixels in images)
    arrays = {}
    for split in SPLITS:
        images, labels = [], []
        for label, name in enumerate(class_names):
            for _, pixels in sorted(entries[split][name], key=lambda item: item[0]):
                images.append(pixels)
                labels.append(label)
        arrays[f"x_{split}"] = _stack(images, color, decoder.size)
        arrays[f"y_{split}"] = np.asarray(labels, np.int32)
    return FolderData(**arrays, class_names=class_names)


def _check_classes(classes: dict[str, set[str]], where: str) -> None:
    """One clear error when the splits do not hold the same classes."""
    if not classes["train"] and not classes["test"]:
        raise DataError(f"{where} holds no class folders under train/ and test/; put the images "
                        "in train/<class>/ and test/<class>/")
    for split, other in (("train", "test"), ("test", "train")):
        missing = sorted(classes[other] - classes[split])
        if missing:
            raise DataError(f"class {', '.join(missing)} of {where} has images in {other}/ but "
                            f"none in {split}/; every class needs images in both splits (add "
                            f"them, or remove the class from {other}/)")


# --------------------------------------------------------------------------------------------
# Folders


def is_image_folder(directory: str) -> tuple[bool, str]:
    """Whether ``directory`` has ``train/`` and ``test/`` subfolders, and if not, why."""
    if not os.path.isdir(directory):
        return False, "no such directory"
    missing = [split for split in SPLITS if not os.path.isdir(os.path.join(directory, split))]
    if missing:
        return False, f"no {' or '.join(f'{split}/' for split in missing)} in it"
    return True, ""


def _list_folder(root: str) -> dict[str, dict[str, list[tuple[str, os.stat_result]]]]:
    """``{split: {class: [(file name, stat)]}}``, checking the layout on the way."""
    listing = {}
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        classes = {}
        for entry in sorted(os.scandir(split_dir), key=lambda entry: entry.name):
            if _hidden(entry.name):
                continue
            if not entry.is_dir():
                raise DataError(f"{entry.path} is a file directly in {split}/; images go in "
                                f"{split}/<class>/ (move it into its class folder or remove it)")
            files = []
            for item in sorted(os.scandir(entry.path), key=lambda item: item.name):
                if _hidden(item.name):
                    continue
                if item.is_dir():
                    raise DataError(f"{item.path} is a folder inside the class folder "
                                    f"{entry.path}; class folders hold image files only (move "
                                    "its images up or remove it)")
                if not _is_image_name(item.name):
                    raise DataError(f"{item.path} is not a PNG or JPEG file (by its name; "
                                    f"accepted: {', '.join(IMAGE_EXTENSIONS)}); convert it or "
                                    "remove it")
                files.append((item.name, item.stat()))
            if not files:
                raise DataError(f"class folder {entry.path} holds no images; add some or remove "
                                "the folder")
            classes[entry.name] = files
        listing[split] = classes
    return listing


def read_folder(root: str) -> FolderData:
    """Reads ``<root>/train/<class>/*`` and ``<root>/test/<class>/*``, decoding once.

    Args:
        root: The folder holding ``train/`` and ``test/``.

    Returns:
        The decoded images and labels (from the cache when the files have not changed).

    Raises:
        DataError: See the module docstring.
    """
    listing = _list_folder(root)
    _check_classes({split: set(classes) for split, classes in listing.items()}, root)
    description = [["folder"]] + [
        [split, name, file_name, stat.st_size, stat.st_mtime_ns]
        for split, classes in listing.items() for name, files in classes.items()
        for file_name, stat in files]

    def build() -> dict[str, np.ndarray]:
        count = sum(len(files) for classes in listing.values() for files in classes.values())
        log.info("decoding %d images in %s (once: they are cached)", count, root)
        decoder = _Decoder()
        entries = {}
        for split, classes in listing.items():
            entries[split] = {}
            for name, files in classes.items():
                paths = [os.path.join(root, split, name, file_name) for file_name, _ in files]
                entries[split][name] = [(file_name, decoder.decode(path, path))
                                        for (file_name, _), path in zip(files, paths)]
        return _as_arrays(_assemble(entries, decoder, root))

    return _from_arrays(cache.cached(root, cache.key(description), build), root)


def _as_arrays(data: FolderData) -> dict[str, np.ndarray]:
    return {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test,
            "y_test": data.y_test, "class_names": np.asarray(data.class_names, dtype=str)}


def _from_arrays(arrays: dict[str, np.ndarray], where: str) -> FolderData:
    try:
        return FolderData(x_train=arrays["x_train"], y_train=arrays["y_train"],
                          x_test=arrays["x_test"], y_test=arrays["y_test"],
                          class_names=tuple(str(name) for name in arrays["class_names"]))
    except KeyError as error:  # A cache written by other code under our name.
        raise DataError(f"the cache of {where} lacks {error}; delete it (it is rebuilt)") from None


# --------------------------------------------------------------------------------------------
# Archives


def _member_parts(member: tarfile.TarInfo, top: str, archive: str) -> list[str]:
    """The path of ``member`` below ``<top>/``, as parts; refuses anything off the layout."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    parts = [part for part in name.split("/") if part]
    unexpected = (name.startswith("/") or "\\" in name or any(part in (".", "..") for part in parts)
                  or not parts or parts[0] != top)
    if not unexpected and member.isdir():
        unexpected = len(parts) > 3 or (len(parts) > 1 and parts[1] not in SPLITS)
    elif not unexpected and member.isfile():
        unexpected = len(parts) != 4 or parts[1] not in SPLITS
    elif not unexpected:
        unexpected = True  # a link, device or FIFO
    if unexpected:
        raise DataError(f"archive {archive} holds an unexpected member {member.name!r} (only "
                        f"folders and image files under {top}/train/<class>/ and "
                        f"{top}/test/<class>/ are read); it is not the expected archive or is "
                        "damaged: get it again")
    return parts[1:]


def read_archive(path: str, top: str) -> FolderData:
    """Reads a tar archive of ``<top>/train/<class>/*`` and ``<top>/test/<class>/*``.

    The archive is read as a stream, once, without extracting anything; the decoded arrays are
    cached (keyed on the archive's size and modification time).

    Args:
        path: The archive (``.tar``, ``.tar.gz``, ``.tar.bz2`` or ``.tar.xz``).
        top: The single top folder of its members.

    Returns:
        The decoded images and labels.

    Raises:
        DataError: See the module docstring; also a damaged or truncated archive.
    """
    try:
        stat = os.stat(path)
    except OSError as error:
        raise DataError(f"cannot read archive {path}: {error.strerror or error}") from None
    description = [["archive", top], os.path.basename(path), stat.st_size, stat.st_mtime_ns]

    def build() -> dict[str, np.ndarray]:
        log.info("decoding the images in %s (once: they are cached)", path)
        return _as_arrays(_decode_archive(path, top))

    return _from_arrays(cache.cached(path, cache.key(description), build), path)


def _decode_archive(path: str, top: str) -> FolderData:
    decoder = _Decoder()
    entries: dict[str, dict[str, list]] = {split: {} for split in SPLITS}
    redo = "copy or download it again"
    try:
        # "r|*": a forward-only stream with any compression; members are read in archive order.
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                parts = _member_parts(member, top, path)
                if any(_hidden(part) for part in parts):
                    continue
                if member.isdir():
                    if len(parts) == 2:
                        entries[parts[0]].setdefault(parts[1], [])
                    continue
                split, name, file_name = parts
                where = f"{path}:{member.name}"
                if not _is_image_name(file_name):
                    raise DataError(f"{where} is not a PNG or JPEG file (by its name; accepted: "
                                    f"{', '.join(IMAGE_EXTENSIONS)}); the archive is not the "
                                    "expected one")
                if member.size > MAX_IMAGE_BYTES:
                    raise DataError(f"{where} is {member.size} bytes, more than the "
                                    f"{MAX_IMAGE_BYTES} an image may have; the archive is not "
                                    "the expected one")
                content = archive.extractfile(member).read()
                pixels = decoder.decode(io.BytesIO(content), where)
                entries[split].setdefault(name, []).append((file_name, pixels))
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"archive {path} is damaged or truncated ({error}); {redo}") from None
    empty = [f"{split}/{name}/" for split in SPLITS
             for name, images in sorted(entries[split].items()) if not images]
    if empty:
        raise DataError(f"archive {path} has class folders without images: {', '.join(empty)}; "
                        f"{redo}")
    return _assemble(entries, decoder, path)
