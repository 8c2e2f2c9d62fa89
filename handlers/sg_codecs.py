"""Request envelopes: parse what a client sent, answer in the same family.

Families (``Envelope.family``):

- ``list``: a bare JSON list: one instance or a list of instances
- ``inputs``: ``{"inputs": X}``: one instance, a list of instances, or (several inputs) a
  ``{"<input name>": value}`` object (TF Serving's columnar format) -> ``{"outputs": ...}``
- ``instances``: ``{"instances": [...]}`` (KServe v1 / TF Serving row format) -> ``{"predictions": [...]}``
- ``v2``: Open Inference Protocol ``{"inputs": [{"name", "shape", "datatype", "data"}, ...]}``
- ``raw``: raw bytes that are not JSON (an image) -> the JSON of one prediction

Only the standard library and numpy here; tasks turn the parsed instances into arrays. Anything a
client can send either parses or raises a ``RequestError`` (400 malformed or nested too deeply,
413 too large, 422 wrong content); answers never hold a bare ``NaN`` (``dumps``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sg_errors import BadRequest, InvalidInput, PayloadTooLarge, RequestError

_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")

V2_DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
MAX_DIM = 2**31 - 1  # a v2 dimension past this cannot be real (and numpy refuses it)
MAX_DIMS = 32
_NP_TO_V2 = {np.dtype(v): k for k, v in V2_DATATYPES.items()}


@dataclass(frozen=True)
class V2Tensor:
    """One Open Inference Protocol input tensor: numbers as an array (batch first), or the items
    of a ``BYTES`` tensor as a list."""

    name: str
    datatype: str
    data: np.ndarray | list[Any]

    @property
    def rows(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Envelope:
    """What one request carried: its family, its instances, and whether it was a single one.

    For ``v2``, ``instances`` is the first tensor's data and ``tensors`` holds them all."""

    family: str
    instances: list[Any] | np.ndarray
    single: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: tuple[V2Tensor, ...] = ()
    #: Whether the body may hold JSON ``true``/``false`` (False only when its text has neither:
    #: numeric decoding then skips the scan for booleans among the numbers).
    booleans: bool = True

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def request_id(self) -> Any:
        return self.meta.get("id")


def request_body(request: dict[str, Any]) -> Any:
    """The payload of one TorchServe request (raw POST body or the first form field).

    ``curl -d '{...}'`` without a Content-Type sends a form: TorchServe then hands over the JSON as
    the name of one empty form field, which is taken as the body.
    """
    if not isinstance(request, dict):
        raise BadRequest("empty request", "the request has no body")
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


#: Nesting deeper than this is refused (400) whatever the interpreter's recursion limit, which
#: libraries in the same process raise (torch.export does): numpy arrays have at most 64 dims.
MAX_JSON_DEPTH = 64


def _leading_depth(value: Any) -> int:
    """Nesting depth along the first element of each level (iterative, stops past the limit)."""
    depth = 0
    while depth <= MAX_JSON_DEPTH and isinstance(value, (list, dict)) and value:
        depth += 1
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
    return depth


def load_json(text: bytes | str) -> Any:
    """``json.loads`` whose every failure is a 400: malformed, nested too deeply, or a number
    past Python's digit limit."""
    try:
        value = json.loads(text)
        if _leading_depth(value) > MAX_JSON_DEPTH:
            raise BadRequest("malformed JSON", f"nested more than {MAX_JSON_DEPTH} levels deep")
        return value
    except RecursionError as exc:
        raise BadRequest("malformed JSON", "nested too deeply") from exc
    except UnicodeError as exc:
        raise BadRequest("malformed JSON", f"not UTF-8/16/32 text: {exc}") from exc
    except ValueError as exc:  # JSONDecodeError, and ints past sys.get_int_max_str_digits()
        raise BadRequest("malformed JSON", str(exc)[:300]) from exc


