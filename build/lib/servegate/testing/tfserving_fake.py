"""``FakeTFServing``: a FAKE TF Serving for tests on machines without ``tensorflow_model_server``.

It is not TF Serving. It is a small real server on 127.0.0.1 (free ports) that speaks the parts of
TF Serving's protocols servegate uses, with the real protos and real SavedModels:

* gRPC (an in-process ``grpc.server``): ``ModelService.HandleReloadConfigRequest`` and
  ``GetModelStatus``, ``PredictionService.Predict``;
* REST (``http.server`` in a thread): ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]``
  (status), ``.../metadata``, ``POST ...:predict`` (``instances`` and ``inputs`` forms, ``b64``
  values), and Prometheus text at ``/monitoring/prometheus/metrics``.

Versions load in a background thread (``tf.saved_model.load`` + the warm-up records replayed), go
``LOADING`` -> ``AVAILABLE`` (or ``END`` with the error), and TF Serving's rules that servegate
depends on are kept: the unversioned route answers with the highest AVAILABLE version, a label may
only point at an AVAILABLE version, an unknown label is an INVALID_ARGUMENT, a missing servable is
NOT_FOUND. Batching, threading and performance are not modelled.
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np


class FakeServingError(Exception):
    """An error with TF Serving's code name (``NOT_FOUND``, ``INVALID_ARGUMENT``, ...)."""

    HTTP = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400}

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return self.HTTP.get(self.code, 500)


@dataclass
class _Version:
    state: str = "START"
    error: str = ""
    servable: Any = None


