"""Archive hashes: recorded as a registry tag when an archive is built, checked before a
champion is restored from it (a .mar file, or a SavedModel directory hashed as a tree)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
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
    return tree_sha256({item.relative_to(path).as_posix(): _file_sha256(item)
                        for item in path.rglob("*") if item.is_file()})


def stream_sha256(chunks: Iterable[bytes]) -> str:
    """sha256 of bytes arriving in chunks (a download)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(file_hashes: dict[str, str]) -> str:
    """The tree hash of ``artifact_sha256`` from each file's ``/``-separated relative path and
    sha256 (wherever the files are: a local directory, a remote model root)."""
    digest = hashlib.sha256()
    for relative in sorted(file_hashes, key=lambda r: r.split("/")):
        digest.update(f"{relative}\0{file_hashes[relative]}\n".encode())
    return digest.hexdigest()


def verify_artifact(path: Path, expected: str, what: str) -> None:
    """``IntegrityError`` unless ``path`` hashes to ``expected``."""
    actual = artifact_sha256(path)
    if actual != expected:
        raise IntegrityError(f"{what}: the archive's sha256 is {actual}, but {expected} was "
                             "recorded when it was built; refusing to restore it (the artifact "
                             "store was changed or corrupted)")
