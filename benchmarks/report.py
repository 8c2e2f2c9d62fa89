"""The bench's figures as targets (ratio, target, met) and as one Markdown page."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.compilers import CompilerTable
from benchmarks.load import LOAD_BOUND_CORES, LoadResult
from benchmarks.server_cpu import ServerCpu
from servegate.compilers.shapes import Shape


@dataclass(frozen=True)
class Row:
    """One measured load row; ``rate`` is the fixed total req/s asked for (None: saturation)."""

    label: str
    family: str
    model: str | None
    rate: float | None
    result: LoadResult
    server: ServerCpu
    bad_every: int | None = None  # 1 request in this many is a bad body; ``result``: the good ones
    bad_not_4xx: int = 0  # bad bodies answered with anything but their own 4xx
    repeat: int = 0  # a headline row measured again (1, 2, ...) beside its pair

    def server_us_per_request(self) -> tuple[float, float]:
        """(frontend, workers) CPU µs per request."""
        n = self.result.requests or 1
        return self.server.frontend_s / n * 1e6, self.server.workers_s / n * 1e6

    def as_dict(self) -> dict[str, Any]:
        frontend, workers = self.server_us_per_request()
        return {"label": self.label, "family": self.family, "model": self.model,
                "rate": self.rate, "repeat": self.repeat, **self.result.as_dict(), **asdict(self.server),
                "frontend_cpu_us_per_request": frontend, "worker_cpu_us_per_request": workers}


@dataclass(frozen=True)
class Target:
    """One figure of the issue's table: its value, the target it is held to, and the detail."""

    model: str
    name: str
    value: float
    unit: str  # "x" (a ratio), "" (a fraction) or "#" (a count)
    target: str
    met: bool | None  # None: reported, no target
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cells(self) -> list[str]:
        spec = {"x": "{:.2f}x", "#": "{:,.0f}"}.get(self.unit, "{:.3g}")
        value = "—" if math.isnan(self.value) else spec.format(self.value)
        verdict = {True: "met", False: "**missed**", None: ""}[self.met]
        return [self.model, self.name, value, self.target, verdict, self.detail]


def _row(rows: Sequence[Row], model: str, *, at_rate: bool = False, repeat: int = 0) -> Row:
    return next(r for r in rows if r.model == model and (r.rate is not None) == at_rate
                and r.bad_every is None and r.repeat == repeat)


def _pairs(rows: Sequence[Row], ours: str, theirs: str) -> list[tuple[Row, Row]]:
    """(ours, theirs) measured next to each other: the first pair, then each repeat."""
    repeats = sorted({r.repeat for r in rows if r.model == ours})
    return [(_row(rows, ours, repeat=i), _row(rows, theirs, repeat=i)) for i in repeats
            if any(r.model == theirs and r.repeat == i for r in rows)]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def _headline(rows: Sequence[Row], table: CompilerTable) -> Target:
    """Ours (auto, batch 8) / the minimal handler: the median over the pairs of rows measured
    side by side (the load of a shared box drifts between rows; a pair shares it)."""
    pairs = _pairs(rows, "digits_b8_auto", "digits_minimal")
    ratios = [_ratio(a.result.rps, m.result.rps) for a, m in pairs]
    value = _median(ratios)
    p99_ours = _median([a.result.p99_ms for a, _ in pairs])
    p99_min = _median([m.result.p99_ms for _, m in pairs])
    detail = "; ".join(f"{a.result.rps:,.0f} vs {m.result.rps:,.0f} req/s" for a, m in pairs)
    return Target("digits", f"our handler and configuration ({table.chosen}, batch 8) / minimal",
                  value, "x", "≥ 3x, p99 ≤", value >= 3 and p99_ours <= p99_min,
                  (f"median of {len(pairs)} pairs ({', '.join(f'{r:.2f}x' for r in ratios)}): "
                   if len(pairs) > 1 else "") + f"{detail}; p99 {p99_ours:.0f} vs {p99_min:.0f} ms")


