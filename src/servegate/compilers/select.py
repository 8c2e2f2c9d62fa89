"""``auto``: compile every candidate this machine can run, check parity, measure, keep the fastest.

Each artifact is loaded with the handlers' own loader (``sg_loaders``), so what is measured and
parity-checked here is what a TorchServe worker runs.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from servegate._resources import handlers_dir
from servegate.compilers import get_compiler
from servegate.compilers.base import CompiledArtifact
from servegate.errors import BackendUnavailable, CompileError
from servegate.sources.base import TorchModel


@dataclass(frozen=True)
class ParityLimits:
    """Thresholds per precision: FP32 tight; INT8/FP16 looser, then gated on task accuracy."""

    max_abs: float
    min_cosine: float
    min_top1: float


PARITY_LIMITS = {
    "fp32": ParityLimits(max_abs=1e-3, min_cosine=0.9999, min_top1=1.0),
    "reduced": ParityLimits(max_abs=float("inf"), min_cosine=0.99, min_top1=0.98),
}

#: Embeddings have no classes: cosine per row is the check (top-1 of a vector means nothing).
EMBEDDING_PARITY_LIMITS = {
    "fp32": ParityLimits(max_abs=1e-3, min_cosine=0.999, min_top1=0.0),
    "reduced": ParityLimits(max_abs=float("inf"), min_cosine=0.99, min_top1=0.0),
}


#: Reduced-precision candidates must keep task accuracy within this of the FP32 reference.
MAX_REDUCED_ACCURACY_DROP = 0.01


def precision_of(backend: str) -> str:
    return "reduced" if backend.endswith(("int8", "fp16")) else "fp32"


def parity_limits(backend: str, task: str = "tensor-classification") -> ParityLimits:
    table = EMBEDDING_PARITY_LIMITS if task == "embedding" else PARITY_LIMITS
    return table[precision_of(backend)]


@dataclass
class Candidate:
    backend: str
    status: str = "pending"  # chosen | passed | rejected | skipped | failed
    reason: str = ""
    artifact: CompiledArtifact | None = None
    compile_seconds: float = 0.0
    p50_ms: dict[int, float] = field(default_factory=dict)
    rows_per_s: dict[int, float] = field(default_factory=dict)
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    cosine: float = float("nan")
    top1: float = float("nan")
    accuracy: float = float("nan")

    @property
    def usable(self) -> bool:
        return self.status in ("passed", "chosen")


def load_predictor(artifact: CompiledArtifact, threads: int):
    """The artifact loaded exactly as the worker loads it."""
    path = str(handlers_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    if artifact.model_file is not None and str(artifact.model_file.parent) not in sys.path:
        sys.path.insert(0, str(artifact.model_file.parent))
    sg_loaders = importlib.import_module("sg_loaders")
    spec = {"format": artifact.format, "artifact": artifact.path.name,
            "model_class": artifact.model_class, "model_kwargs": artifact.model_kwargs}
    return sg_loaders.load(spec, str(artifact.path.parent), threads)


def _parity(candidate: Candidate, reference: np.ndarray, output: np.ndarray,
            labels: np.ndarray | None, task: str = "tensor-classification") -> None:
    diff = np.abs(output.astype(np.float64) - reference)
    candidate.max_abs = float(diff.max())
    candidate.max_rel = float((diff / (np.abs(reference) + 1e-6)).max())
    a, b = output.reshape(len(output), -1).astype(np.float64), reference.reshape(len(reference), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    candidate.cosine = float(cos.min())
    if task != "embedding":
        candidate.top1 = float((output.argmax(-1) == reference.argmax(-1)).mean())
    if labels is not None:
        candidate.accuracy = float((output.argmax(-1) == labels).mean())
    limits = parity_limits(candidate.backend, task)
    problems = []
    if candidate.max_abs > limits.max_abs:
        problems.append(f"max abs {candidate.max_abs:.3g} > {limits.max_abs:g}")
    if candidate.cosine < limits.min_cosine:
        problems.append(f"cosine {candidate.cosine:.5f} < {limits.min_cosine}")
    if task != "embedding" and candidate.top1 < limits.min_top1:
        problems.append(f"top-1 agreement {candidate.top1:.4f} < {limits.min_top1}")
    if labels is not None and task != "embedding" and precision_of(candidate.backend) != "fp32":
        reference_accuracy = float((reference.argmax(-1) == labels).mean())
        if candidate.accuracy < reference_accuracy - MAX_REDUCED_ACCURACY_DROP:
            problems.append(f"accuracy {candidate.accuracy:.4f} < reference "
                            f"{reference_accuracy:.4f} - {MAX_REDUCED_ACCURACY_DROP}")
    if problems:
        candidate.status, candidate.reason = "rejected", "parity: " + "; ".join(problems)


def _batch_inputs(model: TorchModel, x: np.ndarray, batch: int) -> tuple[np.ndarray, ...]:
    """The module's inputs for ``batch`` rows of ``x`` (repeated if needed)."""
    rows = np.resize(x, (batch, *x.shape[1:]))
    if model.is_text:
        return model.model_inputs(rows)
    return (np.ascontiguousarray(rows.astype(np.float32)),)


