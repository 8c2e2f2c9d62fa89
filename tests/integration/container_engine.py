"""A container engine for the image tests: the one ``DOCKER_HOST`` names, else podman's Docker
API started here (DESIGN.md: podman with runc, no ulimits), and a Debian base made once per
machine with debootstrap (no image can be pulled here)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: setting RLIMIT_NOFILE is not permitted on this kind of host; crun fails on its hybrid cgroups
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n'
BASE = "localhost/servegate-debian:bookworm"


@contextlib.contextmanager
def container_engine(directory: Path) -> Iterator[str]:
    """``DOCKER_HOST`` of an engine that answers: the environment's, else a podman service on
    a socket in ``directory``, stopped afterwards. Skips, saying why, only where none can run."""
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("no container engine: DOCKER_HOST is unset and podman is not installed "
                    "(make setup installs podman, runc and debootstrap where it runs apt-get as root)")
    if shutil.which("runc") is None:
        pytest.skip("podman needs the runc runtime here (crun fails on hybrid cgroups): "
                    "apt-get install runc")
    conf = directory / "containers.conf"
    conf.write_text(CONTAINERS_CONF, encoding="utf-8")
    socket = directory / "podman.sock"
    url = f"unix://{socket}"
    log = open(directory / "podman-service.log", "wb")  # noqa: SIM115 (closed below)
    service = subprocess.Popen([podman, "system", "service", "--time=0", url],
                               env=os.environ | {"CONTAINERS_CONF": str(conf)},
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_engine(url, service, directory / "podman-service.log")
        yield url
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
        log.close()


def _wait_for_engine(url: str, service: subprocess.Popen, log: Path) -> None:
    import docker

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if service.poll() is not None:
            pytest.fail(f"podman system service exited ({service.returncode}): {log.read_text()}")
        try:
            docker.DockerClient(base_url=url, timeout=10).ping()
            return
        except docker.errors.DockerException:
            time.sleep(0.5)
    pytest.fail(f"podman system service did not answer at {url}: {log.read_text()}")


def ensure_base(client) -> str:
    """The Debian base, made with debootstrap the first time on this machine."""
    from servegate.image.debian_base import has_image, make_debian_base

    if not has_image(client, BASE):
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"no base image {BASE} and debootstrap cannot make one here (it needs "
                        "root and the debootstrap package)")
        make_debian_base(client, BASE)
    return BASE
