"""The TorchServe worker's inference messages read in one piece instead of field by field.

TorchServe 0.12's worker (``ts/protocol/otf_message_handler.py``) reads a batch field by field:
each length prefix and each value with its own ``socket.recv``, three Python calls deep, about 40
times per request for a client that sends 7 HTTP headers (41 ``recvfrom`` per request counted with
strace under Locust; 63-66 µs of worker CPU per request at batch 8 in process, against 91-118 µs
for our whole ``handle()``: ``benchmarks/worker_loop.py``). ``install`` replaces two functions of
that module (20-24 µs per request, one ``recvfrom`` per batch):

- ``_retrieve_buffer(conn, n)``: served from a buffer kept per socket, which one ``recv`` fills
  with whatever the socket holds (the command byte and load messages go through it);
- ``_retrieve_inference_msg(conn)``: the framing of a whole batch is first scanned in the buffer
  (reading more until the message is complete), then parsed with ``struct.unpack_from``.

Everything else, and the result, is TorchServe's: the same dictionaries, keys, ``bytearray`` and
``str`` types, the same ``TS_DECODE_INPUT_REQUEST`` decoding and warnings, the same end of stream
(the worker exits when the frontend disconnects). ``tests/unit/test_worker_io.py`` checks the
parse against TorchServe's own on generated messages, whole and trickled.

Installed while a model loads (``initialize``): the frontend sends nothing to a worker until the
load is answered, so no byte of the stream is left in the old reader's hands. Only on the
TorchServe version whose protocol the tests compare against (``TESTED_TORCHSERVE``).

``install`` also stops the worker's root-logger INFO lines ("Backend received inference at: ..."
once per batch: ~14 µs of worker CPU per batch here, and a line the frontend reads and matches
against three patterns). The frontend logs such lines at INFO to ``model_log``, which servegate's
log4j2.xml keeps at WARN, so they were written nowhere. TorchServe's own loggers (``ts.*``, whose
``[METRICS]`` lines feed ``/metrics``) keep INFO.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import weakref
from typing import Any

#: Bytes asked of the socket per read (more when a field is larger).
READ_SIZE = 1 << 18
PROTOCOL_MODULE = "ts.protocol.otf_message_handler"
#: The TorchServe releases whose worker protocol ``_parse`` was checked against.
TESTED_TORCHSERVE = ("0.12.",)
_INT = struct.Struct("!i")


class _Stream:
    """Bytes read from one socket and not handed out yet: ``data[pos:]``."""

    __slots__ = ("data", "pos", "__weakref__")

    def __init__(self) -> None:
        self.data = bytearray()
        self.pos = 0

    def fill(self, conn: Any, at_least: int) -> None:
        """Read until ``at_least`` unread bytes are buffered (the handed-out part dropped)."""
        if self.pos:
            del self.data[:self.pos]
            self.pos = 0
        data = self.data
        while len(data) < at_least:
            packet = conn.recv(max(READ_SIZE, at_least - len(data)))
            if not packet:
                logging.info("Frontend disconnected.")
                sys.exit(0)
            data += packet


def _message_end(data: bytearray, pos: int) -> int:
    """Where the inference message starting at ``pos`` ends, or -1 if ``data`` holds only part
    of it. Framing: requests (id, headers until -1, parameters until -1) until -1; a negative
    length other than -1 reads nothing, as in TorchServe."""
    size = len(data)
    unpack = _INT.unpack_from
    while True:
        if pos + 4 > size:
            return -1
        (length,) = unpack(data, pos)
        pos += 4
        if length == -1:
            return pos
        pos += max(length, 0)  # the request id
        for fields in (2, 3):  # headers (name, value); parameters (name, content type, value)
            while True:
                if pos + 4 > size:
                    return -1
                (length,) = unpack(data, pos)
                pos += 4
                if length == -1:
                    break
                pos += max(length, 0)
                for _ in range(fields - 1):
                    if pos + 4 > size:
                        return -1
                    (length,) = unpack(data, pos)
                    pos += 4 + max(length, 0)


def _decoded(value: bytearray, content_type: str, decode: bool) -> Any:
    """A parameter's value as TorchServe's ``_retrieve_input_data`` leaves it."""
    if decode and content_type == "application/json":
        try:
            return json.loads(value.decode("utf-8"))
        except Exception:
            logging.warning("Failed json decoding of input data. Forwarding encoded payload",
                            exc_info=True)
            return value
    if decode and content_type.startswith("text"):
        try:
            return value.decode("utf-8")
        except Exception:
            logging.warning("Failed utf-8 decoding of input data. Forwarding encoded payload",
                            exc_info=True)
            return value
    return value


def _parse(data: bytearray, pos: int, decode: bool) -> list[dict[str, Any]]:
    """The batch of a complete inference message, as TorchServe's ``_retrieve_inference_msg``."""
    unpack = _INT.unpack_from
    batch: list[dict[str, Any]] = []

    def field() -> bytearray:
        nonlocal pos
        (length,) = unpack(data, pos)
        start = pos + 4
        pos = start + max(length, 0)
        return data[start:pos]

    while True:
        (length,) = unpack(data, pos)
        if length == -1:
            return batch
        request: dict[str, Any] = {"requestId": field()}
        headers = []
        while unpack(data, pos)[0] != -1:
            name = field()
            headers.append({"name": name, "value": field()})
        pos += 4
        request["headers"] = headers
        parameters = []
        while unpack(data, pos)[0] != -1:
            name = field().decode("utf-8")
            content_type = field().decode("utf-8")
            parameters.append({"name": name, "contentType": content_type,
                               "value": _decoded(field(), content_type, decode)})
        pos += 4
        request["parameters"] = parameters
        batch.append(request)


