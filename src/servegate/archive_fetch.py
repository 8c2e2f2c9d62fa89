"""A registered version's archive, fetched from its ``servegate.archive`` URI and checked against
the sha256 recorded when it was built (as a restore checks it), for whatever ships it elsewhere:
KServe's storage trees, a serving image."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from servegate.errors import IntegrityError, PipelineError
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, Registry


def fetch_verified_archive(registry: Registry, name: str, version: str, target: Path, *,
                           what: str) -> None:
    """Copy ``version``'s archive to ``target``; ``IntegrityError`` when its bytes differ from
    the recorded sha256, or when none is recorded (unless unverified restores are allowed).
    ``what`` says what the archive is for, in the errors."""
    from servegate.artifact_access import download
    from servegate.config import allow_unverified_restore
    from servegate.integrity import verify_artifact

    tags = registry.tags(version)
    uri, expected = tags.get(ARCHIVE_TAG), tags.get(ARCHIVE_SHA256_TAG)
    if not uri:
        raise PipelineError(f"{name} v{version} has no archive ({ARCHIVE_TAG}): run the pipeline on it")
    if not expected and not allow_unverified_restore():
        raise IntegrityError(f"{name} v{version} records no {ARCHIVE_SHA256_TAG}: refusing to "
                             f"{what} an archive nobody can check")
    with tempfile.TemporaryDirectory() as tmp:
        local = download(uri, Path(tmp), what=f"the archive of {name} v{version}")
        if expected:
            verify_artifact(local, expected, f"{name} v{version} ({uri})")
        shutil.copyfile(local, target)
