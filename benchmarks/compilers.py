"""In-process compiler comparison for ``make bench``: every backend ``auto`` tries, side by side."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from servegate.compilers import AUTO_CANDIDATES
from servegate.compilers.select import Candidate, choose, evaluate
from servegate.sources.base import TorchModel

BATCH_SIZES = (1, 8, 64)


@dataclass(frozen=True)
class CompilerTable:
    candidates: list[Candidate]
    chosen: str
    batch_sizes: tuple[int, ...]

    def speedup(self, backend: str, batch: int) -> float:
        by_name = {c.backend: c for c in self.candidates}
        eager, other = by_name["eager"].p50_ms.get(batch), by_name[backend].p50_ms.get(batch)
        return eager / other if eager and other else math.nan

    def rows(self) -> list[dict[str, object]]:
        out = []
        for c in self.candidates:
            row: dict[str, object] = {
                "backend": c.backend, "status": c.status, "reason": c.reason[:80],
                "compile_s": round(c.compile_seconds, 1), "max_abs": c.max_abs, "cosine": c.cosine}
            for b in self.batch_sizes:
                row[f"p50_us_b{b}"] = c.p50_ms.get(b, math.nan) * 1e3
                row[f"speedup_b{b}"] = self.speedup(c.backend, b) if c.usable else math.nan
            out.append(row)
        return out


def measure_compilers(model: TorchModel, *, serving_batch: int = 8, threads: int = 1,
                      batch_sizes: Sequence[int] = BATCH_SIZES,
                      repeats: int = 200) -> CompilerTable:
    """Compile, parity-check and time every candidate (median of many runs, after warm-up)."""
    with tempfile.TemporaryDirectory(prefix="servegate-bench-compile-") as tmp:
        candidates = evaluate(model, AUTO_CANDIDATES, Path(tmp), max_batch=max(batch_sizes),
                              batch_sizes=batch_sizes, threads=threads, repeats=repeats)
        chosen = choose(candidates, serving_batch)
    return CompilerTable(candidates, chosen.backend, tuple(batch_sizes))


def _fmt(value: object, spec: str) -> str:
    """A figure, or a dash where it does not apply (skipped or rejected candidates)."""
    return "—" if isinstance(value, float) and math.isnan(value) else spec.format(value)


def markdown(table: CompilerTable) -> list[str]:
    sizes = table.batch_sizes
    header = ["backend", "status", *[f"p50 µs b{b}" for b in sizes],
              *[f"vs eager b{b}" for b in sizes], "max abs", "compile s", "reason"]
    align = ["---"] * 2 + ["---:"] * (2 * len(sizes) + 2) + ["---"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in table.rows():
        lines.append("| " + " | ".join([
            str(r["backend"]), str(r["status"]),
            *[_fmt(r[f"p50_us_b{b}"], "{:.0f}") for b in sizes],
            *[_fmt(r[f"speedup_b{b}"], "{:.2f}x") for b in sizes],
            _fmt(r["max_abs"], "{:.2g}"), str(r["compile_s"]), str(r["reason"])]) + " |")
    return lines
