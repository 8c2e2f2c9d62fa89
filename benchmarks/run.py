"""``make bench``: our handler vs a documented minimal handler vs Locust's own ceiling, one run.

Every row runs on the same local TorchServe, one worker per model, the same Locust settings and
the same request bodies (``{"inputs": [64 floats]}`` rows of the digits held-out set). Absolute
figures on a shared 2-core box are noise: read the ratios. Results go to
``bench-results/latest.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.compilers import CompilerTable, measure_compilers
from benchmarks.compilers import markdown as compiler_markdown
from benchmarks.load import LOAD_BOUND_CORES, REPO, LoadResult, run_locust

PREDICT_LOCUSTFILE = REPO / "loadtests" / "torchserve.py"
PING_LOCUSTFILE = Path(__file__).with_name("locust_ping.py")
SAMPLE_ROWS = 256
CHECK_REQUESTS = 20


@dataclass(frozen=True)
class Row:
    """One measured configuration."""

    label: str
    model: str | None  # the TorchServe model name; None for the /ping row
    result: LoadResult


@dataclass(frozen=True)
class Ratio:
    label: str
    numerator: Row
    denominator: Row

    @property
    def value(self) -> float:
        n, d = self.numerator.result.rps, self.denominator.result.rps
        return n / d if d else math.nan

    def text(self) -> str:
        n, d = self.numerator.result, self.denominator.result
        return f"{self.label}: {self.value:.2f}x req/s (p95 {n.p95_ms:.0f} ms vs {d.p95_ms:.0f} ms)"


def machine() -> dict[str, Any]:
    """Cores and CPU model (from /proc/cpuinfo) of this machine."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "torchserve", "locust"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


def measure(seconds: int, users: int, warmup: int, epochs: int, raw: Path,
            progress: Progress) -> tuple[list[Row], CompilerTable, CompilerTable]:
    """Train, package, deploy and load every configuration on one TorchServe; always stop it."""
    from benchmarks.archive import package_minimal
    from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
    from servegate.config import BatchingConfig, TorchServeSettings
    from servegate.packaging.builder import package_model
    from servegate.sources.digits import builtin_digits

    step = progress.add_task("training the digits model", total=12)

    def advance(description: str) -> None:
        progress.update(step, advance=1, description=description)

    model = builtin_digits(epochs=epochs)
    assert model.eval_x is not None and model.model_file is not None
    advance("measuring compilers in process (auto's candidates)")
    compilers = measure_compilers(model)
    advance("measuring compilers for all-MiniLM-L6-v2 (embedding)")
    from servegate.sources import load_torch_model

    text_compilers = measure_compilers(load_torch_model("hf:minilm", task="embedding"),
                                       threads=os.cpu_count() or 1, batch_sizes=(1, 8),
                                       repeats=15)
    x = model.eval_x[:SAMPLE_ROWS]
    reference = model.reference(x)
    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp:
        work = Path(tmp)
        samples = work / "samples.json"
        samples.write_text(json.dumps([{"inputs": row.tolist()} for row in x]), encoding="utf-8")
        advance("packaging the archives")
        archives = work / "archives"
        ours = {
            "digits_b8": BatchingConfig(batch_size=8, max_batch_delay_ms=5),
            "digits_b1": BatchingConfig(batch_size=1, max_batch_delay_ms=0),
        }
        marfiles = {name: package_model(model, name=name, version="1", compiler="eager",
                                        batching=batching, output_dir=archives)
                    for name, batching in ours.items()}
        marfiles["digits_b8_chosen"] = package_model(
            model, name="digits_b8_chosen", version="1", compiler=compilers.chosen,
            batching=ours["digits_b8"], output_dir=archives)
        marfiles["digits_minimal"] = package_minimal(model.module, model.model_file,
                                                     name="digits_minimal", version="1",
                                                     output_dir=archives / "minimal")
        advance("starting TorchServe and deploying 3 models")
        server = LocalTorchServe(TorchServeSettings(workdir=work / "torchserve"))
        try:
            state = server.start()
            backend = TorchServeBackend.from_state(state)
            try:
                for name, mar in marfiles.items():
                    backend.deploy(mar, name, "1", workers=1)
                advance("checking answers")
                for name in marfiles:
                    _check_answers(name, backend.predict, x, reference)
            finally:
                backend.close()
            env = {"SERVEGATE_KEY_FILE": str(state.key_file), "SERVEGATE_SAMPLES": str(samples)}
            plan: list[tuple[str, str | None, Path]] = [
                ("ours, batch 8/5ms", "digits_b8", PREDICT_LOCUSTFILE),
                (f"ours, batch 8/5ms, {compilers.chosen} (auto's choice)", "digits_b8_chosen",
                 PREDICT_LOCUSTFILE),
                ("ours, batch 1", "digits_b1", PREDICT_LOCUSTFILE),
                ("minimal handler, batch 1", "digits_minimal", PREDICT_LOCUSTFILE),
                ("load generator ceiling (/ping)", None, PING_LOCUSTFILE),
            ]
            rows = []
            for label, model_name, locustfile in plan:
                row_env = env | {"SERVEGATE_MODEL": model_name or ""}
                if warmup:  # JIT-warms the Java frontend and the worker; figures discarded
                    progress.update(step, description=f"warming up {label} ({warmup}s)")
                    run_locust(locustfile, host=state.inference, users=users, seconds=warmup,
                               workdir=work / "warmup", env=row_env)
                advance(f"loading {label} ({users} users, {seconds}s)")
                result = run_locust(locustfile, host=state.inference, users=users, seconds=seconds,
                                    workdir=raw / (model_name or "ping"),
                                    env=row_env)
                rows.append(Row(label, model_name, result))
            advance("stopping TorchServe")
        finally:
            server.stop()
    advance("done")
    return rows, compilers, text_compilers


