"""A cache of decoded image arrays, keyed on the files they were decoded from.

Decoding 60,000 JPEGs takes tens of seconds; the decoded ``uint8`` arrays load in well under
one. A dataset read from image files (:mod:`bayescomp.data.image_folder`) is therefore decoded
once and stored as an uncompressed ``.npz`` of plain arrays (read back with
``allow_pickle=False``), in the first of two places that can be written:

1. next to the data: ``<folder>/bayescomp-cache.npz`` for an image folder,
   ``<archive>.bayescomp-cache.npz`` for an archive;
2. the cache directory: ``$BAYESCOMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/bayescomp``, else
   ``~/.cache/bayescomp``, as ``datasets/<name>-<hash of the data's absolute path>.npz`` (used
   when the data's directory is read-only, by its permission bits even for root, like a
   shared data folder).

The file stores its key: a hash of :data:`FORMAT_VERSION` and a description of the source
files (for a folder, the sorted list of every file's relative path, size and modification time;
for an archive, its size and modification time). A cache whose key differs, or that cannot be
read, is ignored and rewritten, so adding, removing, replacing or touching an image invalidates
it. Files are written atomically (:mod:`bayescomp.atomic`): a crash mid-write leaves the old
cache or none, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pathlib
import zipfile
from collections.abc import Callable, Sequence

import numpy as np

from bayescomp import atomic
from bayescomp.errors import DiskFullError

log = logging.getLogger(__name__)

#: Changes whenever what is cached or how it is decoded changes, so old caches are rebuilt.
FORMAT_VERSION = 1

#: Environment variable naming the cache directory.
CACHE_DIR_ENV = "BAYESCOMP_CACHE_DIR"

_KEY = "cache_key"
_SUFFIX = "bayescomp-cache.npz"


def cache_dir() -> pathlib.Path:
    """``$BAYESCOMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/bayescomp``, else ``~/.cache/bayescomp``."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    if chosen:
        return pathlib.Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return pathlib.Path(base).expanduser() / "bayescomp"


def locations(data_path: str | os.PathLike) -> list[pathlib.Path]:
    """The places the cache of ``data_path`` (a folder or an archive file) may be, in order."""
    data_path = pathlib.Path(data_path).resolve()
    beside = (data_path / _SUFFIX if data_path.is_dir()
              else data_path.with_name(f"{data_path.name}.{_SUFFIX}"))
    digest = hashlib.sha256(str(data_path).encode("utf-8")).hexdigest()[:16]
    return [beside, cache_dir() / "datasets" / f"{data_path.name}-{digest}.npz"]


def key(description) -> str:
    """A hex digest of :data:`FORMAT_VERSION` and ``description`` (JSON-serialisable)."""
    text = json.dumps([FORMAT_VERSION, description], separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load(path: pathlib.Path, wanted_key: str) -> dict[str, np.ndarray] | None:
    """The arrays of the cache at ``path`` if it is readable and has ``wanted_key``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if _KEY not in archive.files or str(archive[_KEY]) != wanted_key:
                return None
            return {name: archive[name] for name in archive.files if name != _KEY}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        log.warning("ignoring the unreadable cache %s (%s); it is rebuilt", path, error)
        return None


def _read_only(directory: pathlib.Path) -> bool:
    """Whether ``directory``, or the nearest existing folder above it, is read-only.

    The permission bits are checked as well as :func:`os.access`: root may write into a
    directory whose owner made it ``r-x`` (a shared data folder), and should not.
    """
    for existing in (directory, *directory.parents):
        try:
            mode = existing.stat().st_mode
        except OSError:
            continue  # Not there yet: the write creates it if its parent allows.
        return not mode & 0o222 or not os.access(existing, os.W_OK)
    return False


def _store(path: pathlib.Path, wanted_key: str, arrays: dict[str, np.ndarray]) -> None:
    if _read_only(path.parent):
        raise PermissionError(errno.EACCES, "read-only directory", str(path.parent))
    buffer = io.BytesIO()
    np.savez(buffer, **{_KEY: np.asarray(wanted_key)}, **arrays)
    atomic.write_bytes(path, buffer.getvalue())


def cached(data_path: str | os.PathLike, wanted_key: str,
           build: Callable[[], dict[str, np.ndarray]],
           places: Sequence[pathlib.Path] | None = None) -> dict[str, np.ndarray]:
    """The arrays built from ``data_path``: from a cache with ``wanted_key``, else built and stored.

    Args:
        data_path: The folder or archive the arrays come from; selects the cache locations.
        wanted_key: From :func:`key`, describing the current state of the source files.
        build: Decodes the source; called only when no valid cache exists. Returns plain
            (non-object) arrays by name.
        places: Overrides :func:`locations` (tests).

    Returns:
        The arrays by name.
    """
    places = list(places) if places is not None else locations(data_path)
    for place in places:
        if place.is_file():
            arrays = _load(place, wanted_key)
            if arrays is not None:
                log.info("decoded images of %s read from the cache %s", data_path, place)
                return arrays
    arrays = build()
    failures = []
    for place in places:
        try:
            _store(place, wanted_key, arrays)
        except OSError as error:  # A read-only data disk: try the next place.
            failures.append(f"{place}: {error.strerror or error}")
            continue
        except DiskFullError as error:  # A full disk: the next place may have room.
            failures.append(f"{place}: {error.reason}")
            continue
        log.info("decoded images of %s cached in %s", data_path, place)
        return arrays
    log.warning("could not cache the decoded images of %s (%s); they are decoded again next time "
                "(set %s to a writable directory)", data_path, "; ".join(failures),
                CACHE_DIR_ENV)
    return arrays
