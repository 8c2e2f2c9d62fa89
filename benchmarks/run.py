"""``make bench``: one run, one table: the digits MLP and all-MiniLM-L6-v2, served and in process.

Every served row runs on the same local TorchServe (one worker per model, the worker's own thread
count), the same Locust settings, and real request bodies: digits held-out rows, and held-out
texts of exactly 32 tokens for MiniLM (so served batches have the shapes timed in process). The
in-process tables time every compiler ``auto`` tries at every shape, on the worker's threads.
Absolute figures on a shared 2-core box are noise: read the ratios, measured side by side.
Results go to ``bench-results/latest.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from benchmarks import server_cpu
from benchmarks.compilers import CompilerTable, measure_compilers
from benchmarks.compilers import markdown as compiler_markdown
from benchmarks.hardware import matmul_flops_per_s, model_flops
from benchmarks.load import LOAD_BOUND_CORES, REPO, failures_of, run_locust
from benchmarks.report import Row, Target, markdown, targets
from benchmarks.samples import bad_bodies, digits_bodies, sentences_of_length, write_bodies, write_raw_bodies
from servegate.compilers.driver import worker_threads
from servegate.parity_limits import EMBEDDING_PARITY_LIMITS

PREDICT_LOCUSTFILE = REPO / "loadtests" / "torchserve.py"
PING_LOCUSTFILE = Path(__file__).with_name("locust_ping.py")
MIXED_LOCUSTFILE = Path(__file__).with_name("locust_mixed.py")
BAD_EVERY = 8  # the robustness row: 1 request in 8 is a body that once killed a batch (issue 11)
SAMPLE_ROWS = 256
CHECK_REQUESTS = 16
TEXT_TOKENS = 32
RATE_FRACTION = 0.7  # the batching latency check runs at this fraction of batch 1's peak


@dataclasses.dataclass(frozen=True)
class Load:
    """One planned row: a served model (None: /ping) under saturation or a fixed total rate."""

    label: str
    family: str
    model: str | None
    samples: Path | None
    rate_of: str | None = None  # at RATE_FRACTION of this model's saturated req/s
    bad_every: int | None = None  # 1 request in this many is a bad body (figures: the good ones)
    processes: int | None = None  # Locust processes (None: --processes)


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
    for package in ("torch", "onnxruntime", "torchserve", "locust"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    return found


class Bench:
    """Measure everything in one process and one TorchServe; always stop it."""

    def __init__(self, args: argparse.Namespace, work: Path, progress: Progress) -> None:
        self.args, self.work, self.progress = args, work, progress
        self.step = progress.add_task("starting", total=None)
        self.threads = worker_threads()

    def say(self, description: str) -> None:
        self.progress.update(self.step, description=description)

    # ---- in process ----------------------------------------------------------------------------
    def compilers(self) -> tuple[Any, CompilerTable, Any, CompilerTable]:
        from servegate.api import load_model
        from servegate.sources.digits import builtin_digits

        self.say("training the digits model")
        digits = builtin_digits(epochs=self.args.epochs)
        self.say(f"digits: compiling and timing auto's candidates ({self.threads} thread)")
        digits_table = measure_compilers(digits, self.work / "compile-digits",
                                         title="digits MLP", threads=self.threads)
        self.say("all-MiniLM-L6-v2: importing")
        minilm = load_model("hf:minilm", task="embedding")
        self.say(f"all-MiniLM-L6-v2: compiling and timing auto's candidates ({self.threads} thread)")
        minilm_table = measure_compilers(minilm, self.work / "compile-minilm",
                                         title="all-MiniLM-L6-v2 embedding", threads=self.threads,
                                         batch_sizes=(1, 8), tokens=(TEXT_TOKENS, 128),
                                         repeats=30, budget_s=self.args.shape_seconds)
        self.say("all-MiniLM-L6-v2: counting FLOPs; timing a float32 matmul")
        flops = {shape: model_flops(minilm, shape) for shape in minilm_table.shapes}
        minilm_table = dataclasses.replace(minilm_table, flops=flops,
                                           matmul_flops_per_s=matmul_flops_per_s(self.threads))
        return digits, digits_table, minilm, minilm_table

    # ---- served --------------------------------------------------------------------------------
    def archives(self, digits: Any, digits_table: CompilerTable, minilm: Any,
                 minilm_table: CompilerTable) -> dict[str, Path]:
        from benchmarks.archive import package_minimal
        from servegate.config import BatchingConfig
        from servegate.packaging.mar import build_mar, contents_for

        self.say("packaging the archives")
        store = self.work / "archives"
        b8 = BatchingConfig(batch_size=8, max_batch_delay_ms=self.args.delay_ms)
        b1 = BatchingConfig(batch_size=1, max_batch_delay_ms=0)

        def archive(model: Any, table: CompilerTable, backend: str, name: str,
                    batching: BatchingConfig) -> Path:
            artifact = table.candidate(backend).artifact
            assert artifact is not None, f"{backend} has no artifact"
            return build_mar(contents_for(model, artifact, name=name, version="1",
                                          batching=batching), store)

        return {
            "digits_b8": archive(digits, digits_table, "eager", "digits_b8", b8),
            "digits_b8_auto": archive(digits, digits_table, digits_table.chosen, "digits_b8_auto", b8),
            "digits_b1": archive(digits, digits_table, "eager", "digits_b1", b1),
            "digits_minimal": package_minimal(digits.module, digits.model_file, name="digits_minimal",
                                              version="1", output_dir=store / "minimal"),
            "minilm_b8_auto": archive(minilm, minilm_table, minilm_table.chosen, "minilm_b8_auto", b8),
            "minilm_b1_auto": archive(minilm, minilm_table, minilm_table.chosen, "minilm_b1_auto", b1),
        }

    def plan(self, digits_table: CompilerTable, minilm_table: CompilerTable,
             samples: dict[str, Path]) -> list[Load]:
        d, m = samples["digits"], samples["minilm"]
        pct = f"{RATE_FRACTION:.0%}"
        b8 = f"batch 8/{self.args.delay_ms}ms"
        return [
            Load(f"ours, {b8}, eager", "digits", "digits_b8", d),
            Load(f"ours, {b8}, eager, 1 in {BAD_EVERY} bodies bad", "digits", "digits_b8", d,
                 bad_every=BAD_EVERY),
            Load(f"ours, {b8}, {digits_table.chosen} (auto)", "digits", "digits_b8_auto", d),
            Load("ours, batch 1, eager", "digits", "digits_b1", d),
            Load("minimal handler (docs), batch 1", "digits", "digits_minimal", d),
            Load(f"ours, batch 1, eager, at {pct} of its peak", "digits", "digits_b1", d,
                 rate_of="digits_b1"),
            Load(f"ours, {b8}, eager, same rate", "digits", "digits_b8", d, rate_of="digits_b1"),
            Load(f"ours, {b8}, {minilm_table.chosen} (auto)", "MiniLM", "minilm_b8_auto", m),
            Load(f"ours, batch 1, {minilm_table.chosen} (auto)", "MiniLM", "minilm_b1_auto", m),
            Load(f"ours, batch 1, at {pct} of its peak", "MiniLM", "minilm_b1_auto", m,
                 rate_of="minilm_b1_auto"),
            Load(f"ours, {b8}, same rate", "MiniLM", "minilm_b8_auto", m,
                 rate_of="minilm_b1_auto"),
            Load("load generator ceiling (/ping), 1 process", "Locust", None, None, processes=1),
            Load("load generator ceiling (/ping), 2 processes", "Locust", None, None,
                 processes=2),
        ]

    def served(self, digits: Any, digits_table: CompilerTable, minilm: Any,
               minilm_table: CompilerTable, raw: Path) -> list[Row]:
        from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
        from servegate.config import TorchServeSettings

        marfiles = self.archives(digits, digits_table, minilm, minilm_table)
        x = digits.eval_x[:SAMPLE_ROWS]
        texts = sentences_of_length(minilm, TEXT_TOKENS, 64)
        samples = {
            "digits": write_bodies(self.work / "digits.json", digits_bodies(x)),
            "minilm": write_bodies(self.work / "minilm.json", [{"inputs": t} for t in texts]),
        }
        self.bad_samples = write_raw_bodies(self.work / "bad.json", bad_bodies())
        self.say(f"starting TorchServe and deploying {len(marfiles)} models")
        server = LocalTorchServe(TorchServeSettings(workdir=self.work / "torchserve"))
        try:
            state = server.start()
            backend = TorchServeBackend.from_state(state)
            try:
                for name, mar in marfiles.items():
                    backend.deploy(mar, name, "1", workers=1)
                self.say("checking served answers against in-process references")
                for name in marfiles:
                    if name.startswith("digits"):
                        _check_digits(name, backend.predict, x, digits.reference(x))
                    else:
                        _check_embeddings(name, backend.predict, texts, minilm.reference(texts))
            finally:
                backend.close()
            return self._load_rows(self.plan(digits_table, minilm_table, samples), state, raw)
        finally:
            self.say("stopping TorchServe")
            server.stop()

    def _load_rows(self, plan: Sequence[Load], state: Any, raw: Path) -> list[Row]:
        args = self.args
        rows: list[Row] = []
        peak: dict[str, float] = {}

        def locust_env(load: Load) -> dict[str, str]:
            return {"SERVEGATE_KEY_FILE": str(state.key_file), "SERVEGATE_MODEL": load.model or "",
                    "SERVEGATE_SAMPLES": str(load.samples or "")}

        if args.server_warmup:  # the first row would otherwise pay for the frontend's JIT
            self.say(f"warming up TorchServe's frontend ({args.server_warmup}s)")
            run_locust(PREDICT_LOCUSTFILE, host=state.inference, users=args.users,
                       seconds=args.server_warmup, workdir=self.work / "warmup",
                       env=locust_env(plan[0]))
        for i, load in enumerate(plan, 1):
            rows.append(self._load_row(i, len(plan), load, locust_env(load), peak, state, raw))
        return rows

    def _load_row(self, i: int, total: int, load: Load, env: dict[str, str], peak: dict[str, float],
                  state: Any, raw: Path) -> Row:
        """One row: optional warm-up, then the measured load (good requests only for a mixed row)."""
        args = self.args
        rate = None
        if load.rate_of is not None:
            rate = RATE_FRACTION * peak[load.rate_of]
            env["SERVEGATE_USER_RPS"] = f"{rate / args.users:.4f}"
        locustfile = PING_LOCUSTFILE if load.model is None else PREDICT_LOCUSTFILE
        names: tuple[str, ...] = ()
        if load.bad_every:
            locustfile, names = MIXED_LOCUSTFILE, ("good",)
            env |= {"SERVEGATE_BAD_SAMPLES": str(self.bad_samples),
                    "SERVEGATE_BAD_EVERY": str(load.bad_every)}
        name = f"{load.family} {load.label}"
        processes = load.processes or args.processes
        if args.warmup:  # JIT-warms the Java frontend and the worker; figures discarded
            self.say(f"[{i}/{total}] warming up: {name} ({args.warmup}s)")
            run_locust(locustfile, host=state.inference, users=args.users, seconds=args.warmup,
                       workdir=self.work / "warmup", env=env, processes=processes)
        self.say(f"[{i}/{total}] loading: {name} ({args.users} users, {args.seconds}s)")
        workdir = raw / f"{i:02d}-{load.model or 'ping'}{'-mixed' if load.bad_every else ''}"
        before = server_cpu.snapshot(state.pid)
        result = run_locust(locustfile, host=state.inference, users=args.users,
                            seconds=args.seconds, workdir=workdir, env=env, names=names,
                            processes=processes)
        cpu = server_cpu.between(before, server_cpu.snapshot(state.pid))
        if load.model is not None and load.rate_of is None and not load.bad_every:
            peak.setdefault(load.model, result.rps)
        bad_not_4xx = failures_of(workdir, "bad") if load.bad_every else 0
        return Row(load.label, load.family, load.model, rate, result, cpu,
                   bad_every=load.bad_every, bad_not_4xx=bad_not_4xx)


def _check_digits(name: str, predict: Callable[[str, Any], Any], x: np.ndarray,
                  reference: np.ndarray) -> None:
    """A few requests; each top class must match the in-process reference."""
    expected = reference.argmax(axis=-1)
    for row in range(CHECK_REQUESTS):
        answer = predict(name, {"inputs": x[row].tolist()})
        if isinstance(answer, dict):  # ours: {"outputs": {"label": ...}} for one instance
            outputs = answer["outputs"]
            got = int((outputs[0] if isinstance(outputs, list) else outputs)["label"])
        else:  # the minimal handler: [[10 logits]]
            logits = answer[0] if isinstance(answer[0], list) else answer
            got = max(range(len(logits)), key=logits.__getitem__)
        if got != int(expected[row]):
            raise RuntimeError(f"{name}: row {row} answered class {got}, reference "
                               f"{expected[row]}: {str(answer)[:300]}")


def _check_embeddings(name: str, predict: Callable[[str, Any], Any], texts: Sequence[str],
                      reference: np.ndarray,
                      min_cosine: float = EMBEDDING_PARITY_LIMITS["reduced"].min_cosine) -> None:
    """A few requests; each served embedding must point where the in-process one does (within
    the reduced-precision limit: auto may have chosen an INT8/FP16 backend)."""
    for row in range(CHECK_REQUESTS):
        answer = predict(name, {"inputs": texts[row]})
        outputs = answer["outputs"] if isinstance(answer, dict) else answer
        vector = np.asarray(outputs, dtype=np.float64).reshape(-1)
        expected = reference[row].astype(np.float64)
        cosine = vector @ expected / (np.linalg.norm(vector) * np.linalg.norm(expected))
        if not cosine >= min_cosine:
            raise RuntimeError(f"{name}: text {row} served cosine {cosine:.4f} < {min_cosine}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="load seconds per row (10)")
    parser.add_argument("--users", type=int, default=16, help="Locust users (16)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded load seconds per row (3)")
    parser.add_argument("--processes", type=int, default=1,
                        help="Locust processes of the model rows (1); the /ping ceiling is "
                             "measured with 1 and 2")
    parser.add_argument("--epochs", type=int, default=10, help="digits training epochs (10)")
    parser.add_argument("--delay-ms", type=int, default=None,
                        help="max batch delay of the batch-8 rows (default: the pipeline's)")
    parser.add_argument("--server-warmup", type=int, default=10,
                        help="discarded load seconds before the first row: the JVM's JIT (10)")
    parser.add_argument("--shape-seconds", type=float, default=2.0,
                        help="MiniLM: timing budget per backend and shape (2)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results", help="output dir")
    args = parser.parse_args(argv)
    if args.delay_ms is None:
        from servegate.config import BatchingConfig

        args.delay_ms = BatchingConfig().max_batch_delay_ms

    console = Console()
    if not console.is_terminal:  # make/CI pipes: rich would wrap the tables at 80 columns
        console = Console(width=200)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="servegate-bench-") as tmp, \
            Progress(*columns, console=console, transient=True) as progress:
        bench = Bench(args, Path(tmp), progress)
        digits, digits_table, minilm, minilm_table = bench.compilers()
        rows = bench.served(digits, digits_table, minilm, minilm_table, args.out / "raw")
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": _versions(),
        "load_average_1min": {"before": round(load_before, 2),
                              "after": round(os.getloadavg()[0], 2)},
        "settings": {"seconds": args.seconds, "users": args.users, "warmup_seconds": args.warmup,
                     "epochs": args.epochs, "worker_threads": bench.threads,
                     "batch_delay_ms": args.delay_ms, "server_warmup_seconds": args.server_warmup,
                     "text_tokens": TEXT_TOKENS, "rate_fraction": RATE_FRACTION,
                     "load_bound_cores": LOAD_BOUND_CORES, "processes": args.processes},
    }
    found: list[Target] = targets(rows, digits_table, minilm_table, TEXT_TOKENS)
    report["targets"] = [t.as_dict() for t in found]
    report["rows"] = [r.as_dict() for r in rows]
    report["compilers"] = {t.title: {"chosen": t.chosen, "threads": t.threads,
                                     "matmul_flops_per_s": t.matmul_flops_per_s,
                                     "flops": {s.label: f for s, f in t.flops.items()},
                                     "rows": t.rows()}
                           for t in (digits_table, minilm_table)}
    text = markdown(report, found, rows, [digits_table, minilm_table], compiler_markdown)
    console.print(Markdown(text))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1, default=str),
                                          encoding="utf-8")
    (args.out / "latest.md").write_text(text, encoding="utf-8")
    console.print(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