class FakeTFServing:
    """Start with ``FakeTFServing(load_delay_s=...).start()``; ``rest_url``/``grpc_target`` then
    answer until ``stop()``. Also a context manager."""

    def __init__(self, *, load_delay_s: float = 0.0, host: str = "127.0.0.1", rest_port: int = 0,
                 grpc_port: int = 0, grpc_socket_path: str | None = None) -> None:
        """``grpc_port`` 0 picks a free port, unless ``grpc_socket_path`` is given: then, like
        ``tensorflow_model_server --port=0 --grpc_socket_path=P``, gRPC listens on P only."""
        self.load_delay_s = load_delay_s
        self.grpc_socket_path = grpc_socket_path
        self.host = host
        self.ports = (rest_port, grpc_port)
        self.versions: dict[str, dict[int, _Version]] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.request_count: dict[str, int] = {}
        self.reloads = 0
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: Any = None
        self.rest_url = ""
        self.grpc_target = ""

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeTFServing:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._http = ThreadingHTTPServer((self.host, self.ports[0]), _handler(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="fake-tfserving-rest",
                         daemon=True).start()
        self.rest_url = f"http://{self.host}:{self._http.server_address[1]}"
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        model_service, prediction_service = _servicers(self)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_service, self._grpc)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction_service,
                                                                            self._grpc)
        if self.grpc_socket_path:
            self._grpc.add_insecure_port(f"unix:{self.grpc_socket_path}")
            self.grpc_target = f"unix:{self.grpc_socket_path}"
        if not self.grpc_socket_path or self.ports[1]:
            port = self._grpc.add_insecure_port(f"{self.host}:{self.ports[1]}")
            self.grpc_target = f"{self.host}:{port}"
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait()
            self._grpc = None

    def __enter__(self) -> FakeTFServing:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- model management ---------------------------------------------------------------------
    def reload(self, config: Any) -> None:
        """Apply a whole ``ModelServerConfig`` (raises ``FakeServingError`` like the server)."""
        wanted: dict[str, tuple[str, list[int], dict[str, int]]] = {}
        for model in config.model_config_list.config:
            policy = model.model_version_policy.WhichOneof("policy_choice")
            if policy not in (None, "specific"):
                raise FakeServingError("UNIMPLEMENTED", f"the fake serves 'specific': {policy}")
            versions = list(model.model_version_policy.specific.versions)
            wanted[model.name] = (model.base_path, versions, dict(model.version_labels))
        with self._lock:
            for name, (_, _, labels) in wanted.items():
                for number in labels.values():
                    current = self.versions.get(name, {}).get(number)
                    if current is None or current.state != "AVAILABLE":
                        raise FakeServingError(
                            "FAILED_PRECONDITION",
                            f"Request to assign label to version {number} of model {name}, which "
                            "is not currently available for inference")
            self.reloads += 1
            for name, served in self.versions.items():
                keep = set(wanted.get(name, ("", [], {}))[1])
                for number, version in served.items():
                    if number not in keep and version.state != "END":
                        version.state, version.servable = "END", None
            for name, (base_path, numbers, labels) in wanted.items():
                served = self.versions.setdefault(name, {})
                for number in numbers:
                    path = Path(base_path) / str(number)
                    if not path.is_dir():
                        continue  # TF Serving never aspires a version it cannot find
                    if number not in served or served[number].state == "END":
                        served[number] = _Version("LOADING")
                        threading.Thread(target=self._load, args=(name, number, path),
                                         daemon=True).start()
                self.labels[name] = labels
            for name in set(self.labels) - set(wanted):
                self.labels.pop(name)

    def _load(self, name: str, number: int, path: Path) -> None:
        import tensorflow as tf

        from servegate.packaging.savedmodel import read_warmup

        time.sleep(self.load_delay_s)
        try:
            servable = tf.saved_model.load(str(path))
            if (path / "assets.extra").is_dir():
                for log in read_warmup(path):
                    request = log.predict_log.request
                    _run(servable, request.model_spec.signature_name or "serving_default",
                         {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            state, error = "AVAILABLE", ""
        except Exception as exc:  # a broken SavedModel ends the version, like the real server
            servable, state, error = None, "END", f"{type(exc).__name__}: {exc}"
        with self._lock:
            version = self.versions.get(name, {}).get(number)
            if version is not None and version.state == "LOADING":
                version.state, version.error, version.servable = state, error, servable

    def status(self, name: str, version: int | None = None,
               label: str | None = None) -> list[tuple[int, str, str]]:
        """``[(version, state, error)]`` (raises NOT_FOUND like the server)."""
        with self._lock:
            served = self.versions.get(name)
            if not served:
                raise FakeServingError("NOT_FOUND", f"Could not find any versions of model {name}")
            if label is not None:
                version = self._label(name, label)
            rows = [(n, v.state, v.error) for n, v in sorted(served.items())
                    if version is None or n == version]
        if not rows:
            raise FakeServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
        return rows

    def _label(self, name: str, label: str) -> int:
        try:
            return self.labels.get(name, {})[label]
        except KeyError:
            raise FakeServingError("INVALID_ARGUMENT",
                                   f"Unrecognized servable version label: {label}") from None

    def servable(self, name: str, version: int | None = None,
                 label: str | None = None) -> tuple[int, Any]:
        """The loaded SavedModel a request routes to: version, label, or the highest AVAILABLE."""
        with self._lock:
            if label is not None:
                version = self._label(name, label)
            served = {n: v for n, v in self.versions.get(name, {}).items()
                      if v.state == "AVAILABLE"}
            if version is None and served:
                version = max(served)
            if version not in served:
                spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
                raise FakeServingError("NOT_FOUND", f"Servable not found for request: {spec}")
            self.request_count[name] = self.request_count.get(name, 0) + 1
            return version, served[version].servable


# ---- inference helpers -------------------------------------------------------------------------
def _run(servable: Any, signature: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    if signature not in servable.signatures:
        raise FakeServingError("INVALID_ARGUMENT",
                               f'Serving signature name: "{signature}" not found in signature def')
    function = servable.signatures[signature]
    specs = function.structured_input_signature[1]
    if set(inputs) != set(specs):
        raise FakeServingError("INVALID_ARGUMENT",
                               f"inputs {sorted(inputs)} do not match signature {sorted(specs)}")
    try:
        tensors = {k: tf.constant(np.asarray(v), dtype=specs[k].dtype) for k, v in inputs.items()}
        return {k: v.numpy() for k, v in function(**tensors).items()}
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        raise FakeServingError("INVALID_ARGUMENT", str(exc)) from exc


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _encode_value(name: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_encode_value(name, v) for v in value]
    if isinstance(value, bytes):
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode()}
        return value.decode("utf-8", errors="replace")
    return value


def rest_inputs(body: dict[str, Any], input_names: list[str]) -> tuple[dict[str, Any], bool]:
    """TF Serving's REST request forms as named arrays; True when the row form was used."""
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise FakeServingError("INVALID_ARGUMENT", "'instances' must be a non-empty list")
        if all(isinstance(i, dict) and set(i) == set(input_names) for i in instances):
            columns = {n: [_decode_value(i[n]) for i in instances] for n in input_names}
        elif len(input_names) == 1:
            columns = {input_names[0]: [_decode_value(i) for i in instances]}
        else:
            raise FakeServingError("INVALID_ARGUMENT",
                                   f"instances must be objects with keys {input_names}")
        return columns, True
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and set(inputs) == set(input_names):
            return {n: _decode_value(inputs[n]) for n in input_names}, False
        if len(input_names) == 1:
            return {input_names[0]: _decode_value(inputs)}, False
        raise FakeServingError("INVALID_ARGUMENT", f"inputs must be an object with {input_names}")
    raise FakeServingError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")


def rest_outputs(outputs: dict[str, np.ndarray], rows: bool) -> dict[str, Any]:
    """TF Serving's REST answer: ``predictions`` (row form) or ``outputs`` (columnar form)."""
    lists = {k: _encode_value(k, v.tolist()) for k, v in sorted(outputs.items())}
    if not rows:
        return {"outputs": next(iter(lists.values())) if len(lists) == 1 else lists}
    if len(lists) == 1:
        return {"predictions": next(iter(lists.values()))}
    count = len(next(iter(lists.values())))
    return {"predictions": [{k: v[i] for k, v in lists.items()} for i in range(count)]}


# ---- REST ---------------------------------------------------------------------------------------
def _handler(fake: FakeTFServing) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (quiet)
            return

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[str, int | None, str | None, str]:
            """(model, version, label, action) of ``/v1/models/...``."""
            path = self.path.split("?", 1)[0]
            action = ""
            if ":" in path.rsplit("/", 1)[-1]:
                path, action = path.rsplit(":", 1)
            parts = path.strip("/").split("/")
            if len(parts) < 3 or parts[:2] != ["v1", "models"]:
                raise FakeServingError("NOT_FOUND", f"Malformed request: {self.path}")
            name, rest = parts[2], parts[3:]
            if rest and rest[-1] == "metadata":
                action, rest = "metadata", rest[:-1]
            version = label = None
            if len(rest) == 2 and rest[0] == "versions" and rest[1].isdigit():
                version = int(rest[1])
            elif len(rest) == 2 and rest[0] == "labels":
                label = rest[1]
            elif rest:
                raise FakeServingError("NOT_FOUND", f"Malformed request: {self.path}")
            return name, version, label, action

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            try:
                if self.path.startswith("/monitoring/prometheus/metrics"):
                    metric = ":tensorflow:serving:request_count"
                    lines = [f'{metric}{{model_name="{n}",status="OK"}} {c}'
                             for n, c in sorted(fake.request_count.items())]
                    self._send(200, ("\n".join(lines) + "\n").encode(), "text/plain")
                    return
                name, version, label, action = self._route()
                if action == "metadata":
                    number, servable = fake.servable(name, version, label)
                    self._send(200, _metadata(name, number, servable))
                    return
                rows = fake.status(name, version, label)
                self._send(200, {"model_version_status": [
                    {"version": str(n), "state": state,
                     "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error}}
                    for n, state, error in rows]})
            except FakeServingError as exc:
                self._send(exc.http_status, {"error": exc.message})

        def do_POST(self) -> None:  # noqa: N802
            try:
                name, version, label, action = self._route()
                if action != "predict":
                    raise FakeServingError("NOT_FOUND", f"Malformed request: POST {self.path}")
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as exc:
                    raise FakeServingError("INVALID_ARGUMENT", f"JSON Parse error: {exc}") from exc
                if not isinstance(body, dict):
                    raise FakeServingError("INVALID_ARGUMENT", "the request body must be an object")
                _, servable = fake.servable(name, version, label)
                signature = body.get("signature_name", "serving_default")
                function = servable.signatures.get(signature)
                names = sorted(function.structured_input_signature[1]) if function else []
                inputs, row_form = rest_inputs(body, names)
                self._send(200, rest_outputs(_run(servable, signature, inputs), row_form))
            except FakeServingError as exc:
                self._send(exc.http_status, {"error": exc.message})

    return Handler


def _metadata(name: str, version: int, servable: Any) -> dict[str, Any]:
    def tensors(specs: dict[str, Any]) -> dict[str, Any]:
        return {k: {"dtype": f"DT_{s.dtype.name.upper()}",
                    "tensor_shape": {"dim": [{"size": str(-1 if d is None else d)}
                                             for d in s.shape.as_list()]}}
                for k, s in specs.items()}

    signatures = {
        key: {"inputs": tensors(fn.structured_input_signature[1]),
              "outputs": tensors(fn.structured_outputs),
              "method_name": "tensorflow/serving/predict"}
        for key, fn in servable.signatures.items()
    }
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": signatures}}}


# ---- gRPC ---------------------------------------------------------------------------------------
def _abort(context: Any, exc: FakeServingError) -> None:
    import grpc

    context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message)


def _servicers(fake: FakeTFServing) -> tuple[Any, Any]:
    """ModelService and PredictionService implementations (subclasses of the generated servicers,
    which answer UNIMPLEMENTED for the methods not written here)."""
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                fake.reload(request.config)
            except FakeServingError as exc:
                _abort(context, exc)
            return model_management_pb2.ReloadConfigResponse()

        def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
            spec = request.model_spec
            try:
                rows = fake.status(spec.name,
                                   spec.version.value if spec.HasField("version") else None,
                                   spec.version_label or None)
            except FakeServingError as exc:
                _abort(context, exc)
            state = get_model_status_pb2.ModelVersionStatus.State.Value
            response = get_model_status_pb2.GetModelStatusResponse()
            for number, name, error in rows:
                status = response.model_version_status.add(version=number, state=state(name))
                status.status.error_message = error
            return response

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
            spec = request.model_spec
            try:
                number, servable = fake.servable(
                    spec.name, spec.version.value if spec.HasField("version") else None,
                    spec.version_label or None)
                signature = spec.signature_name or "serving_default"
                outputs = _run(servable, signature,
                               {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            except FakeServingError as exc:
                _abort(context, exc)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = number
            response.model_spec.signature_name = signature
            for key in request.output_filter or outputs:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
            return response

    return ModelService(), PredictionService()


# ---- a stand-in for the tensorflow_model_server command ----------------------------------------
def main(argv: list[str] | None = None) -> None:
    """``python -m servegate.testing.tfserving_fake --port=G --rest_api_port=R
    [--model_config_file=F]``: serve until killed (other tensorflow_model_server flags are
    accepted and ignored). Like the server, the initial config is loaded before labels apply."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    parser = argparse.ArgumentParser(prog="fake tensorflow_model_server")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--rest_api_port", type=int, default=8501)
    parser.add_argument("--model_config_file", default="")
    parser.add_argument("--grpc_socket_path", default="")
    args, _ = parser.parse_known_args(argv)
    fake = FakeTFServing(host="127.0.0.1", rest_port=args.rest_api_port, grpc_port=args.port,
                         grpc_socket_path=args.grpc_socket_path or None)
    if args.model_config_file and Path(args.model_config_file).exists():
        config = text_format.Parse(Path(args.model_config_file).read_text(encoding="utf-8"),
                                   model_server_config_pb2.ModelServerConfig())
        unlabelled = model_server_config_pb2.ModelServerConfig()
        unlabelled.CopyFrom(config)
        for model in unlabelled.model_config_list.config:
            model.ClearField("version_labels")
        fake.reload(unlabelled)
        while any(v.state == "LOADING" for vs in fake.versions.values() for v in vs.values()):
            time.sleep(0.05)
        fake.reload(config)
    fake.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
