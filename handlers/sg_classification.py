"""Classification outputs shared by the task handlers: probabilities, top-k, labels."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import sg_codecs


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Classifier:
    """Turns logits (or probabilities) into probabilities, top-k and label strings."""

    def __init__(self, labels: list[str], top_k: int, outputs_are_probabilities: bool) -> None:
        self.labels = labels
        self.top_k = top_k
        self.outputs_are_probabilities = outputs_are_probabilities

    @classmethod
    def from_spec(cls, spec: dict[str, Any], model_dir: str) -> Classifier:
        labels: list[str] = []
        name = spec.get("labels_file")
        if name:
            with open(os.path.join(model_dir, name), encoding="utf-8") as fh:
                mapping = json.load(fh)
            labels = [str(mapping[k]) for k in sorted(mapping, key=int)]
        return cls(labels, int(spec.get("top_k", 3)), bool(spec.get("outputs_are_probabilities")))

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def outputs(self, output: np.ndarray, *,
                v2: bool = True) -> tuple[list[Any], list[dict[str, Any]]]:
        """JSON rows (label, probabilities, top-k) and, when ``v2``, the OIP output tensors."""
        return self.outputs_many([output], [v2])[0]

    def outputs_many(self, outputs: list[np.ndarray],
                     v2: list[bool]) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        """``outputs`` of several requests at once (one softmax and one sort for all their rows):
        each request's JSON rows, and its OIP tensors where ``v2``."""
        scores = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        scores = scores.astype(np.float32, copy=False)
        probs = scores if self.outputs_are_probabilities else softmax(scores)
        k = min(self.top_k, probs.shape[-1])
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        label = self.label
        rows = [{"label": label(idx[0]), "probabilities": p,
                 "top_k": [{"index": j, "label": label(j), "probability": p[j]} for j in idx]}
                for p, idx in zip(probs.tolist(), top.tolist(), strict=True)]
        answers: list[tuple[list[Any], list[dict[str, Any]]]] = []
        start = 0
        for output, wants_v2 in zip(outputs, v2, strict=True):
            stop = start + len(output)
            answers.append((rows[start:stop], self._v2(probs[start:stop], top[start:stop])
                            if wants_v2 else []))
            start = stop
        return answers

    def _v2(self, probs: np.ndarray, top: np.ndarray) -> list[dict[str, Any]]:
        labels = np.array([self.label(int(i)) for i in top[:, 0]], dtype=object)
        return [sg_codecs.v2_tensor("probabilities", probs), sg_codecs.v2_tensor("label", labels)]
