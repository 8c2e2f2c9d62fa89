"""The GPU check (issue 14): every backend on a digits-shaped MLP and an all-MiniLM-L6-v2-shaped
encoder, on the GPU and the CPU side by side, as ``auto`` sees them; then each CUDA artifact that
passed is served by the real handlers in this process with a ``gpu_id``, and checked again.

Runs on a bare CUDA host with torch and numpy only (no Java, no MLflow, no pydantic): without
``tokenizers`` the encoder is skipped, saying so; without onnx, onnxscript or onnxruntime the ONNX
candidates are. The library comes from this checkout's ``src/``, the handlers are loaded from a
staged model directory as a TorchServe worker loads them. Random weights (seeded) stand in for
the trained ones: parity compares each artifact with the same weights in eager fp32.

A preflight comes first (GPU, torch, CUDA, the C++ compiler AOTInductor and Inductor need, the
optional packages present); each model's table is printed as soon as it is done. CPU candidates
run on every core and are timed only at the shapes where they can win (one call of at most
``CPU_MAX_FLOP``: the small batches of the encoder, every batch of the MLP). ``--deadline SECONDS``
ends the run with the tables so far (exit 3): between candidates and shapes, and at the latest
``HARD_STOP_GRACE_S`` after the deadline, even in the middle of a compile (default 480 s).

    python benchmarks/gpu.py                 # on a CUDA host; exit 1 if a target is missed
    python benchmarks/gpu.py --cpu --quick   # the same code on a CPU (what CI runs)

Targets (ratios on one GPU, in one run): ``auto`` within 5% of the best backend at every shape;
its choice >= 5x eager fp32 (CUDA) at B1/32 tokens and >= 6x at B256/128 tokens for the encoder;
hardware efficiency at B256/128 >= 0.35 of the bf16 matmul ceiling timed here; the MLP stays on
the CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress as contextlib_suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: all-MiniLM-L6-v2's shape (BERT, 6 layers, hidden 384, 12 heads).
MINILM = {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "max_position_embeddings": 512}
TARGETS = {"auto_vs_best": 1.05, "speedup_b1_t32": 5.0, "speedup_b256_t128": 6.0, "efficiency": 0.35}
#: CPU candidates are timed at a shape only when one forward pass is at most this many FLOP
#: (~25 ms on a CPU doing 1 TFLOP/s; the GPU does it in about a millisecond): the encoder's
#: batches 1 and 8, every batch of the MLP. One b256 x t128 encoder call is ~5e11 FLOP.
CPU_MAX_FLOP = 2.5e10
#: After the deadline, the run is cut even inside a compile this many seconds later.
HARD_STOP_GRACE_S = 5.0
#: The default ``--deadline``: the whole run in 8 minutes, inside a ten-minute lease.
DEFAULT_DEADLINE_S = 480.0
#: Exit status of a run cut by ``--deadline``.
DEADLINE_EXIT = 3
#: Optional packages: what each one enables.
OPTIONAL = {"tokenizers": "the encoder", "onnx": "ONNX candidates", "onnxscript": "ONNX candidates",
            "onnxruntime": "ONNX candidates", "torch_tensorrt": "TensorRT candidates"}


class ModelSkipped(Exception):
    """A model this host cannot build (a package is missing); the message says why."""


def use_checkout() -> None:
    """This checkout's library first on the path (no install needed)."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


# ---- the models ------------------------------------------------------------------------------
def mlp_model(seed: int = 0):  # -> TorchModel
    """A digits-shaped classifier: 64 features -> 128 -> 10 classes, random weights."""
    import torch
    from torch import nn

    from servegate.sources.base import TorchModel

    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = (np.random.default_rng(seed).random((512, 64)) * 16).astype(np.float32)
    return TorchModel(module=module, input_shape=(64,), labels=[str(i) for i in range(10)],
                      task="classification", eval_x=x, source_uri="random:mlp")


def word_list(count: int = 2000) -> list[str]:
    """Pronounceable made-up words (the tokenizer's vocabulary and the test sentences)."""
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    words = []
    for i in range(count):
        letters, n = [], i + 1
        while n:
            n, c = divmod(n, len(consonants))
            n, v = divmod(n, len(vowels))
            letters.append(consonants[c] + vowels[v])
        words.append("".join(letters))
    return words


