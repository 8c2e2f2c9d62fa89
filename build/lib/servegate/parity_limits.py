"""The parity limits of a compiled artifact against the eager reference, per precision: the one
table that ``auto`` (``compilers/select.py``), the accuracy gate (``gates/parity.py``) and the
defaults of ``config.ParityThresholds`` read.

FP32 artifacts must match the reference tightly; reduced-precision (INT8/FP16/BF16) ones legitimately
differ, so their limits are looser and they are then held to the task's accuracy instead.
Embeddings have no classes: the cosine per row is their check (top-1 of a vector means nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["fp32", "reduced"]


@dataclass(frozen=True)
class ParityLimits:
    """The limits of one precision: largest abs difference, lowest cosine per row, lowest top-1
    agreement (classes only)."""

    max_abs: float
    min_cosine: float
    min_top1: float


PARITY_LIMITS: dict[str, ParityLimits] = {
    "fp32": ParityLimits(max_abs=1e-3, min_cosine=0.9999, min_top1=1.0),
    "reduced": ParityLimits(max_abs=float("inf"), min_cosine=0.99, min_top1=0.98),
}

EMBEDDING_PARITY_LIMITS: dict[str, ParityLimits] = {
    "fp32": ParityLimits(max_abs=1e-3, min_cosine=0.999, min_top1=0.0),
    "reduced": ParityLimits(max_abs=float("inf"), min_cosine=0.99, min_top1=0.0),
}

#: Reduced-precision artifacts must keep task accuracy within this of the FP32 reference.
MAX_REDUCED_ACCURACY_DROP = 0.01


#: Name tokens of reduced-precision backends (``onnx-int8``, ``eager-bf16``, ``aoti-fp16-cuda``).
REDUCED_TOKENS = frozenset({"int8", "fp16", "bf16"})


def precision_of(backend: str) -> Precision:
    """``reduced`` for the INT8/FP16/BF16 backends, read from the name's ``-`` tokens
    (``onnx-int8``, ``torch-tensorrt-fp16``, ``eager-bf16``, ``inductor-cudagraphs-fp16-cuda``),
    else ``fp32``."""
    return "reduced" if REDUCED_TOKENS & set(backend.lower().split("-")) else "fp32"


def parity_limits(precision: str, task: str = "classification") -> ParityLimits:
    """The limits of ``precision`` for ``task`` (embeddings have their own table)."""
    return (EMBEDDING_PARITY_LIMITS if task == "embedding" else PARITY_LIMITS)[precision]
