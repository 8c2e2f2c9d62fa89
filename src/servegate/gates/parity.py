"""The accuracy gate: held-out data through the served challenger, against the in-process
reference and against the served champion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from servegate.backends.base import ServingBackend
from servegate.config import ParityThresholds
from servegate.errors import SourceError
from servegate.gates.checks import Check
from servegate.sources.base import TorchModel


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def served_probabilities(backend: ServingBackend, name: str, version: str | None,
                         x: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Class probabilities (or, for embedding models, the vectors) of every row of ``x`` through
    the standard REST endpoint."""
    rows = []
    for start in range(0, len(x), chunk):
        answer = backend.predict(name, {"instances": x[start:start + chunk].tolist()}, version)
        rows += [p["probabilities"] if isinstance(p, dict) else p for p in answer["predictions"]]
    return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class ParityResult:
    rows: int
    max_abs_diff: float
    top1_agreement: float
    accuracy: float
    reference_accuracy: float
    champion_accuracy: float | None
    abs_diffs: np.ndarray
    #: Embedding models: the lowest cosine similarity of a served row to its reference.
    min_cosine: float | None = None

    def metrics(self) -> dict[str, float]:
        figures = {"rows": self.rows, "max_abs_diff": self.max_abs_diff,
                   "top1_agreement": self.top1_agreement, "accuracy": self.accuracy,
                   "reference_accuracy": self.reference_accuracy}
        if self.champion_accuracy is not None:
            figures["champion_accuracy"] = self.champion_accuracy
        if self.min_cosine is not None:
            figures["min_cosine"] = self.min_cosine
        return {k: float(v) for k, v in figures.items() if v == v}  # NaN: not applicable


def run_parity(backend: ServingBackend, name: str, version: str, model: TorchModel | Any,
               champion_version: str | None) -> ParityResult:
    if model.eval_x is None:
        raise SourceError("the model has no held-out set to gate on")
    if model.eval_y is None:
        return _embedding_parity(backend, name, version, model)
    x, y = model.eval_x, model.eval_y
    served = served_probabilities(backend, name, version, x)
    reference = model.reference(x).astype(np.float64)
    if not getattr(model, "outputs_are_probabilities", False):
        reference = softmax(reference)
    diffs = np.abs(served - reference)
    champion_accuracy = None
    if champion_version is not None:
        champion = served_probabilities(backend, name, champion_version, x)
        champion_accuracy = float((champion.argmax(1) == y).mean())
    return ParityResult(
        rows=len(x),
        max_abs_diff=float(diffs.max()),
        top1_agreement=float((served.argmax(1) == reference.argmax(1)).mean()),
        accuracy=float((served.argmax(1) == y).mean()),
        reference_accuracy=float((reference.argmax(1) == y).mean()),
        champion_accuracy=champion_accuracy,
        abs_diffs=diffs.max(axis=1),
    )


#: Top-1 agreement required of reduced-precision (INT8/FP16) artifacts, whose outputs legitimately
#: differ from the FP32 reference; they are then gated on task accuracy instead of max abs diff.
REDUCED_PRECISION_MIN_TOP1 = 0.98


def _embedding_parity(backend: ServingBackend, name: str, version: str,
                      model: Any) -> ParityResult:
    """Embedding models have no labels: served vectors against the reference, by cosine."""
    x = model.eval_x
    served = served_probabilities(backend, name, version, x)
    reference = model.reference(x).astype(np.float64)
    diffs = np.abs(served - reference)
    cosine = (served * reference).sum(1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12)
    nan = float("nan")
    return ParityResult(rows=len(x), max_abs_diff=float(diffs.max()),
                        top1_agreement=nan, accuracy=nan, reference_accuracy=nan,
                        champion_accuracy=None, abs_diffs=diffs.max(axis=1),
                        min_cosine=float(cosine.min()))


#: Served embeddings must keep this cosine similarity to the reference (FP32 and reduced).
MIN_EMBEDDING_COSINE = {"fp32": 0.999, "reduced": 0.99}


def parity_checks(result: ParityResult, thresholds: ParityThresholds,
                  precision: str = "fp32") -> list[Check]:
    """FP32: served outputs equal the reference within ``parity_atol``. Reduced precision: top-1
    agreement and task accuracy against the reference instead. Both: accuracy vs the champion.
    Embeddings: cosine similarity to the reference (and max abs diff for FP32)."""
    if result.min_cosine is not None:
        checks = [Check("parity", "min_cosine", result.min_cosine, ">=",
                        MIN_EMBEDDING_COSINE[precision])]
        if precision == "fp32":
            checks.append(Check("parity", "max_abs_diff", result.max_abs_diff, "<=",
                                thresholds.parity_atol))
        return checks
    if precision == "fp32":
        checks = [
            Check("parity", "max_abs_diff", result.max_abs_diff, "<=", thresholds.parity_atol),
            Check("parity", "top1_agreement", result.top1_agreement, ">=",
                  thresholds.min_top1_agreement),
        ]
    else:
        checks = [
            Check("parity", "top1_agreement", result.top1_agreement, ">=",
                  min(thresholds.min_top1_agreement, REDUCED_PRECISION_MIN_TOP1)),
            Check("parity", "accuracy_vs_reference", result.accuracy, ">=",
                  result.reference_accuracy - thresholds.max_accuracy_drop),
        ]
    if result.champion_accuracy is not None:
        checks.append(Check("parity", "accuracy_vs_champion", result.accuracy, ">=",
                            result.champion_accuracy - thresholds.max_accuracy_drop))
    return checks
