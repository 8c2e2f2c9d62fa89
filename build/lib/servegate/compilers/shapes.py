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


#: Larger batches timed on a CUDA host (where at most the artifact's max batch).
CUDA_BATCHES = (64, 256)


def timing_batch_sizes(batch_size: int, max_batch: int, *, cuda: bool = False) -> list[int]:
    """Batch sizes candidates are timed at: 1 and the serving batch, plus on a CUDA host the
    larger buckets (64, 256) that fit ``max_batch``."""
    sizes = {1, batch_size}
    if cuda:
        sizes |= {b for b in CUDA_BATCHES if b <= max_batch}
    return sorted(sizes)


def bucket_sizes(model: TorchModel, max_batch: int) -> dict[str, list[int]]:
    """Fixed shapes for artifacts that need them (CUDA graphs, TensorRT profiles): batches 1, 2, 4,
    ... up to ``max_batch`` (included); for text, tokens 16, 32, 64, ... up to ``max_length``
    (included); no tokens for other models. The worker pads a request up to the next bucket."""
    batches = sorted({1 << i for i in range(max(1, max_batch).bit_length()) if 1 << i <= max_batch}
                     | {max(1, max_batch)})
    tokens: list[int] = []
    if model.is_text:
        limit = int(model.max_length or 128)
        tokens = sorted({t for t in (16 << i for i in range(16)) if t <= limit} | {limit})
    return {"batch": batches, "tokens": tokens}