def _robustness(rows: Sequence[Row]) -> list[Target]:
    """Good requests beside bad bodies (1 in N) against the same model's clean row."""
    mixed = next((r for r in rows if r.bad_every), None)
    if mixed is None or mixed.model is None:
        return []
    clean, good = _row(rows, mixed.model).result, mixed.result
    label = f"1 in {mixed.bad_every} bodies bad"
    return [
        Target(mixed.family, f"{label}: good req/s / clean req/s", _ratio(good.rps, clean.rps), "x",
               "", None, f"{good.rps:,.0f} good vs {clean.rps:,.0f} clean req/s "
                         f"({mixed.label} vs {_row(rows, mixed.model).label})"),
        Target(mixed.family, f"{label}: good p99 / clean p99", _ratio(good.p99_ms, clean.p99_ms),
               "x", "", None, f"p99 {good.p99_ms:.0f} vs {clean.p99_ms:.0f} ms; p50 "
                              f"{good.p50_ms:.0f} vs {clean.p50_ms:.0f} ms"),
        Target(mixed.family, f"{label}: good requests that failed", float(good.failures), "#", "0",
               good.failures == 0, f"of {good.requests:,} good requests; bad bodies not answered "
                                   f"with their own 4xx: {mixed.bad_not_4xx}"),
    ]


def _ratio(n: float, d: float) -> float:
    return n / d if d else math.nan


def _served(rows: Sequence[Row], family: str, batched: str, single: str, auto: str,
            table: CompilerTable, shape: Shape) -> list[Target]:
    """Serving efficiency of ``auto`` (served / in process at ``shape``) and the batching gain
    (``batched`` / ``single``: the same artifact at batch 8 and batch 1)."""
    b8, b1 = _row(rows, batched), _row(rows, single)
    b1_rate = _row(rows, b1.model or "", at_rate=True)
    b8_rate = _row(rows, b8.model or "", at_rate=True)
    served = _row(rows, auto)
    rates = table.candidate(table.chosen).rows_per_s
    in_process = rates[shape]
    ceiling = _ratio(in_process, rates.get(Shape(1, shape.tokens), math.nan))
    gain = _ratio(b8.result.rps, b1.result.rps)
    p95 = _ratio(b8_rate.result.p95_ms, b1_rate.result.p95_ms)
    return [
        Target(family, f"serving efficiency ({table.chosen}, batch 8)",
               _ratio(served.result.rps, in_process), "", "≥ 0.85" if family == "MiniLM" else "",
               served.result.rps / in_process >= 0.85 if family == "MiniLM" else None,
               f"served {served.result.rps:,.0f} req/s vs in process {in_process:,.0f} rows/s at "
               f"{shape.label}, {table.threads} thread(s)"),
        Target(family, "batching gain (batch 8 / batch 1)", gain, "x", "≥ 2x", gain >= 2,
               f"{b8.result.rps:,.0f} vs {b1.result.rps:,.0f} req/s; p95 {b8.result.p95_ms:.0f} vs "
               f"{b1.result.p95_ms:.0f} ms; the model alone gains {ceiling:.2f}x in process"),
        Target(family, "batching p95 at 70% of batch 1's peak (batch 8 / batch 1)", p95, "x",
               "≤ 1.2x", p95 <= 1.2,
               f"{b1_rate.rate:,.0f} req/s asked; p95 {b8_rate.result.p95_ms:.0f} vs "
               f"{b1_rate.result.p95_ms:.0f} ms; got {b8_rate.result.rps:,.0f} / "
               f"{b1_rate.result.rps:,.0f} req/s"),
    ]


