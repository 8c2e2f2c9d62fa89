"""``auto``: compile every candidate this machine can run, check parity, measure, keep the best.

Each artifact is loaded with the handlers' own loader (``sg_loaders``), so what is measured and
parity-checked here is what a TorchServe worker runs. Candidates are timed at every shape (batch
size, and token count for text); the one kept is the one whose worst slowdown against the fastest
candidate at any shape is smallest, since a served batch ranges from 1 to the batch size. With
``max_artifacts`` above 1 (``choose_routes``), several may be kept, each owning the shapes it
serves best (``routing.py``), when that lowers the worst slowdown enough.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from servegate._resources import handler_module
from servegate.artifacts import CompiledArtifact
from servegate.choices import CLASS_TASKS
from servegate.compilers import get_compiler
from servegate.compilers.routing import Option, Routing, choose_routing
from servegate.compilers.shapes import TEXT_TOKENS, Shape, timing_shapes
from servegate.errors import BackendUnavailable, CompileError
from servegate.parity_limits import MAX_REDUCED_ACCURACY_DROP, parity_limits, precision_of
from servegate.sources.base import TorchModel


@dataclass
class Candidate:
    backend: str
    device: str = "cpu"  # where the artifact runs: cpu | cuda
    status: str = "pending"  # chosen | passed | rejected | skipped | failed
    reason: str = ""
    #: What was built: a ``CompiledArtifact`` (torch) or a SavedModel directory (TF).
    artifact: Any = None
    compile_seconds: float = 0.0
    p50_ms: dict[Shape, float] = field(default_factory=dict)
    rows_per_s: dict[Shape, float] = field(default_factory=dict)
    regret: float = float("nan")  # worst p50 / the fastest candidate's p50, over the shapes
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    cosine: float = float("nan")
    top1: float = float("nan")
    accuracy: float = float("nan")
    #: Shapes this candidate serves in a routed archive (empty: not routed, or not kept).
    owns: list[Shape] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.status in ("passed", "chosen")


def load_predictor(artifact: CompiledArtifact, threads: int):
    """The artifact loaded exactly as the worker loads it."""
    if artifact.model_file is not None and str(artifact.model_file.parent) not in sys.path:
        # A state_dict's class is imported by module name (sg_loaders), from the model file that a
        # worker finds in its model directory, which TorchServe puts on sys.path: the same here.
        sys.path.insert(0, str(artifact.model_file.parent))
    sg_loaders = handler_module("sg_loaders")
    spec = {"format": artifact.format, "artifact": artifact.path.name,
            "model_class": artifact.model_class, "model_kwargs": artifact.model_kwargs,
            "device": artifact.device, "dtype": artifact.dtype, "compile_mode": artifact.compile_mode,
            "built_for": artifact.built_for, "buckets": artifact.buckets,
            "fallback_artifact": artifact.fallback.name if artifact.fallback else None}
    if artifact.device == "cuda":  # the worker's GPU (TorchServe's gpu_id); device 0 here
        return sg_loaders.load_model(spec, str(artifact.path.parent), threads, gpu_id=0)
    return sg_loaders.load_model(spec, str(artifact.path.parent), threads)




def as_outputs(value: object) -> tuple[np.ndarray, ...]:
    """A predictor's answer as a tuple of output arrays (one array, or several)."""
    if isinstance(value, (tuple, list)):
        return tuple(np.asarray(v) for v in value)
    return (np.asarray(value),)


def flat_rows(outputs: tuple[np.ndarray, ...]) -> np.ndarray:
    """Every output of each row side by side, as float64 ``[rows, values]``."""
    return np.concatenate([o.reshape(len(o), -1).astype(np.float64) for o in outputs], axis=1)


