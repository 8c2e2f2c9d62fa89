"""The container engine, through the Docker API (the docker SDK): Docker Engine, or podman's
Docker-compatible service (``podman system service``), wherever ``DOCKER_HOST`` points."""

from __future__ import annotations

from typing import Any

from servegate.config import container_engine
from servegate.errors import ConfigError, ServerNotRunning


def connect(timeout_s: float = 600.0) -> Any:
    """A ``docker.DockerClient`` of the engine that answers a ping; ``ServerNotRunning`` saying
    where it looked when none does."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover (a dependency of servegate)
        raise ConfigError("the docker package is needed for servegate's image commands") from exc
    where = container_engine() or "the default socket (unix:///var/run/docker.sock)"
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except docker.errors.DockerException as exc:
        raise ServerNotRunning(
            f"no container engine answers at {where}: start Docker, or podman's Docker API "
            f"(podman system service unix:///PATH/podman.sock) and set DOCKER_HOST to it "
            f"({exc})") from exc
    return client