def _tuned(rows: Sequence[Row], family: str, default: str, tuned: str,
           kept: str | None = None) -> list[Target]:
    """``servegate tune``'s winner against the default batching, on the same artifact: saturated
    throughput at equal or better p95, and p95 at the same fixed rate (issue 22). ``kept``: why
    tune kept the default (its search found nothing better when confirmed), so the tuned
    configuration is the default, 1x by construction. Nothing when tune did not run."""
    if not any(r.model == tuned for r in rows):
        if kept is None:
            return []
        why = f"tune kept the default: {kept}"
        return [Target(family, "tuned / default throughput (saturated)", 1.0, "x",
                       "≥ 1x at p95 ≤ default's", True, why),
                Target(family, "tuned / default p95 at 70% of batch 1's peak", 1.0, "x", "≤ 1x",
                       True, "the same configuration")]
    base, best = _row(rows, default), _row(rows, tuned)
    base_rate, best_rate = _row(rows, default, at_rate=True), _row(rows, tuned, at_rate=True)
    gain = _ratio(best.result.rps, base.result.rps)
    p95 = _ratio(best_rate.result.p95_ms, base_rate.result.p95_ms)
    return [
        Target(family, "tuned / default throughput (saturated)", gain, "x",
               "≥ 1x at p95 ≤ default's", gain >= 1 and best.result.p95_ms <= base.result.p95_ms,
               f"{best.label}: {best.result.rps:,.0f} vs {base.result.rps:,.0f} req/s; p95 "
               f"{best.result.p95_ms:.0f} vs {base.result.p95_ms:.0f} ms"),
        Target(family, "tuned / default p95 at 70% of batch 1's peak", p95, "x", "≤ 1x", p95 <= 1,
               f"{best_rate.rate:,.0f} req/s asked; p95 {best_rate.result.p95_ms:.0f} vs "
               f"{base_rate.result.p95_ms:.0f} ms"),
    ]


def _compilers(family: str, table: CompilerTable) -> list[Target]:
    chosen = table.chosen
    worst = max(table.versus_best(chosen, s) for s in table.shapes)
    per_shape = ", ".join(f"{s.label} {table.speedup(chosen, s):.2f}x" for s in table.shapes)
    found = [Target(family, f"auto's pick ({chosen}) vs the best backend, worst shape", worst, "x",
                    "≤ 1.05x", worst <= 1.05,
                    ", ".join(f"{s.label} {table.versus_best(chosen, s):.2f}x" for s in table.shapes))]
    first = table.shapes[0]
    speedup = table.speedup(chosen, first)
    found.append(Target(family, f"compiler speed-up ({chosen} / eager, {first.label})", speedup, "x",
                        "≥ 1.8x" if family == "MiniLM" else "",
                        speedup >= 1.8 if family == "MiniLM" else None, per_shape))
    return found


def _hardware(table: CompilerTable, rows: Sequence[Row], text_tokens: int) -> list[Target]:
    if not table.flops:
        return []
    peak = table.matmul_flops_per_s
    found = []
    for shape, goal in ((Shape(1, 32), 0.55), (Shape(8, 128), 0.85)):
        if shape not in table.flops:
            continue
        for backend in dict.fromkeys((table.chosen, "eager", "onnx")):
            value = table.hardware_efficiency(backend, shape)
            p50 = table.candidate(backend).p50_ms.get(shape, math.nan)
            gflops = table.flops[shape] / 1e9
            found.append(Target(
                "MiniLM", f"hardware efficiency, {backend}, {shape.label}", value, "",
                f"≥ {goal}", value >= goal if backend == table.chosen else None,
                f"{gflops:.2f} GFLOP in {p50:.1f} ms = {gflops / p50 * 1e3:.0f} GFLOP/s vs matmul "
                f"{peak / 1e9:.0f} GFLOP/s ({table.threads} thread(s))"
                + ("; int8 work counted as its float32 FLOPs" if backend.endswith("int8") else "")))
    served = _row(rows, "minilm_b8_auto")
    per_request = table.flops[Shape(8, text_tokens)] / 8
    value = served.result.rps * per_request / peak
    found.append(Target("MiniLM", f"hardware efficiency, served ({table.chosen}, b8_t{text_tokens})",
                        value, "", "", None,
                        f"{served.result.rps:,.0f} req/s × {per_request / 1e9:.2f} GFLOP"))
    return found