def parse(payload: Any, *, max_bytes: int, max_instances: int | None = None) -> Envelope:
    """Parse one request payload into an ``Envelope``; raise a ``RequestError`` if it is bad.

    ``max_instances`` bounds what is unambiguously a row count here (``instances`` items, a v2
    tensor's first dimension); handlers count the rows of the other families after decoding.
    """
    booleans = True  # an already decoded payload (TorchServe's decode_input_request) may hold any
    if isinstance(payload, (bytes, bytearray, memoryview)):
        payload = bytes(payload)
        _check_size(len(payload), max_bytes)
        if not payload.strip():
            raise BadRequest("empty request", "the request body is empty")
        if payload.startswith(_IMAGE_MAGIC):
            return Envelope("raw", [payload], single=True)
        booleans = _may_hold_booleans(payload)
        payload = load_json(payload)
    elif isinstance(payload, str):
        _check_size(len(payload.encode("utf-8", "surrogatepass")), max_bytes)
        if not payload.strip():
            raise BadRequest("empty request", "the request body is empty")
        booleans = "true" in payload or "false" in payload
        payload = load_json(payload)
    try:
        envelope = _envelope(payload, booleans)
    except RequestError as exc:
        exc.request_id = payload.get("id") if isinstance(payload, dict) else None  # type: ignore[attr-defined]
        raise
    if len(envelope) == 0:
        raise BadRequest("no instances", "the request carries no instances")
    if max_instances is not None and envelope.family in ("instances", "v2"):
        check_rows(len(envelope), max_instances)
    return envelope


def _may_hold_booleans(body: bytes) -> bool:
    """False only when ``body`` is UTF-8 JSON whose text holds neither ``true`` nor ``false``
    (JSON writes these literals without escapes; UTF-16/32 bodies, which ``json.loads`` also
    reads, are always scanned)."""
    if b"true" in body or b"false" in body:
        return True
    # Valid UTF-16/32 JSON has a NUL byte in its first four (its first character is ASCII).
    return b"\x00" in body[:4]


def check_rows(rows: int, max_instances: int) -> None:
    if rows > max_instances:
        raise PayloadTooLarge("too many instances", f"{rows} rows > limit of {max_instances}")


def _is_v2(inputs: Any) -> bool:
    return (isinstance(inputs, list) and bool(inputs)
            and all(isinstance(i, dict) and "datatype" in i for i in inputs))


def _envelope(payload: Any, booleans: bool = True) -> Envelope:
    if isinstance(payload, list):
        return Envelope("list", payload, booleans=booleans)
    if not isinstance(payload, dict):
        raise BadRequest("unknown envelope", f"expected a JSON object or list, got {type(payload).__name__}")
    if "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise BadRequest("unknown envelope", '"instances" must be a list')
        return Envelope("instances", instances, booleans=booleans)
    if "inputs" in payload:
        inputs = payload["inputs"]
        if _is_v2(inputs):
            return _v2_envelope(payload, booleans)
        return Envelope("inputs", inputs if isinstance(inputs, list) else [inputs],
                        single=not isinstance(inputs, list), booleans=booleans)
    if "data" in payload or "b64" in payload:
        return Envelope("inputs", [payload.get("data", payload)], single=True, booleans=booleans)
    keys = ", ".join(sorted(map(str, payload)))[:200] or "none"
    raise BadRequest(
        "unknown envelope",
        f"expected one of 'inputs', 'instances' or an Open Inference Protocol body; got keys: {keys}",
    )


def _v2_envelope(payload: dict[str, Any], booleans: bool = True) -> Envelope:
    tensors = tuple(_v2_tensor(i, t, booleans) for i, t in enumerate(payload["inputs"]))
    rows = {t.rows for t in tensors}
    if len(rows) > 1:
        names = ", ".join(f"{t.name}: {t.rows}" for t in tensors)
        raise InvalidInput("wrong shape", f"the input tensors have different row counts ({names})")
    first = tensors[0]
    meta = {"id": payload.get("id"), "input_name": first.name, "datatype": first.datatype}
    return Envelope("v2", first.data, meta=meta, tensors=tensors, booleans=booleans)


