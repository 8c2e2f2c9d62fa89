"""Request bodies for the load rows: digits rows, sentences of an exact token count, images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from servegate.sources.base import TorchModel


def digits_bodies(x: np.ndarray) -> list[dict[str, object]]:
    return [{"inputs": row.tolist()} for row in x]


def sentences_of_length(model: TorchModel, tokens: int, count: int) -> list[str]:
    """``count`` different held-out texts that the worker tokenises to exactly ``tokens`` tokens
    ([CLS] and [SEP] included), so every served batch has the shape measured in process."""
    encoder = model.text_encoder()
    ids, _ = model.inputs_at(2 * count, tokens)
    texts = []
    for row in ids:
        text = encoder.tokenizer.decode(row[1:-1].tolist())
        if encoder.token_counts([text])[0] == tokens and text not in texts:
            texts.append(text)
    if len(texts) < count:
        raise RuntimeError(f"only {len(texts)} held-out texts of exactly {tokens} tokens")
    return texts[:count]


def write_bodies(path: Path, bodies: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bodies), encoding="utf-8")
    return path


def bad_bodies() -> list[bytes]:
    """Request bodies that once killed a whole batch (issue 11): each must get its own 4xx."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png_bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    return [
        b"[" * 1000 + b"]" * 1000,
        b'{"inputs": [' + b"7" * 5000 + b"]}",
        json.dumps({"inputs": [{"name": "x", "shape": [2**32, 2**32], "datatype": "FP32",
                                "data": []}]}).encode(),
        png_bomb,
        b'{"inputs": "\\ud800"}',
        json.dumps({"inputs": [True] * 64}).encode(),
        b"{oops",
        json.dumps({"instances": [[0.0] * 64] * 65}).encode(),
    ]


def image_bodies(images: list[bytes]) -> list[tuple[str, bytes]]:
    """Encoded images as users send them, alternately: the raw bytes (``image/png``) and a
    ``{"instances": [{"b64": ...}]}`` JSON body."""
    import base64

    bodies = []
    for index, data in enumerate(images):
        if index % 2:
            body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode("ascii")}]})
            bodies.append(("application/json", body.encode()))
        else:
            bodies.append(("image/png", data))
    return bodies


def write_typed_bodies(path: Path, bodies: list[tuple[str, bytes]]) -> Path:
    """(Content-Type, body) pairs as a JSON list of ``[content_type, base64 body]`` (for
    ``locust_bodies.py``)."""
    import base64

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([[kind, base64.b64encode(body).decode()] for kind, body in bodies]),
                    encoding="utf-8")
    return path


def write_raw_bodies(path: Path, bodies: list[bytes]) -> Path:
    """Raw (not necessarily JSON) bodies, as a JSON list of base64 strings."""
    import base64

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([base64.b64encode(b).decode() for b in bodies]), encoding="utf-8")
    return path
