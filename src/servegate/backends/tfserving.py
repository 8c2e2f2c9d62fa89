"""TF Serving backend: REST + gRPC client, a local server (binary or Docker), and the deployer.

Routing model. TF Serving's unversioned URL always answers with the HIGHEST loaded version, so a
new version would take default traffic the moment it loads. servegate therefore routes through
version labels: ``stable`` is the default (the champion) and ``canary`` the challenger under
gate; ``endpoint(name)`` is ``/v1/models/{name}/labels/stable``. TF Serving only lets a label point
at a version that is already AVAILABLE, so a deploy is two config reloads: serve the new version,
wait until it is AVAILABLE (REST status API), then label it.

State. The desired state is ``<model_root>/models.config`` (a ``ModelServerConfig`` with the
``specific`` version policy), the file a local server is started with; every change is sent whole
with ``HandleReloadConfigRequest`` on the gRPC ModelService and written back only once the
server accepted it. A server you attach to must read its models from the same directory.

Server. ``open_tfserving`` attaches to ``SERVEGATE_TFSERVING_URL`` (+ ``SERVEGATE_TFSERVING_GRPC``,
``SERVEGATE_TFSERVING_MODEL_ROOT``), else starts ``tensorflow_model_server`` when it is on PATH,
else ``docker run tensorflow/serving`` when a Docker engine has that image, else raises
``ServerNotRunning`` saying how to provide one.

grpc, TensorFlow and tensorflow-serving-api are imported lazily.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from servegate.backends._process import (
    StopOutcome,
    free_port,
    identity,
    identity_mismatch,
    minimal_environment,
    stop_recorded,
)
from servegate.backends.base import ServerAccess, VersionInfo
from servegate.backends.model_root import LocalRoot, open_model_root
from servegate.config import ServerMode, TFServingAttach, attach_refused, home_dir
from servegate.errors import (
    ConfigError,
    ModelNotFound,
    ServerError,
    ServerNotRunning,
    ServerRequestError,
    ServerStartError,
)
from servegate.locks import server_lock
from servegate.naming import segment, validate_name
from servegate.packaging.tfserving_config import (
    CANARY,
    PROMETHEUS_PATH,
    STABLE,
    ModelEntry,
    batching_parameters,
    model_server_config,
    models_config_text,
    parse_models_config,
    write_server_configs,
)

ENV_URL = "SERVEGATE_TFSERVING_URL"
ENV_GRPC = "SERVEGATE_TFSERVING_GRPC"
ENV_MODEL_ROOT = "SERVEGATE_TFSERVING_MODEL_ROOT"
ENV_SERVER_ROOT = "SERVEGATE_TFSERVING_SERVER_ROOT"
MODELS_CONFIG = "models.config"
BINARY = "tensorflow_model_server"
DOCKER_IMAGE = "tensorflow/serving"
CONTAINER_ROOT = "/models"

HOW_TO_PROVIDE = (
    "no TF Serving reachable. Provide one of: (1) a running server: set "
    f"{ENV_URL}=http://HOST:8501 (REST), {ENV_GRPC}=HOST:8500 (gRPC) and {ENV_MODEL_ROOT}=DIR, a "
    f"directory that server reads (add {ENV_SERVER_ROOT}=PATH if it sees DIR under another path); "
    f"(2) `{BINARY}` on PATH (TF Serving's release binary or the tensorflow-model-server apt "
    "package); (3) a Docker engine holding the tensorflow/serving image (`docker pull "
    "tensorflow/serving` or `docker load -i tensorflow-serving.tar`)"
)


# ---- errors ------------------------------------------------------------------------------------
def _rest_error(response: httpx.Response, action: str) -> ServerError:
    try:
        body = response.json()
        message = str(body.get("error", body)) if isinstance(body, dict) else str(body)
    except ValueError:
        message = response.text.strip()
    status = response.status_code
    if status == 404 or message.startswith(("Unrecognized servable version label",
                                            "Servable not found")):
        return ModelNotFound(action, status=status, server_message=message)
    return ServerRequestError(action, status=status, server_message=message)


_GRPC_TO_HTTP = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
                 "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                 "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499,
                 "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def translate_rpc_error(exc: Any, action: str, target: str) -> ServerError:
    """A ``grpc.RpcError`` as a servegate error (status = the HTTP equivalent of its code)."""
    code = exc.code().name if exc.code() is not None else "UNKNOWN"
    details = exc.details() or ""
    if code == "UNAVAILABLE" and ("connect" in details.lower() or "unreachable" in details.lower()):
        return ServerNotRunning(f"{action}: TF Serving gRPC unreachable at {target}: {details}")
    status = _GRPC_TO_HTTP.get(code, 500)
    error = ModelNotFound if code == "NOT_FOUND" else ServerRequestError
    return error(action, status=status, server_message=f"{code}: {details}")


def build_reload_request(entries: list[ModelEntry]) -> Any:
    """The ``ReloadConfigRequest`` of ModelService.HandleReloadConfigRequest for ``entries``."""
    from tensorflow_serving.apis import model_management_pb2

    return model_management_pb2.ReloadConfigRequest(config=model_server_config(entries))


# ---- client ------------------------------------------------------------------------------------
class TFServingClient:
    """TF Serving's REST API (status, metadata, predict) and gRPC (ModelService, Predict)."""

    def __init__(self, rest_url: str, grpc_target: str, *, timeout: float = 60.0) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.grpc_target = grpc_target
        self.timeout = timeout
        self._http = httpx.Client(timeout=timeout)
        self._channel: Any = None

    def close(self) -> None:
        self._http.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> TFServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- REST ---------------------------------------------------------------------------------
    @staticmethod
    def model_path(name: str, version: str | int | None = None, label: str | None = None) -> str:
        if version is not None and label is not None:
            raise ConfigError("give a version or a label, not both")
        suffix = (f"/versions/{_version_number(version)}" if version is not None else
                  f"/labels/{segment(label)}" if label is not None else "")
        return f"/v1/models/{segment(validate_name(name))}{suffix}"

    def _rest(self, method: str, path: str, action: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, f"{self.rest_url}{path}", **kwargs)
        except httpx.TransportError as exc:
            raise ServerNotRunning(f"{action}: TF Serving unreachable at {self.rest_url}: "
                                   f"{exc}") from exc
        if not response.is_success:
            raise _rest_error(response, action)
        return response

    def status(self, name: str, version: str | int | None = None) -> dict[str, str]:
        """``{version: state}`` from the REST status API (``ModelNotFound`` if unknown)."""
        body = self._rest("GET", self.model_path(name, version), f"status of {name}").json()
        return {str(s["version"]): str(s["state"]) for s in body.get("model_version_status", [])}

    def status_detail(self, name: str) -> list[dict[str, Any]]:
        return list(self._rest("GET", self.model_path(name), f"status of {name}")
                    .json().get("model_version_status", []))

    def metadata(self, name: str, version: str | int | None = None) -> dict[str, Any]:
        path = self.model_path(name, version) + "/metadata"
        return dict(self._rest("GET", path, f"metadata of {name}").json())

    def predict_url(self, name: str, version: str | int | None = None,
                    label: str | None = None) -> str:
        return f"{self.rest_url}{self.model_path(name, version, label)}:predict"

    def predict(self, name: str, payload: Any, version: str | int | None = None,
                label: str | None = None) -> Any:
        """POST a ``{"instances": ...}`` or ``{"inputs": ...}`` body; the decoded JSON answer."""
        if not isinstance(payload, dict) or not {"instances", "inputs"} & payload.keys():
            raise ConfigError('a TF Serving predict body is {"instances": [...]} or '
                              '{"inputs": ...} (with an optional "signature_name")')
        path = self.model_path(name, version, label) + ":predict"
        return self._rest("POST", path, f"predict {name}", content=json.dumps(payload).encode(),
                          headers={"Content-Type": "application/json"}).json()

    def wait_state(self, name: str, version: str | int, states: set[str], *,
                   timeout_s: float = 120.0, absent_ok: bool = False) -> str:
        """Poll the REST status API until ``version`` reaches one of ``states``.

        A version that ends (``END``) with an error status fails at once with the server's message.
        """
        deadline = time.monotonic() + timeout_s
        last = "no status yet"
        while True:
            try:
                detail = self.status_detail(name)
                entry = next((s for s in detail if str(s["version"]) == str(version)), None)
                if entry is None:
                    if absent_ok:
                        return "ABSENT"
                    last = "not listed"
                else:
                    state = str(entry["state"])
                    error = entry.get("status", {})
                    if state in states:
                        return state
                    if state == "END" and error.get("error_code", "OK") != "OK":
                        raise ServerStartError(f"{name} v{version} failed to load: "
                                               f"{error.get('error_message', '')}")
                    last = state
            except ModelNotFound as exc:
                if absent_ok:
                    return "ABSENT"
                last = exc.server_message
            if time.monotonic() >= deadline:
                raise ServerStartError(f"{name} v{version} not {'/'.join(sorted(states))} after "
                                       f"{timeout_s:.0f}s (last: {last})")
            time.sleep(0.1)

    def metrics_text(self, path: str = PROMETHEUS_PATH) -> str:
        return self._rest("GET", path, "read metrics").text

    def ping(self) -> bool:
        """The REST API answers (a 404 for an unknown model is an answer)."""
        try:
            self._http.get(f"{self.rest_url}/v1/models/servegate-ping", timeout=5)
            return True
        except httpx.TransportError:
            return False

    # ---- gRPC ---------------------------------------------------------------------------------
    def channel(self) -> Any:
        if self._channel is None:
            import grpc

            self._channel = grpc.insecure_channel(self.grpc_target)
        return self._channel

    def _call(self, stub_method: Any, request: Any, action: str) -> Any:
        import grpc

        try:
            return stub_method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, action, self.grpc_target) from exc

    def reload_config(self, entries: list[ModelEntry]) -> None:
        """Replace the server's whole model configuration (HandleReloadConfigRequest)."""
        from tensorflow_serving.apis import model_service_pb2_grpc

        stub = model_service_pb2_grpc.ModelServiceStub(self.channel())
        response = self._call(stub.HandleReloadConfigRequest, build_reload_request(entries),
                              "reload the model config")
        if response.status.error_code != 0:  # tensorflow.error.OK
            raise ServerRequestError("reload the model config", status=400,
                                     server_message=response.status.error_message)

    def grpc_status(self, name: str, version: int | None = None) -> dict[str, str]:
        """``{version: state}`` through ModelService.GetModelStatus."""
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = int(version)
        stub = model_service_pb2_grpc.ModelServiceStub(self.channel())
        response = self._call(stub.GetModelStatus, request, f"status of {name}")
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return {str(s.version): state_name(s.state) for s in response.model_version_status}

    def predict_grpc(self, name: str, inputs: dict[str, Any], *, version: int | None = None,
                     label: str | None = None,
                     signature: str = "serving_default") -> dict[str, np.ndarray]:
        """PredictionService.Predict: numpy/list inputs in, numpy outputs out."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        from servegate.packaging.savedmodel import predict_request

        if version is not None and label is not None:
            raise ConfigError("give a version or a label, not both")
        request = predict_request(name, signature, inputs, version)
        if label is not None:
            request.model_spec.version_label = label
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel())
        response = self._call(stub.Predict, request, f"predict {name} (gRPC)")
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


# ---- deployer ----------------------------------------------------------------------------------
class TFServingBackend:
    """``ServingBackend`` of TF Serving: versions are SavedModel directories in ``model_root``."""

    kind = "tfserving"

    def __init__(self, client: TFServingClient, model_root: str | Path, *,
                 server_root: str | None = None, ready_timeout_s: float = 120.0) -> None:
        self.client = client
        self.root = open_model_root(model_root)
        #: The root as a local path (None when it is a remote filesystem's URI).
        self.model_root = self.root.path if isinstance(self.root, LocalRoot) else None
        self.server_root = (server_root or self.root.location).rstrip("/")
        self.ready_timeout_s = ready_timeout_s

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TFServingBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- desired state ------------------------------------------------------------------------
    def entries(self) -> dict[str, ModelEntry]:
        text = self.root.read_text(MODELS_CONFIG)
        return {} if text is None else {e.name: e for e in parse_models_config(text, MODELS_CONFIG)}

    def entry(self, name: str) -> ModelEntry | None:
        return self.entries().get(name)

    def _apply(self, entry: ModelEntry) -> None:
        """Send the whole configuration with ``entry`` changed (dropped if it has no version);
        the file is rewritten only once the server has accepted it."""
        entries = self.entries()
        if entry.versions:
            entries[entry.name] = entry
        else:
            entries.pop(entry.name, None)
        ordered = sorted(entries.values(), key=lambda e: e.name)
        self.client.reload_config(ordered)
        self.root.write_text(MODELS_CONFIG, models_config_text(ordered))

    def labels(self, name: str) -> dict[str, int]:
        entry = self.entry(name)
        return dict(entry.labels) if entry else {}

    # ---- ServingBackend -----------------------------------------------------------------------
    def _place(self, artifact: Path, name: str, version: int) -> None:
        """Put the SavedModel at ``<root>/<name>/<version>`` (a local root: via a hidden temp
        dir + rename; a remote one: copied in place, loaded only once models.config names it)."""
        relative = f"{validate_name(name)}/{_version_number(version)}"
        artifact = Path(artifact).resolve()
        graph = "saved_model.pb"
        if not (artifact / graph).is_file():
            raise ConfigError(f"{artifact} is not a SavedModel directory (no saved_model.pb)")
        if self.model_root is not None and (self.model_root / relative).resolve() == artifact:
            return
        existing = self.root.read_bytes(f"{relative}/{graph}")
        if existing is not None:
            if existing != (artifact / graph).read_bytes():
                raise ConfigError(f"{self.root.location}/{relative} already holds another "
                                  "SavedModel: versions are immutable, deploy a new version number")
            return
        self.root.put_tree(artifact, relative)

    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1,
               source_uri: str | None = None) -> None:
        """Serve a NEW version: placed atomically, loaded, AVAILABLE, then labelled ``canary``
        (``stable`` if it is the model's first version). The stable route is untouched."""
        number = _version_number(version)
        self._place(artifact, name, number)
        current = self.entry(name) or ModelEntry(name, f"{self.server_root}/{name}", ())
        versions = tuple(sorted({*current.versions, number}))
        # Labels may only name AVAILABLE versions: a server that lost our versions (restarted
        # without models.config) gets them back first, unlabelled, and its labels once loaded.
        available = self._available(name)
        safe = {k: v for k, v in current.labels.items() if v in available}
        self._apply(replace(current, versions=versions, labels=safe))
        try:
            for waiting in sorted({number, *current.labels.values()} - available):
                self.client.wait_state(name, waiting, {"AVAILABLE"},
                                       timeout_s=self.ready_timeout_s)
        except ServerStartError:
            self._apply(replace(current, labels=safe))  # a version that cannot load leaves again
            raise
        labels = dict(current.labels)
        labels[CANARY if STABLE in labels and labels[STABLE] != number else STABLE] = number
        if labels.get(CANARY) == labels.get(STABLE):
            labels.pop(CANARY, None)
        self._apply(replace(current, versions=versions, labels=labels))

    def _available(self, name: str) -> set[int]:
        try:
            return {int(v) for v, state in self.client.status(name).items() if state == "AVAILABLE"}
        except ModelNotFound:
            return set()

    def set_default(self, name: str, version: str) -> None:
        """Promote: ``stable`` moves to ``version`` (and ``canary`` leaves it)."""
        number = _version_number(version)
        current = self.entry(name)
        if current is None or number not in current.versions:
            raise ModelNotFound(f"promote {name} v{version}", status=404,
                                server_message="not deployed by servegate")
        labels = {k: v for k, v in current.labels.items() if not (k == CANARY and v == number)}
        labels[STABLE] = number
        self._apply(replace(current, labels=labels))

    promote = set_default

    def undeploy(self, name: str, version: str) -> None:
        """Unload ``version`` (never the stable one while others are served) and drop its labels;
        its files stay in the model root (a later deploy of the same version reuses them)."""
        number = _version_number(version)
        current = self.entry(name)
        if current is None or number not in current.versions:
            return
        if current.labels.get(STABLE) == number and len(current.versions) > 1:
            raise ConfigError(f"{name} v{version} is the stable version: promote another first")
        versions = tuple(v for v in current.versions if v != number)
        labels = {k: v for k, v in current.labels.items() if v != number}
        self._apply(replace(current, versions=versions, labels=labels))
        self.client.wait_state(name, number, {"END"}, timeout_s=self.ready_timeout_s,
                               absent_ok=True)

    reject = undeploy

    def versions(self, name: str) -> list[VersionInfo]:
        try:
            states = self.client.status(name)
        except ModelNotFound:
            return []
        stable = self.labels(name).get(STABLE)
        return [VersionInfo(name=name, version=v, is_default=stable == int(v),
                            ready_workers=int(state == "AVAILABLE"), workers=1)
                for v, state in sorted(states.items(), key=lambda kv: int(kv[0]))
                if state != "END"]

    def default_version(self, name: str) -> str | None:
        stable = self.labels(name).get(STABLE)
        return None if stable is None else str(stable)

    def _route(self, name: str, version: str | None) -> tuple[str | None, str | None]:
        if version is not None:
            return version, None
        return None, STABLE if STABLE in self.labels(name) else None

    def predict(self, name: str, payload: Any, version: str | None = None,
                label: str | None = None) -> Any:
        """REST predict on ``version``, or ``label``, or the stable label (the default route)."""
        if label is not None:
            return self.client.predict(name, payload, label=label)
        version, label = self._route(name, version)
        return self.client.predict(name, payload, version=version, label=label)

    def predict_grpc(self, name: str, inputs: dict[str, Any], version: str | None = None,
                     **kwargs: Any) -> dict[str, np.ndarray]:
        route_version, label = self._route(name, version)
        return self.client.predict_grpc(
            name, inputs, version=None if route_version is None else int(route_version),
            label=kwargs.pop("label", label), **kwargs)

    def endpoint(self, name: str, version: str | None = None) -> str:
        route_version, label = self._route(name, version)
        return self.client.predict_url(name, route_version, label)

    def ping(self) -> bool:
        return self.client.ping()

    def access(self) -> ServerAccess:
        return ServerAccess(inference_url=self.client.rest_url, inference_key=None, key_shell=None,
                            where=f"TF Serving at {self.client.rest_url} (models under {self.server_root})")

    def next_version(self, name: str) -> int:
        """A version number never used for ``name`` here: above the configured, served and
        on-disk versions."""
        entry = self.entry(name)
        used = set(entry.versions if entry else ())
        used |= {int(v.version) for v in self.versions(name)}
        used |= {int(n) for n in self.root.list_dir(validate_name(name)) if n.isdigit()}
        return max(used, default=0) + 1


def _version_number(version: str | int) -> int:
    try:
        number = int(version)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"TF Serving versions are integers, got {version!r}") from exc
    if number < 1:
        raise ConfigError(f"TF Serving versions are positive, got {version!r}")
    return number


