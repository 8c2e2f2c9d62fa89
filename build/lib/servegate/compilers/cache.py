"""Compile caches, paid once per device type: Inductor's and Triton's caches (and TensorRT's
timing cache) kept under ``root/<device key>``, packed to a tar.gz and shared through MLflow.

``activate()`` points ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` at the cache for the
compile and restores the environment afterwards. A missing or corrupt cache is a warning, never a
failure: the compile just runs cold.

Cached compiled code runs when it is loaded, so sharing is opt-in (``compile_cache=shared``) and a
cache is restored only from a run of the same experiment, when its archive is at most
``MAX_ARCHIVE_BYTES`` (and unpacks to at most ``MAX_UNPACKED_BYTES``) and its sha256 is the one
that run recorded when it logged it (``servegate.compile_cache_sha256``).
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
#: MLflow run tag holding the sha256 of the packed cache the run logged.
SHA256_TAG = "servegate.compile_cache_sha256"
#: MLflow artifact folder of the caches.
ARTIFACT_DIR = "compile-cache"
#: The largest packed cache restored, and the most it may unpack to.
MAX_ARCHIVE_BYTES = 2 << 30
MAX_UNPACKED_BYTES = 8 << 30
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

    def unpack(self, archive: Path, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> None:
        """Merge a packed cache into this one (``tarfile``'s ``data`` filter: no links out, no
        absolute paths; at most ``max_unpacked_bytes`` of files). Raises ``tarfile.TarError`` /
        ``OSError`` on a corrupt or oversized archive."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.root))
        try:  # extracted whole before merging: a corrupt archive leaves the cache as it was
            with tarfile.open(archive, "r:gz") as tar:
                if sum(m.size for m in tar.getmembers()) > max_unpacked_bytes:
                    raise tarfile.TarError(f"it unpacks to more than {max_unpacked_bytes} bytes")
                tar.extractall(staging, filter="data")
            shutil.copytree(staging, self.path, dirs_exist_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def save_to_mlflow(self, client: Any, run_id: str) -> None:
        """Log the packed cache as ``compile-cache/<key>.tar.gz`` of ``run_id`` and tag the run
        with the key (``servegate.compile_cache_key``)."""
        from servegate.integrity import artifact_sha256

        with tempfile.TemporaryDirectory(prefix="servegate-cache-") as tmp:
            archive = self.pack(Path(tmp) / f"{self.key}.tar.gz")
            client.log_artifact(run_id, str(archive), artifact_path=ARTIFACT_DIR)
            client.set_tag(run_id, SHA256_TAG, artifact_sha256(archive))
        client.set_tag(run_id, CACHE_TAG, self.key)

    def restore_from_mlflow(self, client: Any, experiment_ids: Sequence[str],
                            max_archive_bytes: int = MAX_ARCHIVE_BYTES) -> bool:
        """Unpack the cache of the newest run of ``experiment_ids`` tagged with this key whose
        archive is within ``max_archive_bytes`` and hashes to the sha256 the run recorded; False
        (and a warning) when there is none or it cannot be read or verified."""
        from servegate.integrity import artifact_sha256

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
        run = runs[0]
        run_id, expected = run.info.run_id, run.data.tags.get(SHA256_TAG)
        if run.info.experiment_id not in set(experiment_ids) or not expected:
            log.warning("compile cache %s of run %s records no %s; not restored (compiling cold)",
                        self.key, run_id, SHA256_TAG)
            return False
        name = f"{self.key}.tar.gz"
        listed = {Path(f.path).name: f.file_size for f in client.list_artifacts(run_id, ARTIFACT_DIR)}
        size = listed.get(name)
        if size is None or size > max_archive_bytes:
            log.warning("compile cache %s of run %s is %s; not restored (compiling cold)", self.key,
                        run_id, "missing" if size is None else f"{size} bytes, over the "
                        f"{max_archive_bytes}-byte limit")
            return False
        with tempfile.TemporaryDirectory(prefix="servegate-cache-") as tmp:
            try:
                from servegate.artifact_access import storage_uri

                storage_uri(f"runs:/{run_id}/{ARTIFACT_DIR}/{name}", what=f"compile cache {self.key}")
                local = Path(client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{name}", tmp))
                if local.stat().st_size > max_archive_bytes or artifact_sha256(local) != expected:
                    log.warning("compile cache %s of run %s does not match the sha256 that run "
                                "recorded; not restored (compiling cold)", self.key, run_id)
                    return False
                self.unpack(local)
            except Exception as exc:
                log.warning("compile cache %s of run %s is missing or corrupt (%s); compiling cold",
                            self.key, run_id, exc)
                return False
        return True
