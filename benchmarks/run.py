"""``make bench``: one run, one table: the digits MLP, a small RGB CNN served with PNG images and
all-MiniLM-L6-v2, served and in process.

Every served row runs on the same local TorchServe (one worker per model, the worker's own thread
count), the same Locust settings, and real request bodies: digits held-out rows, held-out 32x32
images as PNG (alternately raw ``image/png`` bodies and ``{"instances": [{"b64": ...}]}`` JSON, as
users send them; the worker decodes them), and held-out texts of exactly 32 tokens for MiniLM (so
served batches have the shapes timed in process). The in-process tables time every compiler
``auto`` tries at every shape, on the worker's threads. Absolute figures on a shared 2-core box are
noise: read the ratios, measured side by side. ``--models`` runs a subset (the /ping row always
runs). Results go to ``bench-results/latest.{json,md}``.
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
from benchmarks.report import Row, Target, markdown, publish, targets
from benchmarks.samples import (
    bad_bodies,
    digits_bodies,
    image_bodies,
    sentences_of_length,
    write_bodies,
    write_raw_bodies,
    write_typed_bodies,
)
from benchmarks.tuned import TUNED_MODELS, Tuning, tune_served
from servegate.compilers.driver import worker_threads
from servegate.parity_limits import EMBEDDING_PARITY_LIMITS

PREDICT_LOCUSTFILE = REPO / "loadtests" / "torchserve.py"
DOCS_PAGE = REPO / "docs" / "benchmarks.md"
PING_LOCUSTFILE = Path(__file__).with_name("locust_ping.py")
MIXED_LOCUSTFILE = Path(__file__).with_name("locust_mixed.py")
TYPED_LOCUSTFILE = Path(__file__).with_name("locust_bodies.py")
#: ``--models`` names -> the family the rows and targets carry.
FAMILIES = {"digits": "digits", "images": "images", "minilm": "MiniLM"}
IMAGE_SIZE = 32
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
    typed: bool = False  # samples are (Content-Type, body) pairs (``locust_bodies.py``)
    repeat: int = 0  # a headline row measured again beside its pair (1, 2, ...)
    processes: int | None = None  # Locust processes (None: --processes)


@dataclasses.dataclass(frozen=True)
class Measured:
    """One model family timed in process: the model and its compiler table."""

    model: Any
    table: CompilerTable


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
        self.texts: list[str] = []  # MiniLM's request texts (set with the samples)
        self.tunings: dict[str, Tuning] = {}  # each family's tune search (--tune-points)

    def say(self, description: str) -> None:
        self.progress.update(self.step, description=description)

    # ---- in process ----------------------------------------------------------------------------
    def compilers(self, families: Sequence[str]) -> dict[str, Measured]:
        """Each family's model and its in-process compiler table, in ``FAMILIES`` order."""
        measure = {"digits": self._digits, "images": self._images, "MiniLM": self._minilm}
        return {family: measure[family]() for family in FAMILIES.values() if family in families}

    def _digits(self) -> Measured:
        from servegate.sources.digits import builtin_digits

        self.say("training the digits model")
        digits = builtin_digits(epochs=self.args.epochs)
        self.say(f"digits: compiling and timing auto's candidates ({self.threads} thread)")
        return Measured(digits, measure_compilers(digits, self.work / "compile-digits",
                                                  title="digits MLP", threads=self.threads))

    def _images(self) -> Measured:
        from benchmarks.photos import photo_model

        self.say(f"images: training a small RGB CNN ({IMAGE_SIZE}x{IMAGE_SIZE})")
        photos = photo_model(self.work / "photos", size=IMAGE_SIZE)
        self.say(f"images: compiling and timing auto's candidates ({self.threads} thread)")
        return Measured(photos, measure_compilers(photos, self.work / "compile-photos",
                                                  title=f"RGB CNN {IMAGE_SIZE}x{IMAGE_SIZE}",
                                                  threads=self.threads, batch_sizes=(1, 8),
                                                  budget_s=self.args.shape_seconds))

    def _minilm(self) -> Measured:
        from servegate.api import load_model

        self.say("all-MiniLM-L6-v2: importing")
        minilm = load_model("hf:minilm", task="embedding")
        self.say(f"all-MiniLM-L6-v2: compiling and timing auto's candidates ({self.threads} thread)")
        minilm_table = measure_compilers(minilm, self.work / "compile-minilm",
                                         title="all-MiniLM-L6-v2 embedding", threads=self.threads,
                                         batch_sizes=(1, 8), tokens=(TEXT_TOKENS, 128),
                                         repeats=30, budget_s=self.args.shape_seconds)
        self.say("all-MiniLM-L6-v2: counting FLOPs; timing a float32 matmul")
        flops = {shape: model_flops(minilm, shape) for shape in minilm_table.shapes}
        return Measured(minilm, dataclasses.replace(
            minilm_table, flops=flops, matmul_flops_per_s=matmul_flops_per_s(self.threads)))

    # ---- served --------------------------------------------------------------------------------
    def archive(self, measured: dict[str, Measured], family: str, backend: str, name: str,
                batching: Any) -> Path:
        """An archive of ``family``'s ``backend`` artifact with ``batching``."""
        from servegate.packaging.mar import build_mar, contents_for

        model, table = measured[family].model, measured[family].table
        artifact = table.candidate(backend).artifact
        assert artifact is not None, f"{backend} has no artifact"
        return build_mar(contents_for(model, artifact, name=name, version="1",
                                      batching=batching), self.work / "archives")

    def archives(self, measured: dict[str, Measured]) -> dict[str, Path]:
        from benchmarks.archive import package_minimal
        from servegate.config import BatchingConfig

        self.say("packaging the archives")
        store = self.work / "archives"
        b8 = BatchingConfig(batch_size=8, max_batch_delay_ms=self.args.delay_ms)
        b1 = BatchingConfig(batch_size=1, max_batch_delay_ms=0)

        def archive(family: str, backend: str, name: str, batching: BatchingConfig) -> Path:
            return self.archive(measured, family, backend, name, batching)

        archives: dict[str, Path] = {}
        if "digits" in measured:
            digits, chosen = measured["digits"].model, measured["digits"].table.chosen
            archives |= {
                "digits_b8": archive("digits", "eager", "digits_b8", b8),
                "digits_b8_auto": archive("digits", chosen, "digits_b8_auto", b8),
                "digits_b1": archive("digits", "eager", "digits_b1", b1),
                "digits_minimal": package_minimal(digits.module, digits.model_file,
                                                  name="digits_minimal", version="1",
                                                  output_dir=store / "minimal"),
            }
        if "images" in measured:
            chosen = measured["images"].table.chosen
            archives |= {"photos_b8_auto": archive("images", chosen, "photos_b8_auto", b8),
                         "photos_b1_auto": archive("images", chosen, "photos_b1_auto", b1)}
        if "MiniLM" in measured:
            chosen = measured["MiniLM"].table.chosen
            archives |= {"minilm_b8_auto": archive("MiniLM", chosen, "minilm_b8_auto", b8),
                         "minilm_b1_auto": archive("MiniLM", chosen, "minilm_b1_auto", b1)}
        return archives

    def plan(self, measured: dict[str, Measured], samples: dict[str, Path]) -> list[Load]:
        pct = f"{RATE_FRACTION:.0%}"
        b8 = f"batch 8/{self.args.delay_ms}ms"
        plan: list[Load] = []
        if "digits" in measured:
            d, chosen = samples["digits"], measured["digits"].table.chosen
            plan += [
                Load(f"ours, {b8}, eager", "digits", "digits_b8", d),
                Load(f"ours, {b8}, eager, 1 in {BAD_EVERY} bodies bad", "digits", "digits_b8", d,
                     bad_every=BAD_EVERY),
                Load(f"ours, {b8}, {chosen} (auto)", "digits", "digits_b8_auto", d),
                Load("ours, batch 1, eager", "digits", "digits_b1", d),
                Load("minimal handler (docs), batch 1", "digits", "digits_minimal", d),
                Load(f"ours, batch 1, eager, at {pct} of its peak", "digits", "digits_b1", d,
                     rate_of="digits_b1"),
                Load(f"ours, {b8}, eager, same rate", "digits", "digits_b8", d, rate_of="digits_b1"),
            ]
            if (tuning := self.tunings.get("digits")) and tuning.batching is not None:
                plan += [
                    Load(f"ours, {b8}, {chosen} (auto), same rate", "digits", "digits_b8_auto", d,
                         rate_of="digits_b1"),
                    Load(f"ours, tuned ({tuning.label}), {chosen}", "digits", "digits_tuned", d),
                    Load(f"ours, tuned ({tuning.label}), same rate", "digits", "digits_tuned", d,
                         rate_of="digits_b1"),
                ]
        if "images" in measured:
            p, chosen = samples["images"], measured["images"].table.chosen
            png = f"PNG {IMAGE_SIZE}x{IMAGE_SIZE}, raw and b64"
            plan += [
                Load(f"ours, {b8}, {chosen} (auto), {png}", "images", "photos_b8_auto", p,
                     typed=True),
                Load(f"ours, batch 1, {chosen} (auto), {png}", "images", "photos_b1_auto", p,
                     typed=True),
                Load(f"ours, batch 1, at {pct} of its peak", "images", "photos_b1_auto", p,
                     rate_of="photos_b1_auto", typed=True),
                Load(f"ours, {b8}, same rate", "images", "photos_b8_auto", p,
                     rate_of="photos_b1_auto", typed=True),
            ]
        if "MiniLM" in measured:
            m, chosen = samples["minilm"], measured["MiniLM"].table.chosen
            plan += [
                Load(f"ours, {b8}, {chosen} (auto)", "MiniLM", "minilm_b8_auto", m),
                Load(f"ours, batch 1, {chosen} (auto)", "MiniLM", "minilm_b1_auto", m),
                Load(f"ours, batch 1, at {pct} of its peak", "MiniLM", "minilm_b1_auto", m,
                     rate_of="minilm_b1_auto"),
                Load(f"ours, {b8}, same rate", "MiniLM", "minilm_b8_auto", m,
                     rate_of="minilm_b1_auto"),
            ]
            if (tuning := self.tunings.get("MiniLM")) and tuning.batching is not None:
                plan += [
                    Load(f"ours, tuned ({tuning.label}), {chosen} (auto)", "MiniLM",
                         "minilm_tuned", m),
                    Load(f"ours, tuned ({tuning.label}), same rate", "MiniLM", "minilm_tuned", m,
                         rate_of="minilm_b1_auto"),
                ]
        if "digits" in measured:  # the headline pair again, each time in the other order
            d, chosen = samples["digits"], measured["digits"].table.chosen
            for repeat in range(1, self.args.pairs):
                pair = [Load(f"ours, {b8}, {chosen} (auto), pair {repeat + 1}", "digits",
                             "digits_b8_auto", d, repeat=repeat),
                        Load(f"minimal handler (docs), batch 1, pair {repeat + 1}", "digits",
                             "digits_minimal", d, repeat=repeat)]
                plan += pair[::-1] if repeat % 2 else pair
        return plan + [Load("load generator ceiling (/ping), 1 process", "Locust", None, None,
                            processes=1),
                       Load("load generator ceiling (/ping), 2 processes", "Locust", None, None,
                            processes=2)]

    def samples(self, measured: dict[str, Measured]) -> dict[str, Path]:
        """Each family's request bodies, written for Locust."""
        samples: dict[str, Path] = {}
        if "digits" in measured:
            x = measured["digits"].model.eval_x[:SAMPLE_ROWS]
            samples["digits"] = write_bodies(self.work / "digits.json", digits_bodies(x))
        if "images" in measured:
            images = list(measured["images"].model.eval_images)
            samples["images"] = write_typed_bodies(self.work / "images.json", image_bodies(images))
        if "MiniLM" in measured:
            texts = sentences_of_length(measured["MiniLM"].model, TEXT_TOKENS, 64)
            self.texts = texts
            samples["minilm"] = write_bodies(self.work / "minilm.json",
                                             [{"inputs": t} for t in texts])
        self.bad_samples = write_raw_bodies(self.work / "bad.json", bad_bodies())
        return samples

    def served(self, measured: dict[str, Measured], raw: Path) -> list[Row]:
        from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
        from servegate.config import TorchServeSettings

        marfiles = self.archives(measured)
        samples = self.samples(measured)
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
                    self._check(name, backend, measured)
                self.tune(measured, marfiles, backend)
            finally:
                backend.close()
            return self._load_rows(self.plan(measured, samples), state, raw)
        finally:
            self.say("stopping TorchServe")
            server.stop()

    def tune(self, measured: dict[str, Measured], marfiles: dict[str, Path], backend: Any) -> None:
        """``servegate tune``'s search on each default archive; the winner served beside it."""
        if not self.args.tune_points:
            return
        for family, (default, tuned) in TUNED_MODELS.items():
            if family not in measured:
                continue
            tuning = tune_served(backend, family, marfiles[default],
                                 max_points=self.args.tune_points, seconds=self.args.tune_seconds,
                                 p95_ms=self.args.tune_p95_ms, say=self.say)
            self.tunings[family] = tuning
            if tuning.batching is not None:
                mar = self.archive(measured, family, measured[family].table.chosen, tuned,
                                   tuning.batching)
                backend.deploy(mar, tuned, "1", workers=tuning.batching.max_workers)
                self._check(tuned, backend, measured)

    def _check(self, name: str, backend: Any, measured: dict[str, Measured]) -> None:
        if name.startswith("digits"):
            digits = measured["digits"].model
            x = digits.eval_x[:SAMPLE_ROWS]
            _check_digits(name, backend.predict, x, digits.reference(x))
        elif name.startswith("photos"):
            photos = measured["images"].model
            _check_images(name, backend.client.predict_raw, photos.eval_images,
                          photos.reference(photos.eval_x))
        else:
            minilm = measured["MiniLM"].model
            _check_embeddings(name, backend.predict, self.texts, minilm.reference(self.texts))

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
        locustfile = (PING_LOCUSTFILE if load.model is None else
                      TYPED_LOCUSTFILE if load.typed else PREDICT_LOCUSTFILE)
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
                   bad_every=load.bad_every, bad_not_4xx=bad_not_4xx, repeat=load.repeat)


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


