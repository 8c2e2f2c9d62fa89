"""A client of TF Serving's REST API (status, metadata, predict, metrics) and gRPC services
(ModelService: reload the model config, status; PredictionService: predict).

Error answers become servegate exceptions (``errors.py``); transport failures become
``ServerNotRunning`` with the cause attached. grpc, TensorFlow and tensorflow-serving-api are
imported lazily.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from servegate.backends.tfserving.config import PROMETHEUS_PATH, ModelEntry, model_server_config
from servegate.backends.tfserving.errors import rest_error, translate_rpc_error
from servegate.errors import (
    ConfigError,
    ModelNotFound,
    ServerNotRunning,
    ServerRequestError,
    ServerStartError,
)
from servegate.naming import segment, validate_name
from servegate.tls import client_context


def version_number(version: str | int) -> int:
    """A TF Serving version: a positive integer (``ConfigError`` otherwise)."""
    try:
        number = int(version)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"TF Serving versions are integers, got {version!r}") from exc
    if number < 1:
        raise ConfigError(f"TF Serving versions are positive, got {version!r}")
    return number


def grpc_credentials(ca_bundle: Path | None) -> Any:
    """gRPC SSL channel credentials trusting the PEM ``ca_bundle`` only, or None (plaintext)."""
    if ca_bundle is None:
        return None
    import grpc

    try:
        roots = Path(ca_bundle).read_bytes()
    except OSError as exc:
        raise ConfigError(f"TF Serving CA bundle {ca_bundle} is unreadable: {exc}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in roots:
        raise ConfigError(f"TF Serving CA bundle {ca_bundle} holds no PEM certificate")
    return grpc.ssl_channel_credentials(root_certificates=roots)


def build_reload_request(entries: list[ModelEntry]) -> Any:
    """The ``ReloadConfigRequest`` of ModelService.HandleReloadConfigRequest for ``entries``."""
    from tensorflow_serving.apis import model_management_pb2

    return model_management_pb2.ReloadConfigRequest(config=model_server_config(entries))


class TFServingClient:
    """TF Serving's REST API (status, metadata, predict) and gRPC (ModelService, Predict)."""

    def __init__(self, rest_url: str, grpc_target: str, *, timeout: float = 60.0,
                 ca_bundle: Path | None = None) -> None:
        """``ca_bundle``: gRPC over TLS verified against that PEM bundle (an SSL channel
        credential), and an ``https://`` REST URL verified against it; None: plaintext gRPC
        (TF Serving's own, which has no TLS) and the system's CAs for https."""
        self.rest_url = rest_url.rstrip("/")
        self.grpc_target = grpc_target
        self.timeout = timeout
        self.ca_bundle = ca_bundle
        self._http = httpx.Client(timeout=timeout, verify=client_context(ca_bundle))
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
        suffix = (f"/versions/{version_number(version)}" if version is not None else
                  f"/labels/{segment(label)}" if label is not None else "")
        return f"/v1/models/{segment(validate_name(name))}{suffix}"

    def _rest(self, method: str, path: str, action: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, f"{self.rest_url}{path}", **kwargs)
        except httpx.TransportError as exc:
            raise ServerNotRunning(f"{action}: TF Serving unreachable at {self.rest_url}: "
                                   f"{exc}") from exc
        if not response.is_success:
            raise rest_error(response, action)
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

            credentials = grpc_credentials(self.ca_bundle)
            self._channel = (grpc.insecure_channel(self.grpc_target) if credentials is None else
                             grpc.secure_channel(self.grpc_target, credentials))
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

        from servegate.tfserving_protos.requests import predict_request

        if version is not None and label is not None:
            raise ConfigError("give a version or a label, not both")
        request = predict_request(name, signature, inputs, version)
        if label is not None:
            request.model_spec.version_label = label
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel())
        response = self._call(stub.Predict, request, f"predict {name} (gRPC)")
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

