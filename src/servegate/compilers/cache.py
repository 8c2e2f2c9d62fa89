"""Compile caches, paid once per device type: Inductor's and Triton's caches (and TensorRT's
timing cache) kept under ``root/<device key>``, packed to a tar.gz and shared through MLflow.

``activate()`` points ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` at the cache for the
compile and restores the environment afterwards. A missing or corrupt cache is a warning, never a
failure: the compile just runs cold.
"""

from __future__ import annotations

import contextvars
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: MLflow run tag naming the device key of the cache a run logged.
CACHE_TAG = "servegate.compile_cache_key"
#: MLflow artifact folder of the caches.
ARTIFACT_DIR = "compile-cache"
_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
_ACTIVE: contextvars.ContextVar[CompileCache | None] = contextvars.ContextVar(
    "servegate_compile_cache", default=None)


def active_cache() -> CompileCache | None:
    """The cache of the compile in progress (inside ``CompileCache.activate()``), else None."""
    return _ACTIVE.get()


class CompileCache:
    """The compile caches of one device type (``devices.device_key``) under ``root / key``."""

    def __init__(self, key: str, root: Path) -> None:
        from servegate.devices import safe_key

        if safe_key(key) != key:
            raise ValueError(f"cache key {key!r} must be a safe name (devices.device_key)")
        self.key = key
        self.root = Path(root)

    @classmethod
    def for_device(cls, device: str, root: Path) -> CompileCache:
        from servegate.devices import device_key

        return cls(device_key(device), root)

    @property
    def path(self) -> Path:
        return self.root / self.key

    @property
    def inductor_dir(self) -> Path:
        return self.path / "inductor"

    @property
    def triton_dir(self) -> Path:
        return self.path / "triton"

    @property
    def tensorrt_timing_cache(self) -> Path:
        return self.path / "tensorrt" / "timing_cache.bin"

    @contextmanager
    def activate(self) -> Iterator[CompileCache]:
        """Inductor's and Triton's caches in this cache for the block; the environment as it was
        afterwards (Inductor writes its default into the environment when unset: undone too)."""
        saved = {name: os.environ.get(name) for name in _ENV}
        self.inductor_dir.mkdir(parents=True, exist_ok=True)
        self.triton_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.inductor_dir.resolve())
        os.environ["TRITON_CACHE_DIR"] = str(self.triton_dir.resolve())
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def fingerprint(self) -> tuple[int, int]:
        """(files, bytes) of the cache: a change means a compile added to it."""
        files = self.files()
        return len(files), sum(p.stat().st_size for p in files)

    def files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*") if p.is_file()) if self.path.is_dir() else []

    def pack(self, target: Path | None = None) -> Path:
        """The cache as ``<key>.tar.gz`` (members relative to the cache folder)."""
        target = Path(target) if target else self.root / f"{self.key}.tar.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        with tarfile.open(target, "w:gz") as tar:
            tar.add(self.path, arcname=".")
        return target

    def unpack(self, archive: Path) -> None:
        """Merge a packed cache into this one (``tarfile``'s ``data`` filter: no links out, no
        absolute paths). Raises ``tarfile.TarError`` / ``OSError`` on a corrupt archive."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.root))
        try:  # extracted whole before merging: a corrupt archive leaves the cache as it was
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staging, filter="data")
            shutil.copytree(staging, self.path, dirs_exist_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def save_to_mlflow(self, client: Any, run_id: str) -> None:
        """Log the packed cache as ``compile-cache/<key>.tar.gz`` of ``run_id`` and tag the run
        with the key (``servegate.compile_cache_key``)."""
        with tempfile.TemporaryDirectory(prefix="servegate-cache-") as tmp:
            archive = self.pack(Path(tmp) / f"{self.key}.tar.gz")
            client.log_artifact(run_id, str(archive), artifact_path=ARTIFACT_DIR)
        client.set_tag(run_id, CACHE_TAG, self.key)

    def restore_from_mlflow(self, client: Any, experiment_ids: Sequence[str]) -> bool:
        """Unpack the cache of the newest run tagged with this key; False (and a warning) when
        there is none or it cannot be read."""
        try:
            runs = client.search_runs(list(experiment_ids),
                                      filter_string=f"tags.`{CACHE_TAG}` = '{self.key}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
        except Exception as exc:
            log.warning("compile cache %s: cannot search MLflow runs: %s", self.key, exc)
            return False
        if not runs:
            log.warning("compile cache %s: no MLflow run has one; compiling cold", self.key)
            return False
        run_id = runs[0].info.run_id
        with tempfile.TemporaryDirectory(prefix="servegate-cache-") as tmp:
            try:
                local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{self.key}.tar.gz", tmp)
                self.unpack(Path(local))
            except Exception as exc:
                log.warning("compile cache %s of run %s is missing or corrupt (%s); compiling cold",
                            self.key, run_id, exc)
                return False
        return True
