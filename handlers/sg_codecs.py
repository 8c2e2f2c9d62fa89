"""Request envelopes: parse what a client sent, answer in the same family.

Families (``Envelope.family``):

- ``list``: a bare JSON list: one instance or a list of instances
- ``inputs``: ``{"inputs": X}``: one instance or a list of instances -> ``{"outputs": ...}``
- ``instances``: ``{"instances": [...]}`` (KServe v1 / TF Serving row format) -> ``{"predictions": [...]}``
- ``v2``: Open Inference Protocol ``{"inputs": [{"name", "shape", "datatype", "data"}]}``
- ``raw``: raw bytes that are not JSON (an image) -> the JSON of one prediction

Only the standard library here; tasks turn the parsed instances into arrays.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sg_errors import BadRequest, InvalidInput, PayloadTooLarge

_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")

V2_DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
_NP_TO_V2 = {np.dtype(v): k for k, v in V2_DATATYPES.items()}


@dataclass(frozen=True)
class Envelope:
    """What one request carried: its family, its instances, and whether it was a single one."""

    family: str
    instances: list[Any] | np.ndarray
    single: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.instances)


def request_body(request: dict[str, Any]) -> Any:
    """The payload of one TorchServe request (raw POST body or the first form field).

    ``curl -d '{...}'`` without a Content-Type sends a form: TorchServe then hands over the JSON as
    the name of one empty form field, which is taken as the body.
    """
    for key in ("body", "data"):
        if key in request and request[key] is not None:
            return request[key]
    for value in request.values():
        if value not in (None, b"", ""):
            return value
    if len(request) == 1:
        (key,) = request
        if isinstance(key, str) and key.lstrip()[:1] in ("{", "["):
            return key
    raise BadRequest("empty request", "the request has no body")


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLarge("payload too large", f"{size} bytes > limit of {max_bytes} bytes")


def parse(payload: Any, *, max_bytes: int, max_instances: int) -> Envelope:
    """Parse one request payload into an ``Envelope``; raise a ``RequestError`` if it is bad."""
    if isinstance(payload, (bytes, bytearray)):
        _check_size(len(payload), max_bytes)
        if not payload.strip():
            raise BadRequest("empty request", "the request body is empty")
        if payload.startswith(_IMAGE_MAGIC):
            return Envelope("raw", [bytes(payload)], single=True)
        try:
            payload = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest("malformed JSON", str(exc)) from exc
    elif isinstance(payload, str):
        _check_size(len(payload.encode()), max_bytes)
        if not payload.strip():
            raise BadRequest("empty request", "the request body is empty")
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise BadRequest("malformed JSON", str(exc)) from exc
    envelope = _envelope(payload)
    if len(envelope) == 0:
        raise BadRequest("no instances", "the request carries no instances")
    if len(envelope) > max_instances:
        raise PayloadTooLarge(
            "too many instances", f"{len(envelope)} instances > limit of {max_instances}"
        )
    return envelope


def _is_v2(inputs: Any) -> bool:
    return (isinstance(inputs, list) and bool(inputs)
            and all(isinstance(i, dict) and "datatype" in i for i in inputs))


def _envelope(payload: Any) -> Envelope:
    if isinstance(payload, list):
        return Envelope("list", payload)
    if not isinstance(payload, dict):
        raise BadRequest("unknown envelope", f"expected a JSON object or list, got {type(payload).__name__}")
    if "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise BadRequest("unknown envelope", '"instances" must be a list')
        return Envelope("instances", instances)
    if "inputs" in payload:
        inputs = payload["inputs"]
        if _is_v2(inputs):
            return _v2_envelope(payload)
        return Envelope("inputs", inputs if isinstance(inputs, list) else [inputs],
                        single=not isinstance(inputs, list))
    if "data" in payload or "b64" in payload:
        return Envelope("inputs", [payload.get("data", payload)], single=True)
    keys = ", ".join(sorted(map(str, payload))) or "none"
    raise BadRequest(
        "unknown envelope",
        f"expected one of 'inputs', 'instances' or an Open Inference Protocol body; got keys: {keys}",
    )


def _v2_envelope(payload: dict[str, Any]) -> Envelope:
    inputs = payload["inputs"]
    if len(inputs) != 1:
        raise BadRequest("unsupported v2 request", f"expected 1 input tensor, got {len(inputs)}")
    tensor = inputs[0]
    datatype = str(tensor.get("datatype", "")).upper()
    shape = tensor.get("shape")
    data = tensor.get("data")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest("invalid v2 tensor", "'shape' must be a non-empty list of non-negative ints")
    meta = {"id": payload.get("id"), "input_name": tensor.get("name", "input-0")}
    if datatype == "BYTES":
        items = data if isinstance(data, list) else [data]
        if len(items) != int(np.prod(shape)):
            raise InvalidInput("wrong shape", f"shape {shape} does not match {len(items)} elements")
        return Envelope("v2", items, meta=meta | {"datatype": "BYTES"})
    if datatype not in V2_DATATYPES:
        raise InvalidInput("wrong dtype", f"unsupported datatype {datatype!r}")
    try:
        array = np.asarray(data, dtype=V2_DATATYPES[datatype])
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput("wrong dtype", f"data is not {datatype}: {exc}") from exc
    if array.size != int(np.prod(shape)):
        raise InvalidInput("wrong shape", f"shape {shape} does not match {array.size} elements")
    return Envelope("v2", array.reshape(shape), meta=meta | {"datatype": datatype})


def decode_b64(value: Any) -> bytes:
    """Bytes from ``"<base64>"`` or ``{"b64": "<base64>"}``."""
    if isinstance(value, dict) and "b64" in value:
        value = value["b64"]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise InvalidInput("wrong dtype", f"expected base64 image bytes, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("invalid base64", str(exc)) from exc


def v2_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """One Open Inference Protocol output tensor."""
    if array.dtype.kind in "USO":
        return {"name": name, "shape": list(array.shape), "datatype": "BYTES",
                "data": [str(x) for x in array.reshape(-1)]}
    datatype = _NP_TO_V2.get(array.dtype, "FP32")
    return {"name": name, "shape": list(array.shape), "datatype": datatype,
            "data": array.reshape(-1).tolist()}


def encode(envelope: Envelope, rows: list[Any], v2_outputs: list[dict[str, Any]],
           model_name: str, single: bool) -> str:
    """The JSON answer, in the family of the request; ``single`` unwraps a lone instance."""
    if envelope.family == "v2":
        body: Any = {"model_name": model_name, "outputs": v2_outputs}
        if envelope.meta.get("id") is not None:
            body["id"] = envelope.meta["id"]
    elif envelope.family == "instances":
        body = {"predictions": rows}
    else:
        result = rows[0] if single else rows
        body = {"outputs": result} if envelope.family == "inputs" else result
    return json.dumps(body, separators=(",", ":"))
