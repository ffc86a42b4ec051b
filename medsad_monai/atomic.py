"""Atomic file writes: a crash or a kill mid-write leaves the previous file intact.

Every file MedSAD writes for a user to keep (checkpoints, ``metrics.csv``, curves, reports,
``<stem>_scores.json``) goes through :func:`atomic_write`: the content is written to a
temporary file in the same folder, flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], Any], *, binary: bool = True, newline: str | None = None
) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    Args:
        path: the file to (re)write; its folder is created if missing.
        write: fills the open file object.
        binary: open the temporary file in binary (default) or text mode (UTF-8).
        newline: text mode only, as for :func:`open` (``""`` for :mod:`csv`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text), binary=False)
