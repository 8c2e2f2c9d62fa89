"""The worker's inference messages read in one piece (``handlers/sg_worker_io.py``): the same batch
as TorchServe's own field-by-field parse, on fixed and generated messages, whole or trickled."""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import threading
import time
from typing import Any

import pytest

from servegate._resources import handler_module

otf = pytest.importorskip("ts.protocol.otf_message_handler",
                          reason="TorchServe's worker protocol (the torchserve package) is needed")
worker_io = handler_module("sg_worker_io")


def _field(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def _inference(requests: list[tuple[bytes, list[tuple[bytes, bytes]], list[tuple[bytes, bytes, bytes]]]]
               ) -> bytes:
    """A predict message as the frontend frames it: per request its id, headers, parameters."""
    message = bytearray(b"I")
    for request_id, headers, parameters in requests:
        message += _field(request_id)
        for name, value in headers:
            message += _field(name) + _field(value)
        message += struct.pack("!i", -1)
        for name, content_type, value in parameters:
            message += _field(name) + _field(content_type) + _field(value)
        message += struct.pack("!i", -1)
    return bytes(message + struct.pack("!i", -1))


HEADERS = [(b"Host", b"127.0.0.1:8080"), (b"Authorization", b"Bearer k3y"),
           (b"Content-Type", b"application/json"), (b"Content-Length", b"42"), (b"Empty", b"")]
MESSAGES = [
    _inference([(b"id-0", HEADERS, [(b"body", b"application/json", b'{"inputs": [1, 2]}')])]),
    _inference([(f"id-{i}".encode(), HEADERS[: i % 5],
                 [(b"body", b"image/png", bytes(range(256)) * (i + 1)),
                  (b"data", b"text/plain", "na\u00efve".encode())]) for i in range(8)]),
    _inference([(b"id-big", [], [(b"body", b"application/octet-stream", b"\x00" * 300_000)])]),
]


TORCHSERVE = (otf._retrieve_buffer, otf._retrieve_inference_msg)


def _parse_all(protocol: tuple[Any, Any], conn: Any, count: int,
               monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(otf, "_retrieve_buffer", protocol[0])
    monkeypatch.setattr(otf, "_retrieve_inference_msg", protocol[1])
    return [otf.retrieve_msg(conn) for _ in range(count)]


def _generated(rng: random.Random) -> bytes:
    """A random message: 1-8 requests, 0-9 headers, 0-3 parameters of JSON (some invalid), text
    (some not UTF-8) and binary content types, empty values included."""
    def blob() -> bytes:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 40, 3000])))

    def value(kind: bytes) -> bytes:
        if kind == b"application/json":
            return rng.choice([json.dumps({"inputs": [rng.random()] * 3}).encode(), b"{oops", b""])
        if kind.startswith(b"text"):
            return rng.choice(["h\u00e9".encode(), b"\xff\xfe", b""])
        return blob()

    requests = []
    for index in range(rng.randint(1, 8)):
        headers = [(f"h{i}".encode(), blob()) for i in range(rng.randint(0, 9))]
        kinds = [rng.choice([b"application/json", b"text/plain", b"image/png", b""])
                 for _ in range(rng.randint(0, 3))]
        requests.append((f"req-{index}".encode(), headers,
                         [(f"p{i}".encode(), kind, value(kind)) for i, kind in enumerate(kinds)]))
    return _inference(requests)


def _pair() -> tuple[socket.socket, socket.socket]:
    """(frontend, worker) ends; a read that would wait forever fails after 10 s instead."""
    front, worker = socket.socketpair()
    worker.settimeout(10)
    return front, worker


def _send(sock: socket.socket, data: bytes, piece: int | None = None) -> threading.Thread:
    """Send ``data`` from a thread (in ``piece``-byte writes with pauses, when given)."""
    def run() -> None:
        if piece is None:
            sock.sendall(data)
            return
        for start in range(0, len(data), piece):
            sock.sendall(data[start:start + piece])
            if start % (piece * 64) == 0:
                time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _both(stream: bytes, count: int, monkeypatch: pytest.MonkeyPatch,
          piece: int | None = None) -> tuple[list[Any], list[Any]]:
    """``count`` messages of ``stream`` parsed by TorchServe's reader and by ours."""
    results = []
    for protocol in (TORCHSERVE, worker_io.buffered_protocol()):
        front, worker = _pair()
        with front, worker:
            sender = _send(front, stream, piece)
            results.append(_parse_all(protocol, worker, count, monkeypatch))
            sender.join()
    return results[0], results[1]