def _check_answers(name: str, predict: Callable[[str, Any], Any], x: Any,
                       reference: Any) -> None:
    """A few requests; each top class must match the in-process reference."""
    expected = reference.argmax(axis=-1)
    for i in range(CHECK_REQUESTS):
        row = i % len(x)
        answer = predict(name, {"inputs": x[row].tolist()})
        got = _top_class(answer)
        if got != int(expected[row]):
            raise RuntimeError(f"{name}: row {row} answered class {got}, reference "
                               f"{expected[row]}: {str(answer)[:300]}")


def _top_class(answer: Any) -> int:
    """Our handler answers labels; the minimal one answers ``[[10 logits]]``."""
    if isinstance(answer, dict):  # {"outputs": {"label": ..., ...}} for one instance
        outputs = answer["outputs"]
        return int((outputs[0] if isinstance(outputs, list) else outputs)["label"])
    logits = answer[0] if isinstance(answer[0], list) else answer
    return max(range(len(logits)), key=logits.__getitem__)


def ratios(rows: Sequence[Row]) -> list[Ratio]:
    by_model = {row.model: row for row in rows}
    return [
        Ratio("ours batch8 / minimal", by_model["digits_b8"], by_model["digits_minimal"]),
        Ratio("ours batch8 / ours batch1", by_model["digits_b8"], by_model["digits_b1"]),
        Ratio("ours batch8 auto-compiled / minimal", by_model["digits_b8_chosen"],
              by_model["digits_minimal"]),
        Ratio("ours batch8 auto-compiled / ours batch8 eager", by_model["digits_b8_chosen"],
              by_model["digits_b8"]),
    ]


COLUMNS = ("configuration", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
           "Locust CPU µs/req", "Locust cores", "note")


def _cells(row: Row) -> list[str]:
    r = row.result
    return [row.label, f"{r.rps:,.0f}", f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}", f"{r.p99_ms:.0f}",
            f"{r.error_ratio:.2%}", f"{r.cpu_per_request_s * 1e6:.0f}", f"{r.load_cores:.2f}",
            "load-bound" if r.load_bound else ""]


def _notes(report: dict[str, Any]) -> list[str]:
    load = report["load_average_1min"]
    return [f"load-bound = the Locust process used > {LOAD_BOUND_CORES} of a core",
            f"1-min load average before/after: {load['before']:.2f}/{load['after']:.2f} "
            "(other processes on these cores make absolute figures noise; read the ratios)"]