def targets(rows: Sequence[Row], digits: CompilerTable | None, minilm: CompilerTable | None,
            text_tokens: int, *, images: CompilerTable | None = None,
            tune_kept: Mapping[str, str] | None = None) -> list[Target]:
    """Every ratio the issue asks for, in one list (the bench's headline table); a family that
    was not measured (None) has no targets. ``tune_kept``: family -> why tune kept its default."""
    kept = dict(tune_kept or {})
    found: list[Target] = []
    if digits is not None:
        minimal, eager = _row(rows, "digits_minimal"), _row(rows, "digits_b8")
        found += [
            _headline(rows, digits),
            Target("digits", "our handler, eager, batch 8 / minimal",
                   _ratio(eager.result.rps, minimal.result.rps), "x", "", None,
                   f"{eager.result.rps:,.0f} req/s; p99 {eager.result.p99_ms:.0f} ms"),
            *_server_cpu(_pairs(rows, "digits_b8_auto", "digits_minimal")),
            *_served(rows, "digits", "digits_b8", "digits_b1", "digits_b8_auto", digits, Shape(8)),
            *_compilers("digits", digits),
            *_tuned(rows, "digits", "digits_b8_auto", "digits_tuned", kept.get("digits")),
            *_robustness(rows),
        ]
    if images is not None:
        found += [
            *_served(rows, "images", "photos_b8_auto", "photos_b1_auto", "photos_b8_auto", images,
                     Shape(8)),
            *_compilers("images", images),
        ]
    if minilm is not None:
        found += [
            *_served(rows, "MiniLM", "minilm_b8_auto", "minilm_b1_auto", "minilm_b8_auto", minilm,
                     Shape(8, text_tokens)),
            *_compilers("MiniLM", minilm),
            *_tuned(rows, "MiniLM", "minilm_b8_auto", "minilm_tuned", kept.get("MiniLM")),
            *_hardware(minilm, rows, text_tokens),
        ]
    pings = [r for r in rows if r.model is None]
    bound = [f"{r.family} {r.label}" for r in rows if r.model is not None and r.result.load_bound]
    return [
        *found,
        *(Target("Locust", f"load generator ceiling on /ping, {p.result.processes} "
                 f"process{'es' if p.result.processes > 1 else ''} (req/s)", p.result.rps, "#", "",
                 None, f"{p.result.cpu_per_request_s * 1e6:.0f} µs CPU per request, "
                 f"{p.result.load_cores:.2f} cores" + ("; load-bound" if p.result.load_bound else ""))
          for p in pings),
        Target("Locust", "model rows that were load-bound", float(len(bound)), "#", "0",
               not bound, "; ".join(bound) or f"none used > {LOAD_BOUND_CORES} of a core"),
    ]


def _server_cpu(pairs: Sequence[tuple[Row, Row]]) -> list[Target]:
    """Server CPU per request, ours / the minimal handler's: the frontend's and the worker's
    (medians over the pairs)."""
    ours = [a.server_us_per_request() for a, _ in pairs]
    theirs = [m.server_us_per_request() for _, m in pairs]
    ours_fe, ours_wk = _median([f for f, _ in ours]), _median([w for _, w in ours])
    min_fe, min_wk = _median([f for f, _ in theirs]), _median([w for _, w in theirs])
    return [
        Target("digits", f"{part} CPU per request, ours (auto, batch 8) / minimal",
               _ratio(mine, theirs), "", "", None, f"{mine:.0f} vs {theirs:.0f} µs")
        for part, mine, theirs in (("frontend", ours_fe, min_fe), ("worker", ours_wk, min_wk))
    ]


COLUMNS = ("model", "configuration", "req/s", "asked req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
           "frontend µs/req", "worker µs/req", "Locust µs/req", "Locust cores", "Locust processes",
           "note")