def _benchmark(candidate: Candidate, predict, model: TorchModel, x: np.ndarray,
               batch_sizes: Sequence[int], repeats: int) -> None:
    for batch in batch_sizes:
        inputs = _batch_inputs(model, x, batch)
        for _ in range(3):
            predict(*inputs)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predict(*inputs)
            times.append(time.perf_counter() - start)
        p50 = statistics.median(times)
        candidate.p50_ms[batch] = p50 * 1e3
        candidate.rows_per_s[batch] = batch / p50 if p50 else float("inf")


def evaluate(model: TorchModel, backends: Sequence[str], workdir: Path, *, max_batch: int,
             batch_sizes: Sequence[int] = (1, 8), threads: int = 1, repeats: int = 50) -> list[Candidate]:
    """Compile, parity-check and time each backend; nothing is chosen yet.

    Every input of the module is fed (one feature array, or token ids + attention mask for text
    models, made from real held-out sentences exactly as the worker makes them)."""
    rows = min(64, max_batch)  # artifacts accept batches up to max_batch
    x = model.eval_x[:rows] if model.eval_x is not None else model.example_batch(rows)
    labels = model.eval_y[:rows] if model.eval_y is not None else None
    inputs = model.model_inputs(x)
    reference = model.forward(*inputs).astype(np.float64)
    results = []
    for name in backends:
        candidate = Candidate(name)
        results.append(candidate)
        compiler = get_compiler(name)
        if reason := compiler.unavailable_reason():
            candidate.status, candidate.reason = "skipped", reason
            continue
        try:
            artifact = compiler.compile(model, workdir / name, max_batch=max_batch)
            candidate.artifact, candidate.compile_seconds = artifact, artifact.compile_seconds
            predict = load_predictor(artifact, threads)
            _parity(candidate, reference, np.asarray(predict(*inputs)), labels, model.task)
            if candidate.status == "rejected":
                continue
            _benchmark(candidate, predict, model, x, batch_sizes, repeats)
            candidate.status = "passed"
        except BackendUnavailable as exc:
            candidate.status, candidate.reason = "skipped", str(exc)
        except Exception as exc:  # any failure of one candidate must not stop the others
            candidate.status, candidate.reason = "failed", f"{type(exc).__name__}: {exc}"[:300]
    return results


def choose(candidates: list[Candidate], batch_size: int) -> Candidate:
    """The fastest passing candidate at the serving batch size (ties: the earlier, simpler one)."""
    usable = [c for c in candidates if c.usable and batch_size in c.rows_per_s]
    if not usable:
        reasons = "; ".join(f"{c.backend}: {c.status} {c.reason}" for c in candidates)
        raise CompileError(f"no compiler backend passed: {reasons}")
    best = max(usable, key=lambda c: c.rows_per_s[batch_size])
    best.status = "chosen"
    return best


def parse_compiler_option(option: str) -> list[str] | None:
    """``auto`` -> every candidate; ``a,b`` -> those; a single name -> None (no selection)."""
    from servegate.compilers import AUTO_CANDIDATES

    if option == "auto":
        return list(AUTO_CANDIDATES)
    names = [n.strip() for n in option.split(",") if n.strip()]
    for name in names:
        get_compiler(name)  # validates
    return names if len(names) > 1 else None


def candidates_table(candidates: list[Candidate], batch_sizes: Sequence[int]):  # -> rich Table
    """The candidates as one rich table (printed by ``servegate compilers`` and the pipeline)."""
    from rich.table import Table

    table = Table("backend", "status", *[f"p50 ms b{b}" for b in batch_sizes],
                  f"rows/s b{batch_sizes[-1]}", "max abs", "cosine", "top-1", "compile s", "reason",
                  title="compiler candidates (in process)")
    for r in table_rows(candidates, batch_sizes):
        table.add_row(str(r["backend"]), str(r["status"]),
                      *[f"{r[f'p50_ms_b{b}']:.4f}" for b in batch_sizes],
                      f"{r[f'rows_per_s_b{batch_sizes[-1]}']:.0f}", f"{r['max_abs']:.2g}",
                      f"{r['cosine']:.6f}", f"{r['top1']:.4f}", str(r["compile_s"]),
                      str(r["reason"])[:80])
    return table


def table_rows(candidates: list[Candidate], batch_sizes: Sequence[int]) -> list[dict[str, object]]:
    rows = []
    for c in candidates:
        row: dict[str, object] = {"backend": c.backend, "status": c.status, "reason": c.reason,
                                  "compile_s": round(c.compile_seconds, 2), "max_abs": c.max_abs,
                                  "cosine": c.cosine, "top1": c.top1, "accuracy": c.accuracy}
        for b in batch_sizes:
            row[f"p50_ms_b{b}"] = c.p50_ms.get(b, float("nan"))
            row[f"rows_per_s_b{b}"] = c.rows_per_s.get(b, float("nan"))
        rows.append(row)
    return rows
