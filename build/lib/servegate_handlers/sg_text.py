"""Text in the worker: validation of request texts, fast tokenisation, dynamic padding.

``TextEncoder`` wraps a Hugging Face fast tokenizer (``tokenizer.json``, run by ``tokenizers``):
the padding and truncation recorded in that file are replaced by ours, truncation at
``max_length`` tokens and padding to the longest sequence of what is encoded (a request), then
again to the longest of the batch (``pad_batch``). servegate imports this module too, so its
in-process references tokenise exactly as the worker does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sg_errors import InvalidInput, PayloadTooLarge

DEFAULT_TOKENIZER_FILE = "tokenizer.json"
DEFAULT_MAX_LENGTH = 128
DEFAULT_MAX_CHARS = 20_000


class TextEncoder:
    """Texts -> ``(input_ids, attention_mask)``, int64 ``[rows, longest]``, right-padded."""

    def __init__(self, tokenizer_file: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(tokenizer_file)
        recorded = self.tokenizer.padding or {}
        pad_id = recorded.get("pad_id")
        if pad_id is None:
            pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.pad_id = int(pad_id)
        self.max_length = int(max_length)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return pad_batch([(np.asarray([e.ids], np.int64), np.asarray([e.attention_mask], np.int64))
                          for e in encodings], self.pad_id)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation (for figures and tests)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]


def pad_batch(parts: Sequence[tuple[np.ndarray, ...]],
              pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Join ``(input_ids, attention_mask)`` pairs of different lengths, padded to the longest."""
    if len(parts) == 1:
        ids, mask = parts[0]
        return np.ascontiguousarray(ids, np.int64), np.ascontiguousarray(mask, np.int64)
    rows = sum(p[0].shape[0] for p in parts)
    longest = max(p[0].shape[1] for p in parts)
    ids = np.full((rows, longest), pad_id, dtype=np.int64)
    mask = np.zeros((rows, longest), dtype=np.int64)
    start = 0
    for part_ids, part_mask in parts:
        n, length = part_ids.shape
        ids[start:start + n, :length] = part_ids
        mask[start:start + n, :length] = part_mask
        start += n
    return ids, mask


def request_texts(instances: Sequence[Any], *, max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """The texts of one request: strings, or ``{"text": ...}`` objects. 422 for anything else or
    an empty text, 413 for a text over ``max_chars`` characters."""
    texts = []
    for i, item in enumerate(instances):
        if isinstance(item, dict) and set(item) == {"text"}:
            item = item["text"]
        if isinstance(item, (bytes, bytearray)):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput("invalid text", f"instance {i} is not UTF-8: {exc}") from exc
        if not isinstance(item, str):
            raise InvalidInput("wrong dtype",
                               f"instance {i}: expected a string, got {type(item).__name__}")
        if not item.strip():
            raise InvalidInput("empty text", f"instance {i} is empty")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate ("\\ud800"): the tokenizer would raise
            raise InvalidInput("invalid text", f"instance {i} is not valid Unicode: {exc}") from exc
        if len(item) > max_chars:
            raise PayloadTooLarge("text too long",
                                  f"instance {i} has {len(item)} characters > limit of {max_chars}")
        texts.append(item)
    return texts