# ---- a local server ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TFServingSettings:
    """A local TF Serving: its directory, loopback ports (0 = free port), batching and image."""

    workdir: Path = field(default_factory=lambda: home_dir() / "tfserving")
    host: str = "127.0.0.1"
    rest_port: int = 0
    grpc_port: int = 0
    max_batch_size: int = 8
    batch_timeout_ms: float = 5.0
    xla: bool = True
    docker_image: str = DOCKER_IMAGE
    ready_timeout_s: float = 120.0
    #: Explicit opt-in: serve gRPC from a binary on TCP ``grpc_port`` of EVERY interface
    #: (tensorflow_model_server has no bind-address flag), which exposes the unauthenticated
    #: ModelService (HandleReloadConfigRequest can load or unload any model) and
    #: PredictionService to the network. Off: gRPC listens on a Unix socket in the workdir.
    grpc_tcp_all_interfaces: bool = False


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

    def backend(self) -> TFServingBackend:
        return TFServingBackend(TFServingClient(self.rest_url, self.grpc_target),
                                Path(self.model_root), server_root=self.server_root)


def docker_has_image(image: str = DOCKER_IMAGE) -> bool:
    """A Docker engine answers and holds ``image`` (nothing is pulled)."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                              timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LocalTFServing:
    """A TF Serving started by servegate (``tensorflow_model_server`` or Docker), recorded in
    ``<workdir>/server.json``; models live in ``<workdir>/models`` with the config files."""

    def __init__(self, settings: TFServingSettings | None = None) -> None:
        self.settings = settings or TFServingSettings()
        self.workdir = Path(self.settings.workdir).resolve()
        self.model_root = self.workdir / "models"

    @property
    def state_path(self) -> Path:
        return self.workdir / "server.json"

    def _recorded(self) -> TFServingState | None:
        try:
            return TFServingState(**json.loads(self.state_path.read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def state(self) -> TFServingState | None:
        state = self._recorded()
        if state is None:
            return None
        if state.how == "binary" and identity_mismatch(int(state.ident), state.create_time,
                                                       state.cmdline) is not None:
            return None
        with TFServingClient(state.rest_url, state.grpc_target) as client:
            return state if client.ping() else None

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
            from servegate.compilers.tf_xla import TFSERVING_XLA_FLAG

            flags.append(TFSERVING_XLA_FLAG)
        return flags

    def start(self) -> TFServingState:
        """Reuse the recorded server, or start one (binary first, then Docker), or raise
        ``ServerNotRunning`` saying how to provide one."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with server_lock(self.workdir, wait_s=self.settings.ready_timeout_s):
            return self._start()

    def _start(self) -> TFServingState:
        running = self.state()
        if running is not None:
            return running
        self.stop()
        s = self.settings
        binary = shutil.which(BINARY)
        if binary is None and not docker_has_image(s.docker_image):
            raise ServerNotRunning(HOW_TO_PROVIDE)
        self.model_root.mkdir(parents=True, exist_ok=True)
        rest_port, grpc_port = s.rest_port or free_port(s.host), s.grpc_port or free_port(s.host)
        if binary is not None:
            # tensorflow_model_server has no bind-address flag: TCP listeners take every
            # interface. gRPC (whose ModelService reloads the model config, unauthenticated)
            # therefore goes to a private Unix socket unless TCP was asked for explicitly.
            command, grpc_target = self.binary_command(binary, grpc_port, rest_port)
            log = open(self.workdir / "tfserving.log", "ab")  # noqa: SIM115 (the child owns it)
            process = subprocess.Popen(command, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=self._environment())
            try:
                recorded = identity(process.pid)
            except Exception:  # it died at once: the readiness wait reports it
                recorded = {"create_time": None, "cmdline": None}
            state = TFServingState("binary", str(process.pid), f"http://{s.host}:{rest_port}",
                                   grpc_target, str(self.model_root), str(self.model_root),
                                   create_time=recorded["create_time"])  # type: ignore[arg-type]
        else:
            command = ["docker", "run", "-d", "--rm", "--name", f"servegate-tfserving-{rest_port}",
                       "-p", f"{s.host}:{rest_port}:8501", "-p", f"{s.host}:{grpc_port}:8500",
                       "-v", f"{self.model_root}:{CONTAINER_ROOT}", "--entrypoint", BINARY,
                       s.docker_image, *self.flags(8500, 8501, CONTAINER_ROOT)]
            run = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if run.returncode != 0:
                raise ServerStartError(f"docker run {s.docker_image} failed: {run.stderr.strip()}")
            state = TFServingState("docker", run.stdout.strip(), f"http://{s.host}:{rest_port}",
                                   f"{s.host}:{grpc_port}", str(self.model_root), CONTAINER_ROOT)
        self.state_path.write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        deadline = time.monotonic() + s.ready_timeout_s
        with TFServingClient(state.rest_url, state.grpc_target) as client:
            while not client.ping():
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerStartError(f"TF Serving did not answer within "
                                           f"{s.ready_timeout_s:.0f}s; see {self.workdir}")
                time.sleep(0.3)
        if state.how == "binary":  # the command line once it answers (after a wrapper's exec)
            state = replace(state, cmdline=identity(int(state.ident))["cmdline"])  # type: ignore[arg-type]
            self.state_path.write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
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

    def _environment(self) -> dict[str, str]:
        """No MLflow, cloud or other credentials reach the server."""
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return minimal_environment({"TMPDIR": str(tmp), "TEMP": str(tmp)})

    def stop(self) -> StopOutcome:
        """Stop the recorded server (process group or container); truthy if one was stopped.
        A binary's pid is signalled only while its start time and command line match the
        state file; otherwise nothing is killed and ``.stale`` says why."""
        if not self.state_path.exists():
            return StopOutcome(False)
        with server_lock(self.workdir, wait_s=self.settings.ready_timeout_s):
            state = self._recorded()
            outcome = StopOutcome(False)
            if state is not None and state.how == "docker":
                subprocess.run(["docker", "stop", state.ident], capture_output=True, timeout=60)
                outcome = StopOutcome(True)
            elif state is not None:
                stopped, stale = stop_recorded(int(state.ident), state.create_time, state.cmdline)
                outcome = StopOutcome(stopped or stale is None, stale)
            self.state_path.unlink(missing_ok=True)
            return outcome


