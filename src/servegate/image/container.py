"""``servegate image run`` / ``stop``: a container of servegate's image, started through the
Docker API, its ports published (management and metrics on the host's loopback only), its key
file and logs in a host directory, and optionally a host model store mounted read-only, which is
where ``servegate run`` copies new versions (``SERVEGATE_TORCHSERVE_MODEL_STORE``).

Ready means: the key file exists and the management API answers a call made with its key.
"""

from __future__ import annotations

import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servegate.backends._process import free_port
from servegate.errors import ConfigError, ServerError, ServerNotRunning, ServerStartError
from servegate.image.recipe import DEFAULT_USER, LABEL_KIND, MODEL_STORE, PORTS, WORKDIR
from servegate.tls import ALLOW_INSECURE_HTTP_ENV

KEY_FILE = "key_file.json"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RunOptions:
    image: str
    name: str
    #: Host directory for the key file and logs (mounted read-write).
    workdir: Path
    #: Host model store mounted over the image's (read-only); None: the baked archives only.
    model_store: Path | None = None
    #: Where the inference port is published (management and metrics: loopback only).
    host: str = LOOPBACK
    inference_port: int = 0
    management_port: int = 0
    metrics_port: int = 0
    #: ``uid:gid`` TorchServe runs as; None: this process's own (it reads the store and writes
    #: the workdir as you do), or the image's non-root user when you are root.
    user: str | None = None
    #: Explicit opt-in to plain HTTP on an address other hosts reach (the image has no TLS).
    insecure_http: bool = False
    ready_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if not _is_loopback(self.host) and not self.insecure_http:
            raise ConfigError(
                f"publishing inference on {self.host} serves plain HTTP to other hosts (the "
                "image has no TLS): put a TLS proxy or load balancer in front and pass "
                "--insecure-http to say so, or keep the default 127.0.0.1")
        if self.model_store is not None and not self.model_store.is_dir():
            raise ConfigError(f"model store {self.model_store} is not a directory")


@dataclass(frozen=True)
class RunningImage:
    name: str
    container_id: str
    inference_url: str
    management_url: str
    metrics_url: str
    key_file: Path
    model_store: Path | None
    #: Inference is plain HTTP on an address other hosts reach (``RunOptions.insecure_http``).
    insecure_http: bool = False

    def attach_environment(self) -> dict[str, str]:
        """The ``SERVEGATE_TORCHSERVE_*`` variables that attach ``servegate run`` to it."""
        variables = {"SERVEGATE_TORCHSERVE_MANAGEMENT_URL": self.management_url,
                     "SERVEGATE_TORCHSERVE_INFERENCE_URL": self.inference_url,
                     "SERVEGATE_TORCHSERVE_METRICS_URL": self.metrics_url,
                     "SERVEGATE_TORCHSERVE_KEY_FILE": str(self.key_file)}
        if self.model_store is not None:
            variables["SERVEGATE_TORCHSERVE_MODEL_STORE"] = str(self.model_store)
        if self.insecure_http:
            variables[ALLOW_INSECURE_HTTP_ENV] = "1"  # you opted in at run
        return variables


def run_image(options: RunOptions, client: Any) -> RunningImage:
    """Start a container of ``options.image`` and wait until it is ready; on failure it is
    removed and ``ServerStartError`` carries its last log lines."""
    import docker

    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    (workdir / KEY_FILE).unlink(missing_ok=True)
    user = options.user or (DEFAULT_USER if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}")
    if options.user is None and os.getuid() == 0:
        _hand_over(workdir, user)
    ports = {"inference": options.inference_port or free_port(options.host),
             "management": options.management_port or free_port(LOOPBACK),
             "metrics": options.metrics_port or free_port(LOOPBACK)}
    volumes = {str(workdir): {"bind": str(WORKDIR), "mode": "rw"}}
    store = options.model_store.resolve() if options.model_store is not None else None
    if store is not None:
        volumes[str(store)] = {"bind": str(MODEL_STORE), "mode": "ro"}
    try:
        container = client.containers.run(
            options.image, name=options.name, detach=True, user=user, volumes=volumes,
            ports={f"{PORTS['inference']}/tcp": (options.host, ports["inference"]),
                   f"{PORTS['management']}/tcp": (LOOPBACK, ports["management"]),
                   f"{PORTS['metrics']}/tcp": (LOOPBACK, ports["metrics"])},
            labels={LABEL_KIND: "container"}, security_opt=["no-new-privileges"])
    except docker.errors.DockerException as exc:
        raise ServerStartError(f"could not start {options.image} as {options.name}: {exc}") from exc
    host = f"[{options.host}]" if ":" in options.host else options.host
    running = RunningImage(options.name, container.id,
                           inference_url=f"http://{host}:{ports['inference']}",
                           management_url=f"http://{LOOPBACK}:{ports['management']}",
                           metrics_url=f"http://{LOOPBACK}:{ports['metrics']}",
                           key_file=workdir / KEY_FILE, model_store=store,
                           insecure_http=not _is_loopback(options.host))
    try:
        _wait_ready(running, container, options.ready_timeout_s)
    except BaseException:
        container.remove(force=True)
        raise
    return running


def _hand_over(workdir: Path, user: str) -> None:
    """As root, give the image's user the workdir it writes (and nothing else)."""
    uid, _, gid = user.partition(":")
    for path in (workdir, workdir / "logs"):
        os.chown(path, int(uid), int(gid or uid))


def _wait_ready(running: RunningImage, container: Any, timeout_s: float) -> None:
    from servegate.backends.torchserve.client import Endpoints, TorchServeClient

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            raise ServerStartError(f"{running.name} exited while starting:\n{_logs(container)}")
        if running.key_file.exists():
            endpoints = Endpoints(running.inference_url, running.management_url,
                                  running.metrics_url)
            with TorchServeClient(endpoints, running.key_file, timeout=5,
                                  allow_insecure_http=running.insecure_http) as client:
                try:
                    client.list_models()
                    return
                except ServerNotRunning:
                    pass
                except ServerError:
                    return  # it answered, if only with an error
        time.sleep(1.0)
    raise ServerStartError(f"{running.name} was not ready after {timeout_s:.0f}s:\n"
                           f"{_logs(container)}")


def _logs(container: Any, lines: int = 40) -> str:
    try:
        return container.logs(tail=lines).decode("utf-8", "replace")
    except Exception as exc:  # noqa: BLE001 (the logs are a courtesy; the error says why)
        return f"(no logs: {exc})"


def stop_image(name: str, client: Any, timeout_s: int = 5) -> bool:
    """Stop and remove the container ``name`` (one ``image run`` started); False when absent.
    TorchServe runs as the container's first process, which ignores SIGTERM without an init: it
    is killed after ``timeout_s`` (it keeps no state: the registry restores its models)."""
    import docker

    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return False
    if container.labels.get(LABEL_KIND) != "container":
        raise ConfigError(f"{name} is not a container servegate image run started")
    container.stop(timeout=timeout_s)
    container.remove(force=True)
    return True


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
