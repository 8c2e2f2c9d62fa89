"""The input shapes compilers are timed at: a batch size, and for text models a token count."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from servegate.sources.base import TorchModel

#: Token counts text models are timed at (capped at the model's ``max_length``).
TEXT_TOKENS = (32, 128)


@dataclass(frozen=True, order=True)
class Shape:
    """``batch`` rows, each of ``tokens`` tokens for a text model (``None`` otherwise)."""

    batch: int
    tokens: int | None = None

    @property
    def label(self) -> str:
        """``b8``, or ``b8_t128`` for text (usable in MLflow metric names)."""
        return f"b{self.batch}" if self.tokens is None else f"b{self.batch}_t{self.tokens}"


def timing_shapes(model: TorchModel, batch_sizes: Sequence[int],
                  tokens: Sequence[int] = TEXT_TOKENS) -> list[Shape]:
    """Every batch size, crossed with every token count for a text model."""
    if not model.is_text:
        return [Shape(b) for b in sorted(set(batch_sizes))]
    limit = int(model.max_length or max(tokens))
    lengths = sorted({min(t, limit) for t in tokens})
    return [Shape(b, t) for b in sorted(set(batch_sizes)) for t in lengths]
