"""In-process compiler comparison for ``make bench``: every backend ``auto`` tries, side by side,
at every shape, with ``auto``'s pick, its worst case against the best, and hardware efficiency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from servegate.compilers import AUTO_CANDIDATES
from servegate.compilers.select import Candidate, choose, evaluate, timed_shapes
from servegate.compilers.shapes import TEXT_TOKENS, Shape
from servegate.sources.base import TorchModel

BATCH_SIZES = (1, 8, 64)


@dataclass(frozen=True)
class CompilerTable:
    """Candidates timed in process on ``threads`` threads; ``flops`` per shape when counted."""

    title: str
    candidates: list[Candidate]
    chosen: str
    threads: int
    flops: dict[Shape, int] = field(default_factory=dict)
    matmul_flops_per_s: float = math.nan

    @property
    def shapes(self) -> list[Shape]:
        return timed_shapes(self.candidates)

    def candidate(self, backend: str) -> Candidate:
        return next(c for c in self.candidates if c.backend == backend)

    def speedup(self, backend: str, shape: Shape) -> float:
        """Eager's p50 / ``backend``'s at ``shape``."""
        eager, other = self.candidate("eager").p50_ms.get(shape), self.candidate(backend).p50_ms.get(shape)
        return eager / other if eager and other else math.nan

    def versus_best(self, backend: str, shape: Shape) -> float:
        """``backend``'s p50 / the fastest usable candidate's at ``shape`` (1.0 = the best)."""
        times = [c.p50_ms[shape] for c in self.candidates if c.usable and shape in c.p50_ms]
        mine = self.candidate(backend).p50_ms.get(shape)
        return mine / min(times) if mine and times else math.nan

    def hardware_efficiency(self, backend: str, shape: Shape) -> float:
        """Achieved FLOP/s (the eager model's FLOPs / p50) / the matmul's FLOP/s. Reduced-precision
        backends do the same work in fewer bits, so theirs can pass 1.0."""
        p50 = self.candidate(backend).p50_ms.get(shape)
        if not p50 or shape not in self.flops or not self.matmul_flops_per_s:
            return math.nan
        return self.flops[shape] / (p50 / 1e3) / self.matmul_flops_per_s

    def rows(self) -> list[dict[str, object]]:
        out = []
        for c in self.candidates:
            row: dict[str, object] = {
                "backend": c.backend, "status": c.status, "reason": c.reason[:80],
                "compile_s": round(c.compile_seconds, 1), "max_abs": c.max_abs, "cosine": c.cosine,
                "worst_vs_best": c.regret}
            for s in self.shapes:
                row[f"p50_us_{s.label}"] = c.p50_ms.get(s, math.nan) * 1e3
                row[f"speedup_{s.label}"] = self.speedup(c.backend, s) if c.usable else math.nan
                row[f"hw_efficiency_{s.label}"] = self.hardware_efficiency(c.backend, s)
            out.append(row)
        return out


def measure_compilers(model: TorchModel, workdir: Path, *, title: str, serving_batch: int = 8,
                      threads: int = 1, batch_sizes: Sequence[int] = BATCH_SIZES,
                      tokens: Sequence[int] = TEXT_TOKENS, repeats: int = 200,
                      budget_s: float = 2.0) -> CompilerTable:
    """Compile, parity-check and time every candidate as ``auto`` does; artifacts stay in
    ``workdir`` (the bench serves the chosen one)."""
    candidates = evaluate(model, AUTO_CANDIDATES, workdir, max_batch=max(batch_sizes),
                          batch_sizes=batch_sizes, tokens=tokens, threads=threads,
                          repeats=repeats, budget_s=budget_s)
    chosen = choose(candidates, serving_batch)
    return CompilerTable(title, candidates, chosen.backend, threads)


def _fmt(value: object, spec: str) -> str:
    """A figure, or a dash where it does not apply (skipped or rejected candidates)."""
    return "—" if isinstance(value, float) and math.isnan(value) else spec.format(value)


def markdown(table: CompilerTable) -> list[str]:
    shapes = table.shapes
    with_hw = bool(table.flops)
    header = ["backend", "status", *[f"p50 µs {s.label}" for s in shapes],
              *[f"vs eager {s.label}" for s in shapes],
              *([f"hw eff. {s.label}" for s in shapes] if with_hw else []),
              "worst vs best", "max abs", "compile s", "reason"]
    align = ["---"] * 2 + ["---:"] * (len(header) - 3) + ["---"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in table.rows():
        lines.append("| " + " | ".join([
            str(r["backend"]), f"**{r['status']}**" if r["status"] == "chosen" else str(r["status"]),
            *[_fmt(r[f"p50_us_{s.label}"], "{:,.0f}") for s in shapes],
            *[_fmt(r[f"speedup_{s.label}"], "{:.2f}x") for s in shapes],
            *([_fmt(r[f"hw_efficiency_{s.label}"], "{:.2f}") for s in shapes] if with_hw else []),
            _fmt(r["worst_vs_best"], "{:.2f}x"), _fmt(r["max_abs"], "{:.2g}"),
            str(r["compile_s"]), str(r["reason"])]) + " |")
    return lines
