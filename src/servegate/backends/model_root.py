"""Where TF Serving reads its models: a directory, or a URI of a filesystem TensorFlow can
write (``gs://``, ``s3://`` with tensorflow-io, ``hdfs://``, ``file://``) for a server on another
host, with no filesystem shared with the runner.

Versions become visible to TF Serving only when ``models.config`` (``specific`` version policy)
names them, and servegate writes it after a version's files are complete; so object stores,
which cannot rename a directory atomically, get the files copied in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from servegate._atomic import atomic_write_text
from servegate.errors import ConfigError
from servegate.integrity import artifact_sha256, stream_sha256, tree_sha256


class ModelRoot(Protocol):
    """Files under one model root, addressed by ``/``-separated relative paths."""

    #: The root as this process names it (for messages and server paths).
    location: str

    def read_text(self, relative: str) -> str | None:
        """The file's text, or None when it does not exist."""

    def write_text(self, relative: str, text: str) -> None:
        """Replace the file's content (atomically where the filesystem can)."""

    def read_bytes(self, relative: str) -> bytes | None: ...

    def is_dir(self, relative: str) -> bool: ...

    def list_dir(self, relative: str) -> list[str]:
        """Entry names of a directory (empty when it does not exist)."""

    def put_tree(self, local: Path, relative: str) -> None:
        """Copy the local directory ``local`` to ``relative`` (which must not exist)."""

    def tree_sha256(self, relative: str) -> str:
        """``integrity.artifact_sha256`` of the directory ``relative``, read where it is."""

    def remove_tree(self, relative: str) -> None:
        """Delete the directory ``relative`` and everything in it (nothing when it is absent)."""


class LocalRoot:
    """A directory of this machine (or a mount the server shares)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self.location = str(self.path)

    def read_text(self, relative: str) -> str | None:
        target = self.path / relative
        return target.read_text(encoding="utf-8") if target.is_file() else None

    def write_text(self, relative: str, text: str) -> None:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_text(target, text)
        except OSError as exc:
            raise ConfigError(f"cannot write {target}: {exc}") from exc

    def read_bytes(self, relative: str) -> bytes | None:
        target = self.path / relative
        return target.read_bytes() if target.is_file() else None

    def is_dir(self, relative: str) -> bool:
        return (self.path / relative).is_dir()

    def list_dir(self, relative: str) -> list[str]:
        target = self.path / relative
        return sorted(p.name for p in target.iterdir()) if target.is_dir() else []

    def tree_sha256(self, relative: str) -> str:
        return artifact_sha256(self.path / relative)

    def remove_tree(self, relative: str) -> None:
        target = self.path / relative
        if target.resolve() == self.path or self.path not in target.resolve().parents:
            raise ConfigError(f"refusing to remove {target}: not inside {self.path}")
        shutil.rmtree(target, ignore_errors=True)

    def put_tree(self, local: Path, relative: str) -> None:
        """Copied into a hidden staging directory beside the target, then renamed (a whole
        directory appears at once; ``servegate._atomic`` writes single files)."""
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".incoming-{target.name}-"))
        try:
            shutil.copytree(local, staging, dirs_exist_ok=True)
            staging.chmod(0o755)
            os.rename(staging, target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ConfigError(f"cannot place {local} as {target}: {exc}") from exc


class GfileRoot:
    """A root written through ``tf.io.gfile`` (TensorFlow's filesystems), TensorFlow imported
    lazily."""

    def __init__(self, uri: str) -> None:
        self.location = uri.rstrip("/")

    @staticmethod
    def _gfile():  # -> tf.io.gfile
        import tensorflow as tf

        return tf.io.gfile

    def _join(self, relative: str) -> str:
        return f"{self.location}/{relative}" if relative else self.location

    def read_text(self, relative: str) -> str | None:
        gfile, path = self._gfile(), self._join(relative)
        if not gfile.exists(path):
            return None
        with gfile.GFile(path, "r") as handle:
            return str(handle.read())

    def write_text(self, relative: str, text: str) -> None:
        """Written aside, then renamed through ``tf.io.gfile`` (atomic where that filesystem's
        rename is; object stores copy)."""
        gfile, path = self._gfile(), self._join(relative)
        gfile.makedirs(path.rsplit("/", 1)[0])
        staging = f"{path}.incoming"
        with gfile.GFile(staging, "w") as handle:
            handle.write(text)
        gfile.rename(staging, path, overwrite=True)

    def read_bytes(self, relative: str) -> bytes | None:
        gfile, path = self._gfile(), self._join(relative)
        if not gfile.exists(path):
            return None
        with gfile.GFile(path, "rb") as handle:
            return bytes(handle.read())

    def is_dir(self, relative: str) -> bool:
        return bool(self._gfile().isdir(self._join(relative)))

    def list_dir(self, relative: str) -> list[str]:
        gfile, path = self._gfile(), self._join(relative)
        return sorted(n.rstrip("/") for n in gfile.listdir(path)) if gfile.isdir(path) else []

    def tree_sha256(self, relative: str) -> str:
        gfile, top = self._gfile(), self._join(relative)
        hashes = {}
        for directory, _, files in gfile.walk(top):
            inner = str(directory).rstrip("/").removeprefix(top).strip("/")
            for name in files:
                with gfile.GFile(f"{str(directory).rstrip('/')}/{name}", "rb") as handle:
                    hashes[f"{inner}/{name}" if inner else name] = stream_sha256(_blocks(handle))
        return tree_sha256(hashes)

    def remove_tree(self, relative: str) -> None:
        gfile, path = self._gfile(), self._join(relative)
        if not relative.strip("/"):
            raise ConfigError(f"refusing to remove the model root {self.location}")
        if gfile.exists(path):
            gfile.rmtree(path)

    def put_tree(self, local: Path, relative: str) -> None:
        gfile = self._gfile()
        for directory, _, files in os.walk(local):
            inner = Path(directory).relative_to(local).as_posix()
            remote = self._join(relative if inner == "." else f"{relative}/{inner}")
            gfile.makedirs(remote)
            for name in files:
                gfile.copy(str(Path(directory) / name), f"{remote}/{name}", overwrite=True)


def _blocks(handle: Any) -> Iterator[bytes]:
    """A file's bytes, a megabyte at a time."""
    while block := handle.read(1 << 20):
        yield bytes(block)


def open_model_root(location: str | Path) -> ModelRoot:
    """``LocalRoot`` for a path (or ``file:`` with no host), else ``GfileRoot``."""
    text = str(location)
    scheme = urlsplit(text).scheme
    if not scheme or len(scheme) == 1:  # a path (a Windows drive letter is not a scheme)
        return LocalRoot(Path(text))
    return GfileRoot(text)
