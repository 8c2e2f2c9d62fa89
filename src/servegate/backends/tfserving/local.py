"""Start, find and stop a local TF Serving in its own working directory: the
``tensorflow_model_server`` binary on PATH first, else ``docker run tensorflow/serving`` when a
Docker engine holds that image, else ``ServerNotRunning`` saying how to provide a server.

Models live in ``<workdir>/models`` beside the server's configuration files (``config.py``);
the state file, lock, reuse and readiness are shared with TorchServe (``backends/_local.py``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from servegate.backends._local import LocalServer
from servegate.backends._process import StopOutcome, free_port, identity_mismatch, stop_recorded
from servegate.backends.tfserving.client import TFServingClient
from servegate.backends.tfserving.config import batching_parameters, write_server_configs
from servegate.config import TFServingAttach, TFServingSettings
from servegate.errors import ServerNotRunning, ServerStartError

ENV_URL = f"{TFServingAttach.PREFIX}URL"
ENV_GRPC = f"{TFServingAttach.PREFIX}GRPC"
ENV_MODEL_ROOT = f"{TFServingAttach.PREFIX}MODEL_ROOT"
ENV_SERVER_ROOT = f"{TFServingAttach.PREFIX}SERVER_ROOT"
BINARY = "tensorflow_model_server"
DOCKER_IMAGE = TFServingSettings.model_fields["docker_image"].default
CONTAINER_ROOT = "/models"

HOW_TO_PROVIDE = (
    "no TF Serving reachable. Provide one of: (1) a running server: set "
    f"{ENV_URL}=http://HOST:8501 (REST), {ENV_GRPC}=HOST:8500 (gRPC) and {ENV_MODEL_ROOT}=DIR, a "
    f"directory that server reads (add {ENV_SERVER_ROOT}=PATH if it sees DIR under another path); "
    f"(2) `{BINARY}` on PATH (TF Serving's release binary or the tensorflow-model-server apt "
    "package); (3) a Docker engine holding the tensorflow/serving image (`docker pull "
    "tensorflow/serving` or `docker load -i tensorflow-serving.tar`)"
)

#: Unix socket paths are limited to 107 bytes (sun_path).
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class TFServingState:
    """What ``server.json`` records of a server servegate started."""

    how: str  # "binary" or "docker"
    ident: str  # pid or container id
    rest_url: str
    grpc_target: str
    model_root: str
    server_root: str
    #: A binary's start time and command line, checked before it is signalled.
    create_time: float | None = None
    cmdline: list[str] | None = None
    #: Started with per-model batching (each version's ``batching_params.pbtxt``); a server
    #: recorded before servegate did so batches every model with its ``batching.config``.
    per_model_batching: bool = False

    def client(self) -> TFServingClient:
        return TFServingClient(self.rest_url, self.grpc_target)


#: The flag a TF Serving needs to run XLA-compiled functions on CPU (``compiler=xla``).
TFSERVING_XLA_FLAG = "--xla_cpu_compilation_enabled=true"


def docker_has_image(image: str = DOCKER_IMAGE) -> bool:
    """A Docker engine answers and holds ``image`` (nothing is pulled)."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                              timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LocalTFServing(LocalServer[TFServingState]):
    """A TF Serving started by servegate (``tensorflow_model_server`` or Docker), recorded in
    ``<workdir>/server.json``; models live in ``<workdir>/models`` with the config files."""

    state_type = TFServingState

    def __init__(self, settings: TFServingSettings | None = None) -> None:
        self.settings = settings or TFServingSettings()
        super().__init__(self.settings.workdir, self.settings.ready_timeout_s)
        self.model_root = self.workdir / "models"

    def _is_ours(self, state: TFServingState) -> bool:
        return state.how != "binary" or identity_mismatch(
            int(state.ident), state.create_time, state.cmdline) is None

    def _answers(self, state: TFServingState) -> bool:
        with state.client() as client:
            return client.ping()

    def grpc_socket_path(self) -> Path:
        """Where a binary's gRPC listens: ``<workdir>/run/grpc.sock`` (a 0700 directory), or a
        private temporary directory when that path is too long for a Unix socket."""
        run = self.workdir / "run"
        if len(str(run / "grpc.sock")) > MAX_SOCKET_PATH:
            run = Path(tempfile.mkdtemp(prefix="servegate-tfs-"))
        run.mkdir(parents=True, exist_ok=True)
        run.chmod(0o700)
        return run / "grpc.sock"

    def flags(self, grpc_port: int, rest_port: int, root: str,
              grpc_socket: str | None = None) -> list[str]:
        """The server's command line; with ``grpc_socket``, gRPC listens only on that Unix
        socket (``--port=0`` disables its TCP listener)."""
        s = self.settings
        files = write_server_configs(
            self.model_root,
            batching=batching_parameters(max_batch_size=s.max_batch_size,
                                         batch_timeout_ms=s.batch_timeout_ms))
        grpc = ([f"--port={grpc_port}"] if grpc_socket is None else
                ["--port=0", f"--grpc_socket_path={grpc_socket}"])
        flags = [*grpc, f"--rest_api_port={rest_port}",
                 *files.server_flags(lambda p: f"{root}/{Path(p).name}"),
                 "--model_config_file_poll_wait_seconds=0", "--file_system_poll_wait_seconds=1",
                 "--enable_model_warmup=true"]
        if s.xla:
            flags.append(TFSERVING_XLA_FLAG)
        return flags

    def _launch(self) -> TFServingState:
        s = self.settings
        binary = shutil.which(BINARY)
        if binary is None and not docker_has_image(s.docker_image):
            raise ServerNotRunning(HOW_TO_PROVIDE)
        self.model_root.mkdir(parents=True, exist_ok=True)
        rest_port, grpc_port = s.rest_port or free_port(s.host), s.grpc_port or free_port(s.host)
        rest_url = f"http://{s.host}:{rest_port}"
        if binary is not None:
            # tensorflow_model_server has no bind-address flag: TCP listeners take every
            # interface. gRPC (whose ModelService reloads the model config, unauthenticated)
            # therefore goes to a private Unix socket unless TCP was asked for explicitly.
            command, grpc_target = self.binary_command(binary, grpc_port, rest_port)
            process, create_time = self._spawn(command, self.workdir / "tfserving.log",
                                               self._environment())
            state = self._record(TFServingState(
                "binary", str(process.pid), rest_url, grpc_target, str(self.model_root),
                str(self.model_root), create_time=create_time, per_model_batching=True))
        else:
            command = ["docker", "run", "-d", "--rm", "--name", f"servegate-tfserving-{rest_port}",
                       "-p", f"{s.host}:{rest_port}:8501", "-p", f"{s.host}:{grpc_port}:8500",
                       "-v", f"{self.model_root}:{CONTAINER_ROOT}", "--entrypoint", BINARY,
                       s.docker_image, *self.flags(8500, 8501, CONTAINER_ROOT)]
            run = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if run.returncode != 0:
                raise ServerStartError(f"docker run {s.docker_image} failed: {run.stderr.strip()}")
            state = self._record(TFServingState(
                "docker", run.stdout.strip(), rest_url, f"{s.host}:{grpc_port}",
                str(self.model_root), CONTAINER_ROOT, per_model_batching=True))
        with state.client() as client:
            self._wait_ready(client.ping, "TF Serving", self.workdir)
        if state.how == "binary":
            state = self._record_cmdline(state, int(state.ident))
        return state

    def binary_command(self, binary: str, grpc_port: int,
                       rest_port: int) -> tuple[list[str], str]:
        """``tensorflow_model_server``'s command line and the gRPC target to reach it."""
        if self.settings.grpc_tcp_all_interfaces:
            return ([binary, *self.flags(grpc_port, rest_port, str(self.model_root))],
                    f"{self.settings.host}:{grpc_port}")
        socket_path = self.grpc_socket_path()
        socket_path.unlink(missing_ok=True)
        return ([binary, *self.flags(0, rest_port, str(self.model_root), str(socket_path))],
                f"unix:{socket_path}")

    def _stop_recorded(self, state: TFServingState, timeout_s: float) -> StopOutcome:
        """``docker stop`` a container; a binary's process group only while its start time and
        command line match the state file (otherwise nothing is killed and ``.stale`` says
        why)."""
        if state.how == "docker":
            subprocess.run(["docker", "stop", state.ident], capture_output=True, timeout=60)
            return StopOutcome(True)
        stopped, stale = stop_recorded(int(state.ident), state.create_time, state.cmdline,
                                       timeout_s)
        return StopOutcome(stopped or stale is None, stale)