def _parity(candidate: Candidate, reference: tuple[np.ndarray, ...], output: tuple[np.ndarray, ...],
            labels: np.ndarray | None, task: str = "classification") -> None:
    if len(output) != len(reference):
        candidate.status, candidate.reason = "rejected", (
            f"parity: {len(output)} outputs, the reference has {len(reference)}")
        return
    a, b = flat_rows(output), flat_rows(reference)
    diff = np.abs(a - b)
    candidate.max_abs = float(diff.max())
    candidate.max_rel = float((diff / (np.abs(b) + 1e-6)).max())
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    candidate.cosine = float(cos.min())
    classes = task in CLASS_TASKS
    if classes:
        candidate.top1 = float((output[0].argmax(-1) == reference[0].argmax(-1)).mean())
        if labels is not None:
            candidate.accuracy = float((output[0].argmax(-1) == labels).mean())
    precision = precision_of(candidate.backend)
    limits = parity_limits(precision, task)
    problems = []
    if candidate.max_abs > limits.max_abs:
        problems.append(f"max abs {candidate.max_abs:.3g} > {limits.max_abs:g}")
    if candidate.cosine < limits.min_cosine:
        problems.append(f"cosine {candidate.cosine:.5f} < {limits.min_cosine}")
    if classes and candidate.top1 < limits.min_top1:
        problems.append(f"top-1 agreement {candidate.top1:.4f} < {limits.min_top1}")
    if labels is not None and classes and precision != "fp32":
        reference_accuracy = float((reference[0].argmax(-1) == labels).mean())
        if candidate.accuracy < reference_accuracy - MAX_REDUCED_ACCURACY_DROP:
            problems.append(f"accuracy {candidate.accuracy:.4f} < reference "
                            f"{reference_accuracy:.4f} - {MAX_REDUCED_ACCURACY_DROP}")
    if problems:
        candidate.status, candidate.reason = "rejected", "parity: " + "; ".join(problems)


