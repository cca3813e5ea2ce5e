"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file bayescomp writes into a run or ``results/`` (``metrics.json``, ``config.yaml``,
``model.bcz``, tables) goes through :func:`write_bytes`, so a crash, a full disk or a bad input
mid-write leaves what was already there intact.
"""

from __future__ import annotations

import os
import pathlib
import tempfile


def _default_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 less the process umask."""
    umask = os.umask(0)  # the only portable way to read it is to set it ...
    os.umask(umask)      # ... and put it back at once
    return 0o666 & ~umask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions of a normally created file.

    The bytes go to a uniquely named temporary file in the same directory (so no other file is
    touched, and the final rename stays on one file system), which then replaces ``path``.
    ``tempfile.mkstemp`` creates files readable by their owner only; the mode is reset to what
    ``open()`` would give, so shared results stay readable by others.

    Raises:
        OSError: the directory cannot be created or written, or ``path`` is a directory; the
            temporary file is removed and ``path`` is left as it was.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`write_bytes` of ``text`` encoded as UTF-8."""
    write_bytes(path, text.encode("utf-8"))
