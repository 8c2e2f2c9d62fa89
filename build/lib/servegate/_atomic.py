"""Write a file aside, then rename it into place: readers see the old content or the new, never
a part.

The temporary file is hidden (``.<name>.<random>.tmp``) in the target's own directory, so the
rename stays on one filesystem, and it is created with mode 0600 (``tempfile.mkstemp``). Any
failure removes it and re-raises the original ``OSError``: callers translate it at their
boundary. Nothing is fsynced: this protects against a process that dies half-way, not against
a power loss.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_copy", "atomic_write_bytes", "atomic_write_text"]


def _write_aside(path: Path, fill: Callable[[BinaryIO], object]) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data``; the directory must exist."""
    return _write_aside(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` encoded as ``encoding``; the directory must exist."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_copy(source: Path, target: Path) -> Path:
    """Replace ``target`` with a copy of the file ``source`` (streamed, not read whole)."""

    def fill(handle: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle)

    return _write_aside(target, fill)