def buffered_protocol() -> tuple[Any, Any]:
    """Drop-in ``(_retrieve_buffer, _retrieve_inference_msg)`` sharing one buffer per socket."""
    streams: weakref.WeakKeyDictionary[Any, _Stream] = weakref.WeakKeyDictionary()

    def stream_of(conn: Any) -> _Stream:
        stream = streams.get(conn)
        if stream is None:
            stream = streams[conn] = _Stream()
        return stream

    def retrieve_buffer(conn: Any, length: int) -> bytearray:
        if length <= 0:
            return bytearray()
        stream = stream_of(conn)
        if stream.pos + length > len(stream.data):
            stream.fill(conn, length)
        start = stream.pos
        stream.pos = start + length
        return stream.data[start:stream.pos]

    def retrieve_inference_msg(conn: Any) -> list[dict[str, Any]]:
        stream = stream_of(conn)
        end = _message_end(stream.data, stream.pos)
        while end < 0:
            stream.fill(conn, len(stream.data) - stream.pos + 1)
            end = _message_end(stream.data, stream.pos)
        decode = os.environ.get("TS_DECODE_INPUT_REQUEST") in (None, "true")
        batch = _parse(stream.data, stream.pos, decode)
        stream.pos = end
        return batch

    retrieve_buffer.servegate_buffered = True  # type: ignore[attr-defined]
    retrieve_inference_msg.servegate_buffered = True  # type: ignore[attr-defined]
    return retrieve_buffer, retrieve_inference_msg


def install() -> bool:
    """Read inference messages in one piece in this TorchServe worker, and its root logger's
    INFO lines off; False where nothing is changed: outside a worker (the worker has imported
    TorchServe's protocol module before it loads a model; nothing is imported here), or another
    TorchServe release than ``TESTED_TORCHSERVE``."""
    protocol = sys.modules.get(PROTOCOL_MODULE)
    version = str(getattr(sys.modules.get("ts"), "__version__", ""))
    if protocol is None or not version.startswith(TESTED_TORCHSERVE) or not all(
            hasattr(protocol, name) for name in ("_retrieve_buffer", "_retrieve_inference_msg")):
        return False
    if not getattr(protocol._retrieve_buffer, "servegate_buffered", False):
        protocol._retrieve_buffer, protocol._retrieve_inference_msg = buffered_protocol()
    root = logging.getLogger()
    if root.level == logging.INFO:  # TorchServe's worker: basicConfig(level=INFO) on stdout
        logging.getLogger("ts").setLevel(logging.INFO)
        root.setLevel(logging.WARNING)
    return True
