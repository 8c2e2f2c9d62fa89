"""Archive hashes: recorded as a registry tag when an archive is built, checked before a
champion is restored from it (a .mar file, or a SavedModel directory hashed as a tree)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from servegate.errors import IntegrityError


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_sha256(path: Path) -> str:
    """sha256 of a file; for a directory, of its sorted ``relative path\\0file hash\\n`` lines
    (so the same tree hashes the same wherever it was downloaded)."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}\0{_file_sha256(item)}\n".encode())
    return digest.hexdigest()


def verify_artifact(path: Path, expected: str, what: str) -> None:
    """``IntegrityError`` unless ``path`` hashes to ``expected``."""
    actual = artifact_sha256(path)
    if actual != expected:
        raise IntegrityError(f"{what}: the archive's sha256 is {actual}, but {expected} was "
                             "recorded when it was built; refusing to restore it (the artifact "
                             "store was changed or corrupted)")
