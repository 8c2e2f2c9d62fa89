"""A served request that reaches one artifact of an archive routed by shape: ``probes`` in
``compilers.routing`` makes them from the shapes each artifact owns, the parity gate sends them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    """``rows`` rows in one request and, for a text model, a longest text of ``min_tokens`` to
    ``max_tokens`` tokens (``max_tokens`` None: any longer; both None: not a text model)."""

    rows: int
    min_tokens: int | None = None
    max_tokens: int | None = None

    @property
    def by_tokens(self) -> bool:
        return self.min_tokens is not None

    def holds(self, tokens: int) -> bool:
        """Whether a text of ``tokens`` tokens is in this probe's token range."""
        low = self.min_tokens or 0
        return low <= tokens and (self.max_tokens is None or tokens <= self.max_tokens)

    def __str__(self) -> str:
        rows = f"{self.rows} row{'s' if self.rows != 1 else ''}"
        if not self.by_tokens:
            return rows
        top = f"-{self.max_tokens}" if self.max_tokens is not None else "+"
        return f"{rows} of {self.min_tokens}{top} tokens"