def table(rows: Sequence[Row], report: dict[str, Any]) -> Table:
    m, settings = report["machine"], report["settings"]
    result = Table(title=f"servegate bench {report['date']} — digits MLP, 1 worker, "
                         f"{settings['users']} users × {settings['seconds']}s — "
                         f"{m['cores']} cores, {m['cpu_model']}",
                   caption="\n".join([*(r.text() for r in ratios(rows)), *_notes(report)]))
    for i, column in enumerate(COLUMNS):
        result.add_column(column, justify="left" if i in (0, len(COLUMNS) - 1) else "right")
    for row in rows:
        bound = row.result.load_bound and row.model is not None
        result.add_row(*_cells(row), style="bold red" if bound else None)
    return result


def markdown(rows: Sequence[Row], report: dict[str, Any],
             compilers: CompilerTable | None = None,
             text_compilers: CompilerTable | None = None) -> str:
    m, settings = report["machine"], report["settings"]
    align = ["---" if i in (0, len(COLUMNS) - 1) else "---:" for i in range(len(COLUMNS))]
    lines = [
        "# servegate bench",
        "",
        f"- date: {report['date']}",
        f"- machine: {m['cores']} cores, {m['cpu_model']}, Python {m['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- load: Locust FastHttpUser, {settings['users']} users, {settings['seconds']} s per row; "
        "digits MLP, 1 worker per model, one TorchServe",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(align) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    lines += ["", *(f"- {line}" for line in [*(r.text() for r in ratios(rows)), *_notes(report)]),
              ""]
    if compilers is not None:
        lines += [f"## Compilers in process (digits MLP, 1 thread, median of 200; auto chose "
                  f"**{compilers.chosen}**)", "", *compiler_markdown(compilers), ""]
    if text_compilers is not None:
        lines += ["## Compilers in process (all-MiniLM-L6-v2 embedding, held-out sentences, "
                  f"{os.cpu_count()} threads; auto chose **{text_compilers.chosen}**)", "",
                  *compiler_markdown(text_compilers), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="load seconds per row (10)")
    parser.add_argument("--users", type=int, default=16, help="Locust users (16)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded load seconds per row (3)")
    parser.add_argument("--epochs", type=int, default=10, help="digits training epochs (10)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results", help="output dir")
    args = parser.parse_args(argv)

    console = Console()
    if not console.is_terminal:  # make/CI pipes: rich would wrap the table at 80 columns
        console = Console(width=160)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        load_before = os.getloadavg()[0]
        rows, compilers, text_compilers = measure(args.seconds, args.users, args.warmup,
                                                  args.epochs, args.out / "raw", progress)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": _versions(),
        "load_average_1min": {"before": round(load_before, 2),
                              "after": round(os.getloadavg()[0], 2)},
        "settings": {"seconds": args.seconds, "users": args.users, "warmup_seconds": args.warmup,
                     "epochs": args.epochs,
                     "load_bound_cores": LOAD_BOUND_CORES},
    }
    report["rows"] = [{"label": r.label, "model": r.model, **r.result.as_dict()} for r in rows]
    report["ratios"] = [{"label": r.label, "value": r.value,
                         "numerator_p95_ms": r.numerator.result.p95_ms,
                         "denominator_p95_ms": r.denominator.result.p95_ms} for r in ratios(rows)]
    report["compilers"] = {"chosen": compilers.chosen, "threads": 1, "rows": compilers.rows()}
    report["compilers_minilm"] = {"chosen": text_compilers.chosen, "threads": os.cpu_count(),
                                  "rows": text_compilers.rows()}
    console.print(table(rows, report))
    console.print(Markdown("\n".join(["## Compilers in process (digits MLP, 1 thread, median)",
                                       "", *compiler_markdown(compilers)])))
    console.print(Markdown("\n".join([
        "## Compilers in process (all-MiniLM-L6-v2 embedding, held-out sentences, median)", "",
        *compiler_markdown(text_compilers)])))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (args.out / "latest.md").write_text(markdown(rows, report, compilers, text_compilers),
                                        encoding="utf-8")
    console.print(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
