"""TorchServe handler: sentence embeddings (``embedding``) or text classification
(``text-classification``) from raw text, tokenised in the worker.

Requests carry strings (or ``{"text": ...}`` objects): ``{"inputs": "one"}``,
``{"inputs": ["a", "b"]}``, ``{"instances": [...]}``, a bare JSON list, or an Open Inference
Protocol ``BYTES`` tensor. Each request is tokenised on its own (truncated at the archive's
``max_length`` tokens); the batch is padded to its longest sequence, not to a fixed length.
Answers: one L2-normalised embedding (a list of floats) per text, or label, probabilities and
top-k per text.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import sg_codecs
import sg_text
from sg_base import BatchingHandler, Features
from sg_classification import Classifier
from sg_errors import InvalidInput


class TextHandler(BatchingHandler):
    """Texts -> embeddings or class probabilities; tokenizer and limits from the archive."""

    def configure(self, model_dir: str) -> None:
        # Each worker has its share of the cores for the model: no tokenizer thread pool beside it.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        text = self.spec.get("text") or {}
        self.encoder = sg_text.TextEncoder(
            os.path.join(model_dir, str(text.get("tokenizer_file", sg_text.DEFAULT_TOKENIZER_FILE))),
            max_length=int(text.get("max_length", sg_text.DEFAULT_MAX_LENGTH)),
        )
        self.max_chars = int(text.get("max_chars", sg_text.DEFAULT_MAX_CHARS))
        self.embedding = self.spec.get("task") == "embedding"
        self.classifier = None if self.embedding else Classifier.from_spec(self.spec, model_dir)

    def features(self, envelope: sg_codecs.Envelope) -> Features:
        if envelope.family == "raw":
            raise InvalidInput("wrong dtype", "this model takes text in a JSON body, not raw bytes")
        if envelope.family == "v2" and (envelope.meta.get("datatype") != "BYTES"
                                        or len(envelope.tensors) != 1):
            raise InvalidInput("wrong dtype", "this model takes one BYTES tensor (strings) in v2 "
                                              f"requests, got {len(envelope.tensors)} tensor(s)")
        self.check_rows(len(envelope))  # before tokenising
        texts = sg_text.request_texts(list(envelope.instances), max_chars=self.max_chars)
        ids, mask = self.encoder.encode(texts)
        return Features((ids, mask), len(texts), envelope.single)

    def collate(self, batch: list[Features]) -> tuple[np.ndarray, ...]:
        """Dynamic padding: every request's tokens padded to the longest of the whole batch."""
        return sg_text.pad_batch([f.arrays for f in batch], self.encoder.pad_id)

    def pad_values(self) -> tuple[float, ...]:
        """Token padding for shape buckets: the tokenizer's pad id, and 0 in the mask."""
        return (self.encoder.pad_id, 0)

    def outputs_many(self, outputs: list[tuple[np.ndarray, ...]],
                     v2: list[bool]) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        if self.classifier is None:
            return super().outputs_many(outputs, v2)
        return self.classifier.outputs_many([o[0] for o in outputs], v2)

    def outputs(self, outputs: tuple[np.ndarray, ...], *,
                v2: bool = True) -> tuple[list[Any], list[dict[str, Any]]]:
        output = outputs[0]
        if self.classifier is not None:
            return self.classifier.outputs(output, v2=v2)
        vectors = output.astype(np.float32, copy=False)
        return vectors.tolist(), [sg_codecs.v2_tensor("embedding", vectors)] if v2 else []
