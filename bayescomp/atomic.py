"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file bayescomp writes into a run or ``results/`` (``metrics.json``, ``config.yaml``,
``model.bcz``, tables, plots) goes through :func:`write_bytes`, so a crash, a full disk or a bad
input mid-write leaves what was already there intact. A write that fails for lack of space
raises :class:`~bayescomp.errors.DiskFullError` (one line naming the directory) once its
partial file is gone; :func:`disk_full_reason` recognises that failure in the errors of other
writers too (Orbax, TensorBoard, log files).
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
import tempfile

from bayescomp.errors import DiskFullError

#: errno values that mean "no space": a full file system, or the user's quota on it.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full_reason(error: BaseException) -> str | None:
    """The system's words for a lack of space, if that is what ``error`` comes down to.

    Looks through the exceptions ``error`` wraps (``__cause__``, ``__context__``, exception
    groups), since writers report a full disk differently: ``OSError(ENOSPC)`` from Python file
    objects; from TensorStore (Orbax's array writer) a ``ValueError`` whose text reads
    ``RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']``.

    Returns:
        E.g. ``"No space left on device"``, or None when ``error`` is something else.
    """
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return os.strerror(current.errno)
        text = str(current)
        for code in _NO_SPACE:
            if os.strerror(code) in text or f"os_error_code='{code}'" in text:
                return os.strerror(code)
        # TensorStore's status for a failed write; an out-of-memory error is RESOURCE_EXHAUSTED
        # too, but never says it was writing.
        if "RESOURCE_EXHAUSTED" in text and "writ" in text.lower():
            return os.strerror(errno.ENOSPC)
        pending += [current.__cause__, current.__context__,
                    *getattr(current, "exceptions", ())]
    return None


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
        DiskFullError: The disk (or the quota) is full; the temporary file is removed and
            ``path`` is left as it was.
        OSError: The directory cannot be created or written, or ``path`` is a directory; the
            temporary file is removed and ``path`` is left as it was.
    """
    path = pathlib.Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            pathlib.Path(tmp).unlink(missing_ok=True)
        reason = disk_full_reason(error)
        if reason is not None:
            raise DiskFullError(path.parent.absolute(), path.name, reason) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`write_bytes` of ``text`` encoded as UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def save_figure(figure, path: str | os.PathLike, **savefig_kwargs) -> None:
    """Save a matplotlib figure to ``path`` atomically (:func:`write_bytes`).

    ``Figure.savefig`` writes straight into ``path``, so a full disk would leave a truncated
    image there; rendering into memory first leaves the previous image or the new one.

    Args:
        figure: A ``matplotlib.figure.Figure``.
        path: The image file; its suffix names the format (``.png``, ``.pdf``, ...).
        **savefig_kwargs: Passed to ``savefig`` (``dpi``, ``bbox_inches``, ...).
    """
    path = pathlib.Path(path)
    buffer = io.BytesIO()
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or None)
    figure.savefig(buffer, **savefig_kwargs)
    write_bytes(path, buffer.getvalue())