def wordpiece_tokenizer(path: Path, words: Sequence[str]) -> Path:
    """A BERT-style ``tokenizer.json`` ([CLS] ... [SEP], lower-case words) written by
    ``tokenizers`` itself."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3} | {w: i + 4 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(path))
    return path


def encoder_model(workdir: Path, seed: int = 0, max_length: int = 128):  # -> TorchModel
    """An all-MiniLM-L6-v2-shaped sentence encoder with random weights and its tokenizer;
    ``ModelSkipped`` without ``tokenizers``."""
    if importlib.util.find_spec("tokenizers") is None:
        raise ModelSkipped("tokenizers is not installed (pip install tokenizers): the encoder needs "
                           "its tokenizer, in the check as in the worker")
    import torch

    from servegate.sources.base import TensorSpec, TorchModel
    from servegate.sources.text_net import SentenceEmbedding

    torch.manual_seed(seed)
    module = SentenceEmbedding(**MINILM).eval()
    words = word_list()
    rng = np.random.default_rng(seed)
    sentences = np.array([" ".join(rng.choice(words, size=int(rng.integers(6, 40))))
                          for _ in range(64)])
    tokenizer = wordpiece_tokenizer(workdir / "tokenizer.json", words)
    return TorchModel(module=module, input_shape=(), labels=[], task="embedding",
                      tokenizer_file=tokenizer, max_length=max_length, eval_x=sentences,
                      outputs=(TensorSpec("embedding", (MINILM["hidden_size"],)),),
                      source_uri="random:minilm-shaped")


# ---- figures ---------------------------------------------------------------------------------
def bf16_matmul_tflops(device: str, n: int = 8192, repeats: int = 20) -> float:
    """The bf16 matmul ceiling of ``device`` (TFLOP/s of an n x n x n product), timed here."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def mlp_flops(batch: int, tokens: int | None = None) -> float:
    """Multiply-adds x 2 of one forward pass of ``mlp_model``."""
    return 2.0 * batch * (64 * 128 + 128 * 10)