def _v2_tensor(index: int, tensor: dict[str, Any], booleans: bool = True) -> V2Tensor:
    name = tensor.get("name")
    name = name if isinstance(name, str) else f"input-{index}"
    datatype = str(tensor.get("datatype", "")).upper()
    shape = tensor.get("shape")
    data = tensor.get("data")
    if (not isinstance(shape, list) or not shape
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise BadRequest("invalid v2 tensor",
                         f"{name}: 'shape' must be a non-empty list of non-negative ints")
    if max(shape) > MAX_DIM or len(shape) > MAX_DIMS:
        raise InvalidInput("wrong shape", f"{name}: shape {shape[:8]} has over {MAX_DIMS} "
                                          f"dimensions or one over {MAX_DIM}")
    count = math.prod(shape)  # exact: a product past int64 cannot wrap around to a small size
    if datatype == "BYTES":
        items = data if isinstance(data, list) else [data]
        if len(items) != count or len(shape) != 1:
            raise InvalidInput("wrong shape",
                               f"{name}: BYTES shape {shape} does not match {len(items)} elements")
        return V2Tensor(name, datatype, items)
    if datatype not in V2_DATATYPES:
        raise InvalidInput("wrong dtype", f"{name}: unsupported datatype {datatype!r}")
    if not isinstance(data, list):
        data = [data]
    array = json_array(data, np.dtype(V2_DATATYPES[datatype]), what=name, flat=True,
                       booleans=booleans)
    if array.size != count:
        raise InvalidInput("wrong shape", f"{name}: shape {shape} does not match {array.size} elements")
    try:
        return V2Tensor(name, datatype, array.reshape(shape))
    except ValueError as exc:
        raise InvalidInput("wrong shape", f"{name}: cannot reshape to {shape}: {exc}") from exc


def _leaves(value: list[Any], depth: int) -> Any:
    """The leaves of a regular nested list ``depth`` levels deep (C-speed iteration)."""
    from itertools import chain

    items: Any = value
    for _ in range(depth - 1):
        items = chain.from_iterable(items)
    return items


def json_array(value: Any, dtype: np.dtype, *, what: str, flat: bool = False,
               booleans: bool = True) -> np.ndarray:
    """An array of ``dtype`` from decoded JSON, or a 422 naming ``what`` is wrong.

    JSON ``true``/``false`` are not numbers (only a ``bool`` input takes them, and 0/1); strings,
    nulls and objects are refused; integers must be whole and in range of an integer ``dtype``.
    ``flat``: v2 ``data`` may also be nested, the shape comes from the tensor's ``shape``.
    ``booleans=False`` (the body's text holds no ``true``/``false``) skips the scan for them.
    """
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise InvalidInput("wrong shape", f"{what}: ragged or irregular input: "
                                              f"{str(exc)[:200]}") from exc
        if booleans and array.dtype.kind in "iuf" and array.ndim > 0 and isinstance(value, list):
            if bool in set(map(type, _leaves(value, array.ndim))):
                raise InvalidInput("wrong dtype", f"{what}: booleans are not numbers ({dtype})")
    return cast(array, dtype, what=what)


def cast(array: np.ndarray, dtype: np.dtype, *, what: str) -> np.ndarray:
    """``array`` as ``dtype`` when every value fits it, else a 422 naming ``what``."""
    kind = array.dtype.kind
    if dtype.kind == "b":
        if kind == "b":
            return array
        if kind in "iu" and np.isin(array, (0, 1)).all():
            return array.astype(dtype)
        raise InvalidInput("wrong dtype", f"{what}: expected booleans, got {_kind_name(kind)}")
    if kind == "b":
        raise InvalidInput("wrong dtype", f"{what}: booleans are not numbers ({dtype})")
    if kind not in "iuf":
        raise InvalidInput("wrong dtype", f"{what}: expected numbers ({dtype}), got {_kind_name(kind)}")
    if dtype.kind in "iu":
        if kind == "f" and not (np.isfinite(array).all() and (array == np.trunc(array)).all()):
            raise InvalidInput("wrong dtype", f"{what}: expected whole numbers ({dtype})")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidInput("wrong dtype", f"{what}: values out of the range of {dtype}")
    try:
        return array.astype(dtype, copy=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput("wrong dtype", f"{what}: cannot convert to {dtype}: {exc}") from exc


def _kind_name(kind: str) -> str:
    return {"U": "strings", "S": "bytes", "O": "objects, nulls or huge integers", "b": "booleans",
            "c": "complex numbers"}.get(kind, f"{kind!r} data")


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


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON ``null``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(body: Any) -> str:
    """Strict JSON: NaN and infinities (a model can output them) become ``null``, never a bare
    ``NaN`` that JSON parsers refuse."""
    try:
        return _STRICT_JSON.encode(body)
    except ValueError:
        return _STRICT_JSON.encode(_finite(body))


_STRICT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # made once, not per answer


def encode(envelope: Envelope, rows: list[Any], v2_outputs: list[dict[str, Any]],
           model_name: str, single: bool) -> str:
    """The JSON answer, in the family of the request; ``single`` unwraps a lone instance."""
    if envelope.family == "v2":
        body: Any = {"model_name": model_name, "outputs": v2_outputs}
        request_id = envelope.request_id
        if isinstance(request_id, (str, int)) and not isinstance(request_id, bool):
            body["id"] = request_id
    elif envelope.family == "instances":
        body = {"predictions": rows}
    else:
        result = rows[0] if single else rows
        body = {"outputs": result} if envelope.family == "inputs" else result
    return dumps(body)
