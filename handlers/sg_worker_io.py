"""Buffered reads of the TorchServe worker's socket: one ``recv`` per message, not one per field.

TorchServe 0.12's worker (``ts/protocol/otf_message_handler.py``) reads a batch field by field,
each length prefix and each value with its own ``socket.recv``: about 40 system calls per request
for a client that sends 8 HTTP headers (41 ``recvfrom`` per request counted with strace under
Locust; ~70 µs of worker CPU per request in process, a third of the worker's whole cost per
request at batch 8). ``install`` swaps that module's ``_retrieve_buffer`` for one that reads
whatever the socket holds (at least the bytes asked for) into a buffer kept per socket, and hands
out the fields from there. The parser, the bytes it sees and their order are TorchServe's own; so
is the end of stream (the worker exits when the frontend disconnects). Fields come back as
``bytearray``, as before.

Safe to install while loading a model (``initialize``): the frontend sends nothing to a worker
until the load is answered, so no byte of the stream is buffered by the old reader.
"""

from __future__ import annotations

import logging
import sys
import weakref
from typing import Any

#: Bytes asked of the socket per read (more when a field is larger).
READ_SIZE = 1 << 18


class _Stream:
    """Bytes read from one socket and not handed out yet: ``data[pos:]``."""

    __slots__ = ("data", "pos", "__weakref__")

    def __init__(self) -> None:
        self.data = bytearray()
        self.pos = 0


def buffered_reader() -> Any:  # -> Callable[[socket, int], bytearray]
    """A drop-in ``_retrieve_buffer(conn, length)`` that reads ahead, one buffer per socket."""
    streams: weakref.WeakKeyDictionary[Any, _Stream] = weakref.WeakKeyDictionary()

    def retrieve_buffer(conn: Any, length: int) -> bytearray:
        if length <= 0:
            return bytearray()
        stream = streams.get(conn)
        if stream is None:
            stream = streams[conn] = _Stream()
        data, pos = stream.data, stream.pos
        end = pos + length
        if end > len(data):
            del data[:pos]  # keep only what is not handed out yet
            end, pos = length, 0
            while len(data) < end:
                packet = conn.recv(max(READ_SIZE, end - len(data)))
                if not packet:
                    logging.info("Frontend disconnected.")
                    sys.exit(0)
                data += packet
        stream.pos = end
        return data[pos:end]

    retrieve_buffer.servegate_buffered = True  # type: ignore[attr-defined]
    return retrieve_buffer


PROTOCOL_MODULE = "ts.protocol.otf_message_handler"


def install() -> bool:
    """Use buffered reads in this TorchServe worker; False where there is nothing to replace:
    outside a worker (the worker has imported TorchServe's protocol module before it loads a
    model; nothing is imported here) or a TorchServe whose protocol has no ``_retrieve_buffer``."""
    otf_message_handler = sys.modules.get(PROTOCOL_MODULE)
    if otf_message_handler is None:
        return False
    current = getattr(otf_message_handler, "_retrieve_buffer", None)
    if current is None:
        return False
    if not getattr(current, "servegate_buffered", False):
        otf_message_handler._retrieve_buffer = buffered_reader()
    return True
