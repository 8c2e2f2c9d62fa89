"""The serving image's wheelhouse: the packages TorchServe and servegate's handlers need, made on
the host with ``pip download`` at exactly the versions installed here (the ones the tests ran),
every other dependency constrained to its installed version too.

Kept between builds in a directory named by the hash of those pins (``pip download`` skips what
it already holds there), so the image's layers stay cached while the versions do not change, and
a directory never mixes two sets of versions.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from servegate.errors import PackagingError

#: What a worker imports: TorchServe, torch and numpy (every handler), Pillow (images),
#: tokenizers (text), onnxruntime (ONNX artifacts), PyYAML (TorchServe forgets it).
RUNTIME_PACKAGES = ("torch", "torchserve", "numpy", "pillow", "pyyaml")
OPTIONAL_PACKAGES = ("tokenizers", "onnxruntime")
REQUIREMENTS = "requirements.txt"
CONSTRAINTS = "constraints.txt"


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def runtime_requirements() -> list[str]:
    """``name==version`` of each runtime package as installed here; the optional ones when
    present. ``PackagingError`` naming a missing required one."""
    missing = [p for p in RUNTIME_PACKAGES if installed_version(p) is None]
    if missing:
        raise PackagingError(f"the serving image needs {', '.join(missing)} installed here (its "
                             "wheelhouse takes the versions installed on this host)")
    present = [p for p in (*RUNTIME_PACKAGES, *OPTIONAL_PACKAGES) if installed_version(p)]
    return [f"{p}=={installed_version(p)}" for p in present]


def environment_constraints() -> list[str]:
    """Every distribution installed here at its version, except those installed from a
    directory or URL (an editable servegate): the image's dependencies resolve to the same."""
    found = [(dist.metadata["Name"], dist) for dist in metadata.distributions()]
    # an editable install can be seen twice: its dist-info (with direct_url.json) and the
    # egg-info setuptools left in the source tree (without)
    local = {name.lower() for name, dist in found if name and dist.read_text("direct_url.json")}
    pins: dict[str, str] = {}
    for name, dist in found:
        if name and name.lower() not in local:
            pins.setdefault(name.lower(), f"{name}=={dist.version}")
    return sorted(pins.values())


def make_wheelhouse(root: Path, *, index_url: str | None = None,
                    extra_index_urls: Sequence[str] = ()) -> Path:
    """The wheelhouse of this environment under ``root``: the runtime packages and their
    dependencies (binary wheels for this Python and platform), its ``requirements.txt`` and
    ``constraints.txt``; ``PackagingError`` with pip's own message when it cannot be made."""
    if sys.version_info[:2] != (3, 11):
        raise PackagingError("the wheelhouse is made for the image's Python 3.11: run servegate "
                             f"on Python 3.11 (this is {sys.version.split()[0]})")
    requirements = "\n".join(runtime_requirements()) + "\n"
    constraints = "\n".join(environment_constraints()) + "\n"
    digest = hashlib.sha256((requirements + constraints).encode()).hexdigest()[:16]
    directory = root / digest
    directory.mkdir(parents=True, exist_ok=True)
    (directory / REQUIREMENTS).write_text(requirements, encoding="utf-8")
    (directory / CONSTRAINTS).write_text(constraints, encoding="utf-8")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--dest", str(directory), "-r", str(directory / REQUIREMENTS),
               "-c", str(directory / CONSTRAINTS)]
    if index_url:
        command += ["--index-url", index_url]
    for url in extra_index_urls:
        command += ["--extra-index-url", url]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PackagingError("pip could not download the image's wheels:\n"
                             + (done.stderr or done.stdout)[-3000:])
    return directory
