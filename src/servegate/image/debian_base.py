"""A Debian base image made locally, for machines that can reach a Debian mirror but no image
registry: ``debootstrap`` builds a minimal bookworm root filesystem with Python 3.11 and Java,
and the engine imports it as an image (``servegate image base``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from servegate.errors import ConfigError, PackagingError

DEFAULT_TAG = "localhost/servegate-debian:bookworm"
#: bookworm's python3 is 3.11, the Python servegate and its wheelhouse are built for.
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "openjdk-17-jre-headless", "ca-certificates")


def has_image(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def make_debian_base(client: Any, tag: str = DEFAULT_TAG, *, mirror: str = MIRROR) -> str:
    """Build the root filesystem with ``debootstrap`` (as root) and import it as ``tag``;
    returns the image id. ``ConfigError`` when debootstrap is missing, ``PackagingError`` with
    its output when it fails."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ConfigError("making a Debian base needs debootstrap (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="servegate-base-") as tmp:
        root, archive = Path(tmp) / "root", Path(tmp) / "root.tar"
        _run([debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
              str(root), mirror], "debootstrap")
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(archive), "."], "tar")
        repository, _, version = tag.rpartition(":")
        if not repository or "/" in version:
            repository, version = tag, "latest"
        with open(archive, "rb") as stream:
            answer = client.api.import_image_from_data(stream, repository=repository, tag=version)
    # podman's Docker API names an import REPOSITORY:latest whatever tag it is given
    for name in (f"{repository}:{version}", f"{repository}:latest"):
        if has_image(client, name):
            image = client.images.get(name)
            break
    else:
        raise PackagingError(f"the engine did not import the base {tag}: {answer}")
    if not has_image(client, f"{repository}:{version}"):
        image.tag(repository, version)
    return str(image.id)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PackagingError(f"{what} failed (exit {done.returncode}):\n"
                             + (done.stderr or done.stdout)[-3000:])