def _cells(row: Row) -> list[str]:
    r = row.result
    frontend, workers = row.server_us_per_request()
    return [row.family, row.label, f"{r.rps:,.0f}", "" if row.rate is None else f"{row.rate:,.0f}",
            f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}", f"{r.p99_ms:.0f}", f"{r.error_ratio:.2%}",
            f"{frontend:.0f}", f"{workers:.0f}", f"{r.cpu_per_request_s * 1e6:.0f}",
            f"{r.load_cores:.2f}", str(r.processes),
            "; ".join(filter(None, ["load-bound" if r.load_bound else "",
                                    f"good requests only; 1 in {row.bad_every} bad"
                                    if row.bad_every else ""]))]


def _table(header: Sequence[str], lines: Sequence[Sequence[str]], left: Sequence[int]) -> list[str]:
    align = ["---" if i in left else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(cells) + " |" for cells in lines)]


def markdown(report: dict[str, Any], found: Sequence[Target], rows: Sequence[Row],
             tables: Sequence[CompilerTable],
             compiler_markdown: Callable[[CompilerTable], list[str]]) -> str:
    m, s = report["machine"], report["settings"]
    load = report["load_average_1min"]
    lines = [
        "# servegate bench", "",
        f"- date: {report['date']}",
        f"- machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- load: Locust FastHttpUser, {s['users']} users, {s['seconds']} s per row after "
        f"{s['warmup_seconds']} s of warm-up; one TorchServe, 1 worker per model, "
        f"{s['worker_threads']} thread(s) per worker; MiniLM requests are held-out texts of "
        f"exactly {s['text_tokens']} tokens",
        f"- 1-min load average before/after: {load['before']:.2f}/{load['after']:.2f}", "",
        "## Targets", "",
        *_table(("model", "figure", "value", "target", "", "detail"), [t.cells() for t in found],
                left=(0, 1, 3, 4, 5)),
        "", "## Served", "",
        *_table(COLUMNS, [_cells(r) for r in rows], left=(0, 1, len(COLUMNS) - 1)),
        "",
        f"- load-bound: the Locust processes used more than {s['load_bound_cores']} of a core "
        "each.",
        "- frontend / worker µs/req: CPU time of TorchServe's Java frontend and of its Python "
        "workers per request during the row (psutil).",
        "",
    ]
    for table in tables:
        hw = (f"; matmul {table.matmul_flops_per_s / 1e9:.0f} GFLOP/s, FLOPs per shape "
              + ", ".join(f"{sh.label} {f / 1e9:.2f} G" for sh, f in table.flops.items())
              if table.flops else "")
        lines += [f"## Compilers in process: {table.title} ({table.threads} thread(s), median; "
                  f"auto chose **{table.chosen}**{hw})", "", *compiler_markdown(table), ""]
    return "\n".join(lines)


#: Where ``make bench`` keeps its latest summary for people: between these lines of docs/benchmarks.md.
DOCS_START, DOCS_END = "<!-- bench:start (written by make bench) -->", "<!-- bench:end -->"


def docs_summary(text: str) -> str:
    """The run's header (date, machine, versions, load) and its Targets table, from ``markdown``."""
    head = text.split("## Targets", 1)[0].replace("# servegate bench", "Latest `make bench`:", 1)
    targets_table = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    return head.strip() + "\n\n" + targets_table.strip() + "\n"


def publish(text: str, page: Path) -> bool:
    """Replace the summary between the markers of ``page`` with this run's; False (and nothing
    written) when the page has no markers."""
    current = page.read_text(encoding="utf-8") if page.exists() else ""
    if DOCS_START not in current or DOCS_END not in current:
        return False
    before, rest = current.split(DOCS_START, 1)
    after = rest.split(DOCS_END, 1)[1]
    page.write_text(f"{before}{DOCS_START}\n{docs_summary(text)}{DOCS_END}{after}", encoding="utf-8")
    return True