def time_call(predict, inputs: tuple[np.ndarray, ...], *, repeats: int,
              budget_s: float) -> float:
    """Median seconds of ``predict(*inputs)`` after warm-up: ``repeats`` runs, fewer (at least 5)
    when they would take longer than ``budget_s``. The number of runs is sized from a call made
    after the warm-ups: a warm-up may compile (a new shape recompiles a dynamic Inductor build,
    records a CUDA graph) and would leave the shape 5 runs."""
    for _ in range(2):
        predict(*inputs)  # warm-up
    start = time.perf_counter()
    predict(*inputs)
    first = time.perf_counter() - start
    times = [first]
    runs = max(5, min(repeats, int(budget_s / first) if first > 0 else repeats))
    for _ in range(runs - 1):
        start = time.perf_counter()
        predict(*inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


#: Builds a candidate's artifact and loads it as served: (the artifact, a predictor taking the
#: model's inputs, seconds spent compiling).
Prepare = Callable[[], tuple[Any, Callable[..., Any], float]]


def measure(candidate: Candidate, unavailable_reason: Callable[[], str | None], prepare: Prepare, *,
            inputs: tuple[np.ndarray, ...], reference: tuple[np.ndarray, ...],
            labels: np.ndarray | None, task: str,
            timing_inputs: Callable[[Shape], tuple[np.ndarray, ...]], shapes: Sequence[Shape],
            repeats: int, budget_s: float, should_stop: Callable[[], bool]) -> None:
    """The prologue every candidate of every framework goes through: skipped past the deadline or
    where ``unavailable_reason()`` says why; built and loaded (``prepare``); parity-checked
    against ``reference`` on ``inputs``; timed at each shape (``timing_inputs(shape)``). Its
    status and reason say how far it got; a failure of one candidate never stops the others."""
    if should_stop():
        candidate.status, candidate.reason = "skipped", "deadline reached before it started"
        return
    if reason := unavailable_reason():
        candidate.status, candidate.reason = "skipped", reason
        return
    try:
        candidate.artifact, predict, candidate.compile_seconds = prepare()
        _parity(candidate, reference, as_outputs(predict(*inputs)), labels, task)
        if candidate.status == "rejected":
            return
        for shape in shapes:
            if should_stop():
                candidate.reason = "deadline reached: not timed at every shape"
                break
            p50 = time_call(predict, timing_inputs(shape), repeats=repeats, budget_s=budget_s)
            candidate.p50_ms[shape] = p50 * 1e3
            candidate.rows_per_s[shape] = shape.batch / p50 if p50 else float("inf")
        candidate.status = "passed"
    except BackendUnavailable as exc:
        candidate.status, candidate.reason = "skipped", str(exc)
    except Exception as exc:  # any failure of one candidate must not stop the others
        candidate.status, candidate.reason = "failed", f"{type(exc).__name__}: {exc}"[:300]


def evaluate(model: TorchModel, backends: Sequence[str], workdir: Path, *, max_batch: int,
             batch_sizes: Sequence[int] = (1, 8), tokens: Sequence[int] = TEXT_TOKENS,
             threads: int = 1, repeats: int = 50, budget_s: float = 1.0,
             shapes: Sequence[Shape] | None = None,
             should_stop: Callable[[], bool] | None = None,
             on_done: Callable[[Candidate], None] | None = None) -> list[Candidate]:
    """Compile, parity-check and time each backend at every shape; nothing is chosen yet.

    Parity feeds every input of the module (one feature array, or token ids + attention mask made
    from real held-out sentences exactly as the worker makes them, padded to the longest).
    Timing runs at ``shapes`` (default ``timing_shapes``; ``repeats`` runs each, fewer past
    ``budget_s``). Once ``should_stop()`` is true (a deadline), the candidates not yet started are
    skipped and a candidate being timed keeps the shapes timed so far; ``on_done`` sees each
    candidate as it is finished."""
    shapes = list(shapes) if shapes is not None else timing_shapes(model, batch_sizes, tokens)
    stop = should_stop or (lambda: False)
    rows = min(64, max_batch)  # artifacts accept batches up to max_batch
    x = model.eval_x[:rows] if model.eval_x is not None else model.example_batch(rows)
    labels = model.eval_y[:rows] if model.eval_y is not None else None
    inputs = model.model_inputs(x)
    reference = model.forward_all(*inputs)
    results = []
    for name in backends:
        compiler = get_compiler(name)
        candidate = Candidate(name, device=getattr(compiler, "device", "cpu"))
        results.append(candidate)
        _evaluate_one(candidate, compiler, model, workdir, max_batch=max_batch, threads=threads,
                      inputs=inputs, reference=reference, labels=labels, shapes=shapes,
                      repeats=repeats, budget_s=budget_s, should_stop=stop)
        if on_done is not None:
            on_done(candidate)
    return results


def _evaluate_one(candidate: Candidate, compiler, model: TorchModel, workdir: Path, *,
                  max_batch: int, threads: int, inputs: tuple[np.ndarray, ...],
                  reference: tuple[np.ndarray, ...], labels: np.ndarray | None,
                  shapes: Sequence[Shape], repeats: int, budget_s: float,
                  should_stop: Callable[[], bool]) -> None:
    """One torch candidate: compiled, loaded with the handlers' loader, then ``measure``d."""

    def prepare() -> tuple[CompiledArtifact, Callable[..., Any], float]:
        artifact = compiler.compile(model, workdir / candidate.backend, max_batch=max_batch)
        start = time.perf_counter()
        predict = load_predictor(artifact, threads)
        seconds = artifact.compile_seconds
        if artifact.format == "inductor":  # compiled (and autotuned) in the worker, on load
            predict(*inputs)
            seconds += time.perf_counter() - start
        return artifact, predict, seconds

    measure(candidate, compiler.unavailable_reason, prepare, inputs=inputs, reference=reference,
            labels=labels, task=model.task,
            timing_inputs=lambda shape: model.inputs_at(shape.batch, shape.tokens),
            shapes=shapes, repeats=repeats, budget_s=budget_s, should_stop=should_stop)


def choose(candidates: list[Candidate], batch_size: int) -> Candidate:
    """The passing candidate with the smallest worst-case slowdown against the fastest one at any
    timed shape (``regret``, set on every passing candidate); ties go to the faster one at the
    serving batch size, then to the earlier, simpler one (``choose_routes`` with one artifact)."""
    routing = choose_routes(candidates, batch_size, max_artifacts=1)
    return next(c for c in candidates if c.backend == routing.members[0] and c.status == "chosen")


def artifact_bytes(artifact: Any) -> int:
    """Bytes a candidate's artifact adds to an archive (its file or directory, and fallback)."""
    total = 0
    for path in (getattr(artifact, "path", None), getattr(artifact, "fallback", None)):
        if isinstance(path, Path) and path.is_file():
            total += path.stat().st_size
        elif isinstance(path, Path) and path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def choose_routes(candidates: list[Candidate], batch_size: int, *, max_artifacts: int = 1,
                  sizes: dict[str, int] | None = None) -> Routing:
    """``routing.choose_routing`` over the passing candidates: sets ``regret`` on each of them,
    marks the kept ones ``chosen`` and, when more than one is kept, the shapes each ``owns``.
    ``sizes``: artifact bytes by backend (a tie-break). Raises ``CompileError`` when none
    passed."""
    usable = [c for c in candidates if c.usable and c.p50_ms]
    if not usable:
        reasons = "; ".join(f"{c.backend}: {c.status} {c.reason}" for c in candidates)
        raise CompileError(f"no compiler backend passed: {reasons}")
    shapes = set.intersection(*(set(c.p50_ms) for c in usable))
    fastest = {s: min(c.p50_ms[s] for c in usable) for s in shapes}
    for c in usable:
        c.regret = max(c.p50_ms[s] / fastest[s] for s in shapes) if shapes else 1.0
        c.owns = []
        if c.status == "chosen":
            c.status = "passed"
    options = [Option(c.backend, {s: c.p50_ms[s] for s in shapes}, (sizes or {}).get(c.backend, 0),
                      c.compile_seconds, c.device) for c in usable]
    routing = choose_routing(options, max_artifacts=max_artifacts, serving_batch=batch_size)
    for c in usable:
        if c.backend in routing.members:
            c.status = "chosen"
            c.owns = routing.owned(c.backend) if len(routing.members) > 1 else []
    return routing


def check_owned_shapes(candidate: Candidate, load: Callable[[], Callable[..., Any]],
                       model: TorchModel) -> bool:
    """Parity of a routed candidate at every shape it ``owns`` (held-out rows at that batch and
    token count, against the model's own outputs), with the limits of its precision: ``auto``'s
    parity ran at one batch, and an artifact may be wrong only at its own shapes (a CUDA graph
    of batch 1, a TensorRT profile). A failure rejects the candidate, its reason naming the
    artifact and the shape; a candidate owning nothing passes as is."""
    if not candidate.owns:
        return True
    try:
        predict = load()
        for shape in candidate.owns:
            inputs = model.inputs_at(shape.batch, shape.tokens)
            probe = Candidate(candidate.backend, device=candidate.device)
            _parity(probe, model.forward_all(*inputs), as_outputs(predict(*inputs)), None, model.task)
            if probe.status == "rejected":
                candidate.status, candidate.reason = "rejected", (
                    f"routed artifact {candidate.backend} at {shape.label}: {probe.reason}")
                break
    except Exception as exc:  # a load or run failure rejects this artifact, not the run
        candidate.status, candidate.reason = "failed", (
            f"routed artifact {candidate.backend}: {type(exc).__name__}: {exc}"[:300])
    if candidate.usable:
        return True
    candidate.owns = []
    return False


def parse_compiler_option(option: str) -> list[str] | None:
    """``auto`` -> every candidate this host can run (``auto_candidates``); ``a,b`` -> those; a
    single name -> None (no selection)."""
    from servegate.compilers import auto_candidates

    if option == "auto":
        return auto_candidates()
    names = [n.strip() for n in option.split(",") if n.strip()]
    for name in names:
        get_compiler(name)  # validates
    return names if len(names) > 1 else None


def timed_shapes(candidates: Sequence[Candidate]) -> list[Shape]:
    """Every shape any candidate was timed at, smallest first."""
    return sorted({shape for c in candidates for shape in c.p50_ms})


def candidates_table(candidates: list[Candidate]):  # -> rich Table
    """The candidates as one rich table (printed by ``servegate compilers`` and the pipeline)."""
    from rich.table import Table

    shapes = timed_shapes(candidates)
    table = Table("backend", "device", "status", *[f"p50 ms {s.label}" for s in shapes], "worst vs best",
                  "max abs", "cosine", "top-1", "compile s", "reason",
                  title="compiler candidates (in process)")
    def cell(value: object, spec: str) -> str:
        return "—" if isinstance(value, float) and value != value else spec.format(value)

    for r in table_rows(candidates):
        table.add_row(str(r["backend"]), str(r["device"]), str(r["status"]),
                      *[cell(r[f"p50_ms_{s.label}"], "{:.4f}") for s in shapes],
                      cell(r["regret"], "{:.2f}x"), cell(r["max_abs"], "{:.2g}"),
                      cell(r["cosine"], "{:.6f}"), cell(r["top1"], "{:.4f}"),
                      str(r["compile_s"]), str(r["reason"])[:80])
    return table


def table_rows(candidates: list[Candidate]) -> list[dict[str, object]]:
    """One flat dict per candidate: figures, the shapes it ``owns`` in a routed archive, and
    ``p50_ms_<shape>`` / ``rows_per_s_<shape>``."""
    rows = []
    for c in candidates:
        row: dict[str, object] = {"backend": c.backend, "device": c.device, "status": c.status,
                                  "reason": c.reason,
                                  "compile_s": round(c.compile_seconds, 2), "max_abs": c.max_abs,
                                  "cosine": c.cosine, "top1": c.top1, "accuracy": c.accuracy,
                                  "regret": c.regret,
                                  "owns": ",".join(shape.label for shape in c.owns)}
        for shape in timed_shapes(candidates):
            row[f"p50_ms_{shape.label}"] = c.p50_ms.get(shape, float("nan"))
            row[f"rows_per_s_{shape.label}"] = c.rows_per_s.get(shape, float("nan"))
        rows.append(row)
    return rows


def routing_rows(candidates: list[Candidate]) -> list[dict[str, object]]:
    """A routed archive's table: one row per shape, smallest first: the artifact that owns it,
    its p50 there, the fastest candidate there and the slowdown against it (empty when one
    artifact serves every shape)."""
    usable = [c for c in candidates if c.usable]
    rows = []
    for shape in timed_shapes([c for c in candidates if c.owns]):
        owner = next((c for c in candidates if shape in c.owns), None)
        timed = [c for c in usable if shape in c.p50_ms]
        if owner is None or not timed:
            continue
        fastest = min(timed, key=lambda c: c.p50_ms[shape])
        rows.append({"shape": shape.label, "artifact": owner.backend,
                     "p50_ms": owner.p50_ms[shape], "fastest": fastest.backend,
                     "fastest_p50_ms": fastest.p50_ms[shape],
                     "slowdown": owner.p50_ms[shape] / fastest.p50_ms[shape]
                     if fastest.p50_ms[shape] else 1.0})
    return rows


def routing_table(candidates: list[Candidate]):  # -> rich Table | None
    """The routing table as a rich table (printed by the pipeline), or None when not routed."""
    from rich.table import Table

    rows = routing_rows(candidates)
    if not rows:
        return None
    table = Table("shape", "artifact", "p50 ms", "fastest", "fastest p50 ms", "slowdown",
                  title="routing by shape (each padded chunk goes to its shape's artifact)")
    for r in rows:
        table.add_row(str(r["shape"]), str(r["artifact"]), f"{r['p50_ms']:.4f}", str(r["fastest"]),
                      f"{r['fastest_p50_ms']:.4f}", f"{r['slowdown']:.2f}x")
    return table
