"""Request bodies for the load rows: digits rows, and sentences of an exact token count."""

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