def attach(rest_url: str, grpc_target: str | None = None, model_root: str | Path | None = None,
           server_root: str | None = None) -> TFServingBackend:
    """A TF Serving started elsewhere: REST URL, gRPC target (default: REST host, port 8500) and
    where it reads models from: a directory, or a URI of a filesystem TensorFlow writes (gs://,
    s3://, hdfs://) for a server on another host (``models.config`` there records what is
    deployed)."""
    if grpc_target is None:
        grpc_target = f"{urlsplit(rest_url).hostname}:8500"
    if model_root is None:
        raise ConfigError(f"attaching to TF Serving needs {ENV_MODEL_ROOT}: the directory that "
                          "server reads models from")
    backend = TFServingBackend(TFServingClient(rest_url, grpc_target), model_root,
                               server_root=server_root)
    if not backend.client.ping():
        backend.close()
        raise ServerNotRunning(f"no TF Serving answers at {rest_url}. {HOW_TO_PROVIDE}")
    return backend


def open_tfserving(settings: TFServingSettings | None = None,
                   mode: ServerMode = "auto") -> TFServingBackend:
    """Attach when ``SERVEGATE_TFSERVING_URL`` is set (``mode`` not ``local``); otherwise start
    (or reuse) a local server, unless ``mode`` is ``attach`` (then ``ConfigError``)."""
    configured = TFServingAttach.from_env() if mode != "local" else None
    if configured is not None:
        return attach(configured.url, configured.grpc, configured.model_root,
                      configured.server_root)
    if mode == "attach":
        raise ConfigError(attach_refused("TF Serving", f"{ENV_URL}, {ENV_GRPC} and {ENV_MODEL_ROOT}"))
    return LocalTFServing(settings).start().backend()