def _check_images(name: str, predict_raw: Callable[..., Any], images: Sequence[bytes],
                  reference: np.ndarray) -> None:
    """A few images, raw and base64 alternately, as the load sends them; each top class must
    match the model's in process on the worker's own decode of the same bytes."""
    for row, (kind, body) in enumerate(image_bodies(list(images[:CHECK_REQUESTS]))):
        response = predict_raw(name, body, content_type=kind)
        if response.status_code != 200:
            raise RuntimeError(f"{name}: image {row} ({kind}) answered {response.status_code}: "
                               f"{response.text[:300]}")
        answer = response.json()
        # a raw image: the prediction itself; {"instances": [...]}: {"predictions": [...]}
        prediction = answer["predictions"][0] if "predictions" in answer else answer
        got, expected = str(prediction["label"]), str(int(reference[row].argmax()))
        if got != expected:
            raise RuntimeError(f"{name}: image {row} ({kind}) answered class {got}, reference "
                               f"{expected}: {str(answer)[:300]}")


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
    parser.add_argument("--server-warmup", type=int, default=30,
                        help="discarded load seconds before the first row: the JVM's JIT (30)")
    parser.add_argument("--shape-seconds", type=float, default=2.0,
                        help="MiniLM: timing budget per backend and shape (2)")
    parser.add_argument("--pairs", type=int, default=3,
                        help="times the headline pair (ours auto batch 8, minimal) is measured "
                             "side by side; the ratio is the median over the pairs (3)")
    parser.add_argument("--tune-points", type=int, default=8,
                        help="configurations servegate tune measures for digits' and MiniLM's "
                             "tuned rows (8; 0: no tuned rows)")
    parser.add_argument("--tune-seconds", type=float, default=4.0,
                        help="load seconds per tuned point and load level (4)")
    parser.add_argument("--tune-p95-ms", type=float, default=None,
                        help="the p95 the search must meet (default: the pipeline's SLO)")
    parser.add_argument("--models", default=",".join(FAMILIES),
                        help=f"comma-separated subset of {', '.join(FAMILIES)} (all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results", help="output dir")
    parser.add_argument("--no-docs", dest="docs", action="store_false",
                        help="leave docs/benchmarks.md's summary as it is (default: this run's)")
    args = parser.parse_args(argv)
    chosen = [name.strip().lower() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown or not chosen:
        parser.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; "
                     f"known: {', '.join(FAMILIES)}")
    families = [FAMILIES[name] for name in chosen]
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
        measured = bench.compilers(families)
        rows = bench.served(measured, args.out / "raw")
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
                     "load_bound_cores": LOAD_BOUND_CORES, "processes": args.processes,
                     "image_size": IMAGE_SIZE,
                     "headline_pairs": args.pairs,
                     "models": families},
    }
    tables = {family: m.table for family, m in measured.items()}
    found: list[Target] = targets(rows, tables.get("digits"), tables.get("MiniLM"), TEXT_TOKENS,
                                  images=tables.get("images"),
                                  tune_kept={f: t.label for f, t in bench.tunings.items()
                                             if t.kept_default})
    report["targets"] = [t.as_dict() for t in found]
    report["tunings"] = [t.as_dict() for t in bench.tunings.values()]
    report["rows"] = [r.as_dict() for r in rows]
    report["compilers"] = {t.title: {"chosen": t.chosen, "threads": t.threads,
                                     "matmul_flops_per_s": t.matmul_flops_per_s,
                                     "flops": {s.label: f for s, f in t.flops.items()},
                                     "rows": t.rows()}
                           for t in tables.values()}
    text = markdown(report, found, rows, list(tables.values()), compiler_markdown)
    console.print(Markdown(text))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1, default=str),
                                          encoding="utf-8")
    (args.out / "latest.md").write_text(text, encoding="utf-8")
    console.print(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    if args.docs and publish(text, DOCS_PAGE):
        console.print(f"updated the summary in {DOCS_PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
