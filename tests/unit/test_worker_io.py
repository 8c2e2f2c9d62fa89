"""Buffered worker reads (``handlers/sg_worker_io.py``): TorchServe's own parser, fed from one
``recv`` per message, sees exactly the bytes it saw field by field."""

from __future__ import annotations

import socket
import struct
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


def _parse_all(reader: Any, conn: Any, count: int, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(otf, "_retrieve_buffer", reader)
    return [otf.retrieve_msg(conn) for _ in range(count)]


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


@pytest.mark.parametrize("piece", [None, 1, 7])
def test_buffered_reads_parse_every_message_as_torchserve_does(
        monkeypatch: pytest.MonkeyPatch, piece: int | None) -> None:
    """Back-to-back messages, whole or trickled a few bytes at a time: the same parse."""
    stream = b"".join(MESSAGES[:2]) if piece else b"".join(MESSAGES)
    count = 2 if piece else len(MESSAGES)
    monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", "true")  # JSON and text decoded, as by default
    results = []
    for reader in (otf._retrieve_buffer, worker_io.buffered_reader()):
        front, worker = _pair()
        with front, worker:
            sender = _send(front, stream, piece)
            results.append(_parse_all(reader, worker, count, monkeypatch))
            sender.join()
    original, buffered = results
    assert buffered == original
    assert original[0][1][0]["parameters"][0]["value"] == {"inputs": [1, 2]}  # really parsed
    for _, batch in buffered:
        assert all(isinstance(r["requestId"], bytearray) for r in batch)  # the same types too


class _CountingSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.recvs = sock, 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)


def test_one_recv_per_message_instead_of_one_per_field(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = []
    for reader in (otf._retrieve_buffer, worker_io.buffered_reader()):
        front, worker = _pair()
        with front, worker:
            front.sendall(MESSAGES[1])
            counting = _CountingSocket(worker)
            _parse_all(reader, counting, 1, monkeypatch)
            counts.append(counting.recvs)
    field_by_field, buffered = counts
    assert field_by_field > 100  # TorchServe's: 8 requests, a recv per length and per value
    assert buffered == 1


def test_a_closed_frontend_ends_the_worker_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    front, worker = _pair()
    with worker:
        front.sendall(MESSAGES[0][:20])  # a message cut short, then the frontend goes away
        front.close()
        monkeypatch.setattr(otf, "_retrieve_buffer", worker_io.buffered_reader())
        with pytest.raises(SystemExit) as exited:
            otf.retrieve_msg(worker)
    assert exited.value.code == 0


def test_install_swaps_the_reader_once_and_only_in_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    original = otf._retrieve_buffer
    monkeypatch.setattr(otf, "_retrieve_buffer", original)
    assert worker_io.install() is True
    installed = otf._retrieve_buffer
    assert installed is not original and installed.servegate_buffered
    assert worker_io.install() is True and otf._retrieve_buffer is installed  # not stacked
    monkeypatch.delitem(__import__("sys").modules, worker_io.PROTOCOL_MODULE)
    assert worker_io.install() is False  # no TorchServe worker protocol loaded: nothing done