def encoder_flops(batch: int, tokens: int, cfg: dict[str, int] = MINILM) -> float:
    """Multiply-adds x 2 of one forward pass: the dense layers and the attention products."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    dense = 2 * batch * tokens * (4 * h * h + 2 * h * i)
    attention = 2 * 2 * batch * tokens * tokens * h
    return float(layers * (dense + attention))


# ---- preflight -------------------------------------------------------------------------------
def cxx_compiler() -> str | None:
    """The C++ compiler AOTInductor and Inductor would use (the compilers' own rule), or None."""
    return shutil.which("g++") or shutil.which("c++")


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version({"torch_tensorrt": "torch-tensorrt"}.get(package, package))
    except metadata.PackageNotFoundError:
        return "?"


def preflight(cuda: bool) -> list[str]:
    """What this host brings, before anything is built: a missing C++ compiler first (it skips
    every AOTInductor and Inductor candidate), then GPU, torch, CUDA, cores, optional packages."""
    import torch

    lines = []
    compiler = cxx_compiler()
    if compiler is None:
        lines.append("WARNING: no C++ compiler on PATH (g++ or c++): every AOTInductor and Inductor "
                     "candidate will be skipped; install one (apt-get install g++) to measure them")
    if cuda:
        major, minor = torch.cuda.get_device_capability(0)
        gpu = f"{torch.cuda.get_device_name(0)} (compute capability {major}.{minor}"
        gpu += f", {torch.cuda.device_count()} device(s))"
    else:
        gpu = "none used (--cpu)" if torch.cuda.is_available() else "none (no CUDA device)"
    lines.append(f"GPU: {gpu}")
    lines.append(f"torch {torch.__version__}; CUDA {torch.version.cuda or 'none (a CPU build)'}; "
                 f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '-'}")
    lines.append(f"C++ compiler: {compiler or 'none'}; CPU cores: {os.cpu_count()}")
    present, absent = [], []
    for package, enables in OPTIONAL.items():
        if importlib.util.find_spec(package) is None:
            absent.append(f"{package} (no {enables})")
        else:
            present.append(f"{package} {_version(package)}")
    if "onnxruntime" not in [a.split(" ")[0] for a in absent]:
        try:
            import onnxruntime

            present.append(f"onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
        except Exception as exc:  # a broken install is reported, not fatal
            present.append(f"onnxruntime import failed: {type(exc).__name__}: {exc}"[:200])
    lines.append(f"optional packages present: {'; '.join(present) or 'none'}")
    lines.append(f"optional packages absent: {'; '.join(absent) or 'none'}")
    return lines


def timing_shapes_for(model, flops: Callable[..., float], *, batches: Sequence[int],
                      tokens: Sequence[int]) -> tuple[list, list]:
    """(every shape, the shapes CPU candidates are timed at: one call of at most
    ``CPU_MAX_FLOP``, always batch 1)."""
    from servegate.compilers.shapes import timing_shapes

    shapes = timing_shapes(model, batches, tokens)
    cpu = [s for s in shapes if s.batch == 1 or flops(s.batch, s.tokens) <= CPU_MAX_FLOP]
    return shapes, cpu


class Deadline:
    """``--deadline``: ``reached()`` once the time is up (never without one)."""

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.monotonic() + seconds

    def reached(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


@dataclass
class ModelReport:
    model: str
    candidates: list[dict[str, Any]]
    chosen: str
    chosen_device: str
    worst_vs_best: dict[str, float] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict)
    targets: dict[str, tuple[float, float, bool]] = field(default_factory=dict)
    skipped: str = ""  # why the model was not measured at all


def candidate_names(cuda: bool) -> list[str]:
    """What ``auto`` tries on this host (the CUDA variants only where CUDA is)."""
    from servegate import compilers

    names = list(compilers.auto_candidates())
    return names if cuda else [n for n in names if compilers.get_compiler(n).device == "cpu"]


def measure(model, label: str, workdir: Path, *, cuda: bool, batches: Sequence[int],
            tokens: Sequence[int], max_batch: int, names: Sequence[str] | None,
            budget_s: float, flops: Callable[..., float], deadline: Deadline | None = None,
            on_done: Callable[[Any], None] | None = None) -> tuple[ModelReport, list]:
    """Every candidate compiled, parity-checked and timed (CUDA ones first, at every shape; CPU
    ones on every core at the shapes where they can win); ``auto``'s choice among those timed at
    every shape."""
    from servegate.compilers import get_compiler
    from servegate.compilers.select import evaluate, table_rows

    chosen_names = list(names) if names else candidate_names(cuda)
    on_gpu = [n for n in chosen_names if get_compiler(n).device == "cuda"]
    on_cpu = [n for n in chosen_names if n not in on_gpu]
    shapes, cpu_shapes = timing_shapes_for(model, flops, batches=batches, tokens=tokens)
    stop = deadline.reached if deadline is not None else None
    threads = os.cpu_count() or 1
    candidates = []
    for group, group_shapes in ((on_gpu, shapes), (on_cpu, cpu_shapes)):
        if group:
            candidates += evaluate(model, group, workdir / label, max_batch=max_batch,
                                   shapes=group_shapes, threads=threads, repeats=30,
                                   budget_s=budget_s, should_stop=stop, on_done=on_done)
    report = ModelReport(label, [], "none", "-")
    best = pick(candidates, shapes, batches[-1])
    usable = [c for c in candidates if c.usable]
    if best is not None:
        report.chosen, report.chosen_device = best.backend, getattr(best, "device", "cpu")
        for shape in best.p50_ms:
            fastest = min(c.p50_ms[shape] for c in usable if shape in c.p50_ms)
            report.worst_vs_best[shape.label] = best.p50_ms[shape] / fastest
    report.candidates = table_rows(candidates)
    return report, candidates


def pick(candidates: list, shapes: Sequence[Any], batch_size: int):  # -> Candidate | None
    """``auto``'s choice among the candidates timed at every shape (``choose``); the others (CPU
    candidates at large shapes, a run cut by the deadline) get their worst slowdown over the
    shapes they were timed at. None when no candidate was timed at every shape."""
    from servegate.compilers.select import choose

    usable = [c for c in candidates if c.usable and c.p50_ms]
    complete = [c for c in usable if set(shapes) <= set(c.p50_ms)]
    best = choose(complete, batch_size) if complete else None
    for c in usable:
        if c not in complete:
            c.regret = max(c.p50_ms[s] / min(o.p50_ms[s] for o in usable if s in o.p50_ms)
                           for s in c.p50_ms)
    return best


# ---- serving through the real handlers ---------------------------------------------------------
HANDLER_FOR_TASK = {"classification": "tensor_handler", "embedding": "text_handler"}


def stage(model, artifact, directory: Path, max_batch: int) -> Path:
    """An unpacked archive as a worker sees it: the artifact, ``servegate.json`` (the keys the
    handlers read), the handler modules, the tokenizer and a warm-up request."""
    directory.mkdir(parents=True)
    handlers = ROOT / "handlers"
    for module in handlers.glob("sg_*.py"):
        shutil.copy2(module, directory / module.name)
    shutil.copy2(handlers / f"{HANDLER_FOR_TASK[model.task]}.py", directory)
    shutil.copy2(artifact.path, directory / artifact.path.name)
    if getattr(artifact, "fallback", None):
        shutil.copy2(artifact.fallback, directory / artifact.fallback.name)
    if artifact.model_file is not None:
        shutil.copy2(artifact.model_file, directory / artifact.model_file.name)
    spec: dict[str, Any] = {
        "schema_version": 2, "task": model.task, "format": artifact.format,
        "artifact": artifact.path.name, "model_class": artifact.model_class,
        "model_kwargs": artifact.model_kwargs, "max_batch": max_batch, "compiler": artifact.backend,
        "outputs": [{"name": s.name, "shape": list(s.shape)} for s in model.outputs],
        "warmup_file": "warmup.json",
        "limits": {"max_body_bytes": 1 << 20, "max_instances": max_batch},
    }
    for key in ("device", "dtype", "compile_mode", "built_for", "buckets"):
        spec[key] = getattr(artifact, key, None)
    if getattr(artifact, "fallback", None):
        spec["fallback_artifact"] = artifact.fallback.name
    if model.is_text:
        shutil.copy2(model.tokenizer_file, directory / "tokenizer.json")
        spec["text"] = {"tokenizer_file": "tokenizer.json", "max_length": model.max_length}
    else:
        spec["inputs"] = [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in model.inputs]
        spec["labels_file"] = None
    rows = model.request_rows(model.example_batch(2))
    (directory / "warmup.json").write_text(json.dumps({"instances": rows}))
    (directory / "servegate.json").write_text(json.dumps(spec, indent=1))
    return directory


class WorkerContext:
    """The parts of TorchServe's context the handlers read, with the worker's ``gpu_id``."""

    def __init__(self, model_dir: Path, gpu_id: int | None) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id}
        self.model_name = "check"
        self.model_yaml_config = {"maxWorkers": 1}
        self.statuses: dict[int, int] = {}
        self.metrics = None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass


def serve(model, artifact, directory: Path, gpu_id: int | None, max_batch: int) -> str:
    """The artifact served by the real handler in process, staged in ``directory``; "ok" or what
    went wrong."""
    import importlib

    directory = stage(model, artifact, directory, max_batch)
    sys.path.insert(0, str(directory))
    try:
        for name in [m for m in sys.modules if m.startswith("sg_") or m.endswith("_handler")]:
            del sys.modules[name]  # each staged archive brings its own copies, as a worker does
        module = importlib.import_module(HANDLER_FOR_TASK[model.task])
        handler_cls = next(v for v in vars(module).values() if isinstance(v, type)
                           and v.__module__ == module.__name__ and hasattr(v, "handle"))
        handler = handler_cls()
        handler.initialize(WorkerContext(directory, gpu_id))
        rows = model.example_batch(16)
        requests = [{"body": json.dumps({"instances": model.request_rows(rows[i:i + 4])}).encode()}
                    for i in range(0, 16, 4)]
        context = WorkerContext(directory, gpu_id)
        answers = handler.handle(requests, context)
        if context.statuses:
            return f"failed: statuses {context.statuses}: {answers[0][:200]}"
        served = np.asarray([v for a in answers for v in _values(json.loads(a))], dtype=np.float64)
        reference = np.asarray(model.forward_all(*model.model_inputs(rows))[0], dtype=np.float64)
        if model.task == "classification":  # probabilities were served: compare to softmax
            e = np.exp(reference - reference.max(1, keepdims=True))
            reference = e / e.sum(1, keepdims=True)
        cos = (served * reference).sum(1) / (np.linalg.norm(served, axis=1)
                                             * np.linalg.norm(reference, axis=1) + 1e-12)
        return "ok" if float(cos.min()) >= 0.99 else f"failed: cosine {float(cos.min()):.4f}"
    except Exception as exc:  # reported per artifact; the check goes on
        return f"failed: {type(exc).__name__}: {exc}"[:300]
    finally:
        sys.path.remove(str(directory))


def _values(answer: dict[str, Any]) -> list[list[float]]:
    """Each instance's vector: embeddings, or class probabilities."""
    rows = answer.get("predictions", answer.get("outputs"))
    out = []
    for row in rows if isinstance(rows, list) else [rows]:
        out.append(row["probabilities"] if isinstance(row, dict) else row)
    return out


# ---- the run ---------------------------------------------------------------------------------
def check_targets(report: ModelReport, candidates: list, ceiling: float | None) -> None:
    """Fill ``report.targets``: name -> (value, target, met)."""
    worst = max(report.worst_vs_best.values()) if report.worst_vs_best else math.nan
    report.targets["auto_vs_best"] = (worst, TARGETS["auto_vs_best"], worst <= TARGETS["auto_vs_best"])
    if report.model != "encoder":
        return
    by_name = {c.backend: c for c in candidates if c.usable}
    chosen, eager = by_name.get(report.chosen), by_name.get("eager-cuda")
    if chosen is None:
        return
    for key, label in (("speedup_b1_t32", "b1_t32"), ("speedup_b256_t128", "b256_t128")):
        shape = next((s for s in chosen.p50_ms if s.label == label), None)
        if eager is None or shape is None or shape not in eager.p50_ms:
            continue
        value = eager.p50_ms[shape] / chosen.p50_ms[shape]
        report.targets[key] = (value, TARGETS[key], value >= TARGETS[key])
    shape = next((s for s in chosen.p50_ms if s.label == "b256_t128"), None)
    if ceiling and shape is not None:
        achieved = encoder_flops(256, 128) / (chosen.p50_ms[shape] / 1e3) / 1e12
        value = achieved / ceiling
        report.targets["efficiency"] = (value, TARGETS["efficiency"], value >= TARGETS["efficiency"])


def print_report(report: ModelReport) -> None:
    if report.skipped:
        print(f"\n{report.model}: skipped: {report.skipped}")
        return
    shapes = sorted({k.removeprefix("p50_ms_") for row in report.candidates for k in row
                     if k.startswith("p50_ms_")}, key=lambda s: [int(p[1:]) for p in s.split("_")])
    header = ["backend", "device", "status", *shapes, "worst vs best", "cosine", "compile s"]
    print(f"\n{report.model}: auto chose {report.chosen} ({report.chosen_device})"
          + ("" if report.chosen != "none" else ": no candidate was timed at every shape"))
    print(" | ".join(header))
    for row in report.candidates:
        cells = [str(row["backend"]), str(row.get("device", "cpu")), str(row["status"])]
        cells += [f"{row[f'p50_ms_{s}']:.3f}" if row[f"p50_ms_{s}"] == row[f"p50_ms_{s}"] else "-"
                  for s in shapes]
        cells += [f"{row['regret']:.2f}x" if row["regret"] == row["regret"] else "-",
                  f"{row['cosine']:.5f}" if row["cosine"] == row["cosine"] else "-",
                  str(row["compile_s"])]
        print(" | ".join(cells) + (f"   ({row['reason'][:90]})" if row["reason"] else ""))
    for name, verdict in report.served.items():
        print(f"served by the handler: {name}: {verdict}")
    for name, (value, target, met) in report.targets.items():
        print(f"target {name}: {value:.3f} (target {target}) {'met' if met else 'MISSED'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (no CUDA needed)")
    parser.add_argument("--quick", action="store_true", help="small shapes and short timings")
    parser.add_argument("--candidates", default="", help="comma list instead of auto's")
    parser.add_argument("--models", default="mlp,encoder", help="comma list of mlp, encoder")
    parser.add_argument("--deadline", type=float, metavar="SECONDS", default=DEFAULT_DEADLINE_S,
                        help=f"end the run with the tables so far after SECONDS (exit "
                             f"{DEADLINE_EXIT}; default {DEFAULT_DEADLINE_S:.0f}: a GPU machine is "
                             "usually lent for ten minutes)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - {"mlp", "encoder"}
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}: choose among mlp, encoder")
    return args


class Run:
    """What the run has done so far: finished reports (printed as they finish) and the model in
    progress, so that a deadline can print the tables so far from any point."""

    def __init__(self, device: str, ceiling: float | None, out: Path | None) -> None:
        self.device, self.ceiling, self.out = device, ceiling, out
        self.reports: list[ModelReport] = []
        self.current: tuple[str, list] | None = None  # label, candidates finished so far
        self.start = time.perf_counter()
        self.lock = threading.Lock()
        self.finished = False

    def write(self, deadline_reached: bool) -> float:
        import torch

        seconds = time.perf_counter() - self.start
        print(f"\n{seconds:.0f} s in all" + ("; the deadline ended the run" if deadline_reached else ""))
        if self.out:
            self.out.write_text(json.dumps({
                "device": self.device, "torch": torch.__version__, "bf16_ceiling_tflops": self.ceiling,
                "seconds": seconds, "deadline_reached": deadline_reached,
                "models": [r.__dict__ for r in self.reports]}, indent=1, default=str))
        return seconds

    def hard_stop(self, exit_fn: Callable[[int], Any] = os._exit) -> None:
        """The deadline passed inside a step that cannot be cut (a compile): print the table of
        the model in progress, write the figures, and end the process."""
        with self.lock:
            if self.finished:
                return
            self.finished = True
            if self.current is not None:
                from servegate.compilers.select import table_rows

                label, done = self.current
                print(f"\ndeadline reached while measuring {label}: the candidates finished so far")
                try:  # the main thread may be adding to a candidate meanwhile
                    report = ModelReport(label, table_rows(list(done)), "none", "-")
                    print_report(report)
                    self.reports.append(report)
                except Exception as exc:  # the exit must happen whatever the table does
                    print(f"(no table: {type(exc).__name__}: {exc})")
            self.write(deadline_reached=True)
            sys.stdout.flush()
            sys.stderr.flush()
        exit_fn(DEADLINE_EXIT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib_suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # each line as it is printed, even in a pipe
    deadline = Deadline(args.deadline)
    use_checkout()
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("no CUDA device: nothing to check on a GPU (--cpu runs the same code on the CPU)")
        return 2
    for line in preflight(cuda):
        print(line)
    torch.set_num_threads(os.cpu_count() or 1)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()] or None
    batches = (1, 8) if args.quick else (1, 8, 64, 256)
    max_batch = max(batches)
    budget = 0.2 if args.quick else 1.0
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    ceiling = bf16_matmul_tflops("cuda") if cuda else None
    if ceiling:
        print(f"bf16 matmul ceiling {ceiling:.0f} TFLOP/s")
    run = Run(device, ceiling, args.out)
    watchdog = None
    if deadline.at is not None:
        watchdog = threading.Timer(max(0.0, deadline.at - time.monotonic()) + HARD_STOP_GRACE_S,
                                   run.hard_stop)
        watchdog.daemon = True
        watchdog.start()
    wanted = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="servegate-gpu-") as tmp:
        workdir = Path(tmp)
        builders: list[tuple[str, Callable[[], Any], Callable[..., float]]] = [
            ("mlp", mlp_model, mlp_flops),
            ("encoder", lambda: encoder_model(workdir, max_length=128), encoder_flops)]
        for label, build, flops in builders:
            if label not in wanted:
                continue
            if deadline.reached():
                print(f"\n{label}: not started: the deadline was reached")
                break
            try:
                model = build()
            except ModelSkipped as exc:
                report = ModelReport(label, [], "none", "-", skipped=str(exc))
                print_report(report)
                run.reports.append(report)
                continue
            done: list = []
            run.current = (label, done)
            report, candidates = measure(model, label, workdir, cuda=cuda, batches=batches,
                                         tokens=(32, 128), max_batch=max_batch, names=names,
                                         budget_s=budget, flops=flops, deadline=deadline,
                                         on_done=done.append)
            for c in candidates:
                if c.usable and c.artifact is not None and (getattr(c, "device", "cpu") == "cuda"
                                                            or c.status == "chosen"):
                    if deadline.reached():
                        report.served[c.backend] = "not served: the deadline was reached"
                        continue
                    staged = workdir / label / f"served-{c.backend}"
                    report.served[c.backend] = serve(model, c.artifact, staged, 0 if cuda else None,
                                                     max_batch)
            check_targets(report, candidates, ceiling)
            if label == "mlp" and cuda:
                stays = report.chosen_device == "cpu"
                report.targets["mlp_stays_on_cpu"] = (float(stays), 1.0, stays)
            with run.lock:
                if run.finished:  # the watchdog ended the run meanwhile
                    return DEADLINE_EXIT
                run.current = None
                print_report(report)
                run.reports.append(report)
        with run.lock:
            if run.finished:
                return DEADLINE_EXIT
            run.finished = True
            if watchdog is not None:
                watchdog.cancel()
            run.write(deadline.reached())
    if deadline.reached():
        return DEADLINE_EXIT
    reports = run.reports
    served_ok = all(v == "ok" for r in reports for v in r.served.values())
    targets_met = all(met for r in reports for _, _, met in r.targets.values())
    return 0 if served_ok and (targets_met or not cuda) else 1


if __name__ == "__main__":
    sys.exit(main())
