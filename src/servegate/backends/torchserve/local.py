"""Start, find and stop a local TorchServe in its own working directory.

Everything the server writes stays in that directory: ``config.properties`` rendered from
``serving_configs/torchserve``, ``key_file.json``, ``logs/``, the pid file and Java's temp files.
The server runs in its own process group, so stopping it leaves no worker behind.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx

from servegate._resources import serving_configs_dir
from servegate.backends._process import (
    StopOutcome,
    alive,
    free_port,
    identity,
    identity_mismatch,
    minimal_environment,
    stop_recorded,
)
from servegate.backends.torchserve.client import Endpoints, TorchServeClient
from servegate.config import TorchServeSettings
from servegate.errors import ServerError, ServerNotRunning, ServerStartError
from servegate.locks import server_lock

STATE_FILE = "server.json"
KEY_FILE = "key_file.json"
#: Answers (embeddings of a full batch as JSON) may be larger than requests.
MAX_RESPONSE_SIZE = 8 << 20


@dataclass(frozen=True)
class ServerState:
    """What ``server.json`` records of a running local server."""

    pid: int
    workdir: str
    model_store: str
    inference: str
    management: str
    metrics: str
    key_file: str | None
    #: The launcher's start time and command line, checked before anything is signalled
    #: (None in state files written before they were recorded).
    create_time: float | None = None
    cmdline: list[str] | None = None

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.inference, self.management, self.metrics)

    def client(self, timeout: float = 120.0) -> TorchServeClient:
        return TorchServeClient(self.endpoints, Path(self.key_file) if self.key_file else None,
                                timeout=timeout)


def render_config(settings: TorchServeSettings, ports: dict[str, int], model_store: Path) -> str:
    """``config.properties`` from the template (loopback, token auth, allowed_urls = store)."""
    templates = serving_configs_dir() / "torchserve"
    template = string.Template((templates / "config.properties").read_text(encoding="utf-8"))
    store = model_store.resolve()
    return template.substitute(
        host=settings.host,
        inference_port=ports["inference"],
        management_port=ports["management"],
        metrics_port=ports["metrics"],
        grpc_inference_port=ports["grpc_inference"],
        grpc_management_port=ports["grpc_management"],
        model_store=store,
        allowed_urls=allowed_urls(settings, store),
        metrics_config=templates / "metrics.yaml",
        job_queue_size=100,
        max_request_size=settings.max_request_size,
        max_response_size=MAX_RESPONSE_SIZE,
        log4j_config=templates / "log4j2.xml",
    ) + (f"token_expiration_min={settings.token_expiration_min:g}\n"
         if settings.token_expiration_min else "")


def allowed_urls(settings: TorchServeSettings, store: Path) -> str:
    """``allowed_urls`` as written in ``config.properties`` (a Java properties file, so every
    backslash doubled): archives of the model store, and under each allowed URL prefix."""
    from servegate.artifact_urls import allowed_url_pattern

    patterns = [f"file://{_regex_escape(str(store))}/[^/]+\\.mar"]
    patterns += [allowed_url_pattern(prefix) for prefix in settings.allowed_url_prefixes]
    return ",".join(p.replace("\\", "\\\\") for p in patterns)


def _regex_escape(path: str) -> str:
    # Escape only what a file path can hold that is special in a Java regex.
    return "".join("\\" + c if c in ".+*?^$()[]{}|" else c for c in path)


class LocalTorchServe:
    """A TorchServe process owned by servegate, described by ``<workdir>/server.json``."""

    def __init__(self, settings: TorchServeSettings | None = None) -> None:
        self.settings = settings or TorchServeSettings()
        self.workdir = Path(self.settings.workdir).resolve()
        self.model_store = self.workdir / "model-store"

    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    def _recorded(self) -> ServerState | None:
        try:
            return ServerState(**json.loads(self.state_path.read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def state(self) -> ServerState | None:
        """The recorded state if that server is alive, still the process we started, and
        answers; else None."""
        state = self._recorded()
        if state is None or not alive(state.pid):
            return None
        if identity_mismatch(state.pid, state.create_time, state.cmdline) is not None:
            return None
        if not _answers(state):
            return None
        return state

    def _lock(self):  # one start/stop per directory; a second one waits, bounded, then Busy
        return server_lock(self.workdir, wait_s=self.settings.ready_timeout_s)

    def start(self) -> ServerState:
        """Start TorchServe (or return the one already running here) and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            return self._start()

    def _start(self) -> ServerState:
        running = self.state()
        if running is not None:
            return running
        self.stop()  # a recorded server that no longer answers: clear it and its processes
        if not self.settings.token_auth:
            raise ServerStartError("servegate keeps TorchServe's token auth on; it cannot be disabled")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.model_store.mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        (self.workdir / KEY_FILE).unlink(missing_ok=True)
        s = self.settings
        ports = {
            "inference": s.inference_port or free_port(s.host),
            "management": s.management_port or free_port(s.host),
            "metrics": s.metrics_port or free_port(s.host),
            "grpc_inference": free_port(s.host),
            "grpc_management": free_port(s.host),
        }
        config = self.workdir / "config.properties"
        config.write_text(render_config(s, ports, self.model_store), encoding="utf-8")
        with open(self.workdir / "logs" / "stdout.log", "ab") as log:  # the child keeps its copy
            process = subprocess.Popen(
                [_torchserve_executable(), "--start", "--foreground", "--ncs",
                 "--model-store", str(self.model_store), "--ts-config", str(config)],
                cwd=self.workdir,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:  # the start time now; the command line once it answers (after any exec)
            recorded = identity(process.pid)
        except Exception:  # it died at once: _wait_up reports its exit code
            recorded = {"create_time": None, "cmdline": None}
        state = ServerState(
            pid=process.pid,
            workdir=str(self.workdir),
            model_store=str(self.model_store),
            inference=f"http://{s.host}:{ports['inference']}",
            management=f"http://{s.host}:{ports['management']}",
            metrics=f"http://{s.host}:{ports['metrics']}",
            key_file=str(self.workdir / KEY_FILE),
            create_time=recorded["create_time"],  # type: ignore[arg-type]
        )
        self.state_path.write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        try:
            self._wait_up(state, process)
        except ServerStartError:
            self.stop()
            raise
        state = replace(state, cmdline=identity(process.pid)["cmdline"])  # type: ignore[arg-type]
        self.state_path.write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        return state

    def _environment(self) -> dict[str, str]:
        """A minimal environment: no MLflow, cloud or other credentials reach the server or
        its workers (``_process.minimal_environment``)."""
        tmp = str(self.workdir / "tmp")
        return minimal_environment({
            "LOG_LOCATION": str(self.workdir / "logs"),
            "METRICS_LOCATION": str(self.workdir / "logs"),
            "TEMP": tmp, "TMPDIR": tmp,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })

    def _wait_up(self, state: ServerState, process: subprocess.Popen[bytes]) -> None:
        """Up = the key file exists and the management API answers an authorised call."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        key_file = Path(state.key_file or "")
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerStartError(
                    f"TorchServe exited with {process.returncode}; see {self.workdir / 'logs'}"
                )
            if key_file.exists() and _answers(state):
                return
            time.sleep(0.3)
        raise ServerStartError(f"TorchServe did not answer within {self.settings.ready_timeout_s}s")

    def stop(self, timeout_s: float = 30.0) -> StopOutcome:
        """Stop the server and every process of its group; truthy if one was running.

        The recorded pid is signalled only while its start time and command line match
        ``server.json``; otherwise the state file is stale (the pid was reused): it is removed,
        nothing is killed, and ``.stale`` says why.
        """
        if not self.state_path.exists():
            return StopOutcome(False)
        with self._lock():
            state = self._recorded()
            if state is None:
                self.state_path.unlink(missing_ok=True)
                return StopOutcome(False)
            stopped, stale = stop_recorded(state.pid, state.create_time, state.cmdline, timeout_s)
            self.state_path.unlink(missing_ok=True)
            return StopOutcome(stopped, stale)


def _answers(state: ServerState) -> bool:
    """The management API answers an authorised call (a dead frontend with a live launcher doesn't)."""
    with state.client(timeout=5) as client:
        try:
            client.list_models()
            return True
        except (ServerNotRunning, httpx.HTTPError):
            return False
        except ServerError:
            return True  # it answered, if only with an error


def _torchserve_executable() -> str:
    candidate = Path(sys.executable).parent / "torchserve"
    if candidate.exists():
        return str(candidate)
    raise ServerStartError("torchserve is not installed in this environment (pip install servegate[torch])")