def _typed(value: Any) -> Any:
    """``value`` with every bytes-like object tagged with its type, so equality checks types."""
    if isinstance(value, (bytes, bytearray)):
        return (type(value).__name__, bytes(value))
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_typed(v) for v in value]
    return value


@pytest.mark.parametrize("piece", [None, 1, 7])
@pytest.mark.parametrize("decode", ["true", "false"])
def test_messages_parse_exactly_as_torchserve_parses_them(
        monkeypatch: pytest.MonkeyPatch, piece: int | None, decode: str) -> None:
    """Back-to-back messages, whole or trickled a few bytes at a time, with TorchServe's JSON and
    text decoding on and off: the same batches, keys, values and types."""
    monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", decode)
    messages = MESSAGES[:2] if piece else MESSAGES
    original, ours = _both(b"".join(messages), len(messages), monkeypatch, piece)
    assert _typed(ours) == _typed(original)
    first = original[0][1][0]["parameters"][0]["value"]
    assert first == ({"inputs": [1, 2]} if decode == "true" else b'{"inputs": [1, 2]}')


def test_generated_messages_parse_as_torchserve_parses_them(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(24)
    messages = [_generated(rng) for _ in range(40)]
    original, ours = _both(b"".join(messages), len(messages), monkeypatch)
    assert _typed(ours) == _typed(original)
    assert sum(len(batch) for _, batch in original) > 100  # they held requests to compare


class _CountingSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.recvs = sock, 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)


def test_one_recv_per_message_instead_of_one_per_field(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = []
    for protocol in (TORCHSERVE, worker_io.buffered_protocol()):
        front, worker = _pair()
        with front, worker:
            front.sendall(MESSAGES[1])
            counting = _CountingSocket(worker)
            _parse_all(protocol, counting, 1, monkeypatch)
            counts.append(counting.recvs)
    field_by_field, buffered = counts
    assert field_by_field > 100  # TorchServe's: 8 requests, a recv per length and per value
    assert buffered == 1


def test_a_closed_frontend_ends_the_worker_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    front, worker = _pair()
    with worker:
        front.sendall(MESSAGES[0][:20])  # a message cut short, then the frontend goes away
        front.close()
        protocol = worker_io.buffered_protocol()
        monkeypatch.setattr(otf, "_retrieve_buffer", protocol[0])
        monkeypatch.setattr(otf, "_retrieve_inference_msg", protocol[1])
        with pytest.raises(SystemExit) as exited:
            otf.retrieve_msg(worker)
    assert exited.value.code == 0


@pytest.fixture
def worker_logging():
    """The root logger at INFO, as TorchServe's worker configures it; levels restored after
    (with ``setLevel``, which also clears the loggers' cached answers)."""
    import logging

    root, ts_logger = logging.getLogger(), logging.getLogger("ts")
    saved = root.level, ts_logger.level
    root.setLevel(logging.INFO)
    ts_logger.setLevel(logging.NOTSET)
    yield root
    root.setLevel(saved[0])
    ts_logger.setLevel(saved[1])


def test_install_swaps_the_reader_once_and_only_in_a_worker(monkeypatch: pytest.MonkeyPatch,
                                                             worker_logging) -> None:
    import logging

    root = worker_logging
    monkeypatch.setattr(otf, "_retrieve_buffer", TORCHSERVE[0])
    monkeypatch.setattr(otf, "_retrieve_inference_msg", TORCHSERVE[1])
    assert worker_io.install() is True
    installed = (otf._retrieve_buffer, otf._retrieve_inference_msg)
    assert installed[0] is not TORCHSERVE[0] and installed[1] is not TORCHSERVE[1]
    assert worker_io.install() is True  # a second model's initialize: not stacked
    assert (otf._retrieve_buffer, otf._retrieve_inference_msg) == installed
    # the per-batch "Backend received inference" line (root, INFO) is off; metric lines are not
    assert not root.isEnabledFor(logging.INFO)
    assert logging.getLogger("ts.metrics.caching_metric").isEnabledFor(logging.INFO)
    monkeypatch.setattr(sys.modules["ts"], "__version__", "0.13.0")
    monkeypatch.setattr(otf, "_retrieve_buffer", TORCHSERVE[0])
    assert worker_io.install() is False and otf._retrieve_buffer is TORCHSERVE[0]  # untested release
    monkeypatch.delitem(sys.modules, worker_io.PROTOCOL_MODULE)
    assert worker_io.install() is False  # no TorchServe worker protocol loaded: nothing done
