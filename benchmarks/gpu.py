"""The GPU check (issue 14): every backend on a digits-shaped MLP and an all-MiniLM-L6-v2-shaped
encoder, on the GPU and the CPU side by side, as ``auto`` sees them; then each CUDA artifact that
passed is served by the real handlers in this process with a ``gpu_id``, and checked again.

Runs on a bare CUDA host: torch, numpy, onnxruntime and tokenizers are all it imports (no Java, no
MLflow, no pydantic); the library comes from this checkout's ``src/``, the handlers are loaded from
a staged model directory as a TorchServe worker loads them. Random weights (seeded) stand in for
the trained ones: parity compares each artifact with the same weights in eager fp32.

    python benchmarks/gpu.py                 # on a CUDA host; exit 1 if a target is missed
    python benchmarks/gpu.py --cpu --quick   # the same code on a CPU (what CI runs)

Targets (ratios on one GPU, in one run): ``auto`` within 5% of the best backend at every shape;
its choice >= 5x eager fp32 (CUDA) at B1/32 tokens and >= 6x at B256/128 tokens for the encoder;
hardware efficiency at B256/128 >= 0.35 of the bf16 matmul ceiling timed here; the MLP stays on
the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: all-MiniLM-L6-v2's shape (BERT, 6 layers, hidden 384, 12 heads).
MINILM = {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "max_position_embeddings": 512}
TARGETS = {"auto_vs_best": 1.05, "speedup_b1_t32": 5.0, "speedup_b256_t128": 6.0, "efficiency": 0.35}


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
    """An all-MiniLM-L6-v2-shaped sentence encoder with random weights and its tokenizer."""
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


def encoder_flops(batch: int, tokens: int, cfg: dict[str, int] = MINILM) -> float:
    """Multiply-adds x 2 of one forward pass: the dense layers and the attention products."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    dense = 2 * batch * tokens * (4 * h * h + 2 * h * i)
    attention = 2 * 2 * batch * tokens * tokens * h
    return float(layers * (dense + attention))


@dataclass
class ModelReport:
    model: str
    candidates: list[dict[str, Any]]
    chosen: str
    chosen_device: str
    worst_vs_best: dict[str, float] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict)
    targets: dict[str, tuple[float, float, bool]] = field(default_factory=dict)


def candidate_names(cuda: bool) -> list[str]:
    """What ``auto`` tries on this host (the CUDA variants only where CUDA is)."""
    from servegate import compilers

    names = list(compilers.auto_candidates())
    return names if cuda else [n for n in names if compilers.get_compiler(n).device == "cpu"]


def measure(model, label: str, workdir: Path, *, cuda: bool, batches: Sequence[int],
            tokens: Sequence[int], max_batch: int, names: Sequence[str] | None,
            budget_s: float) -> tuple[ModelReport, list]:
    """Every candidate compiled, parity-checked and timed at every shape; ``auto``'s choice."""
    from servegate.compilers.select import choose, evaluate, table_rows

    chosen_names = list(names) if names else candidate_names(cuda)
    candidates = evaluate(model, chosen_names, workdir / label, max_batch=max_batch,
                          batch_sizes=batches, tokens=tokens, threads=1, repeats=30,
                          budget_s=budget_s)
    best = choose(candidates, batches[-1])
    usable = [c for c in candidates if c.usable]
    worst = {}
    for shape in best.p50_ms:
        fastest = min(c.p50_ms[shape] for c in usable if shape in c.p50_ms)
        worst[shape.label] = best.p50_ms[shape] / fastest
    report = ModelReport(label, table_rows(candidates), best.backend,
                         getattr(best, "device", "cpu"), worst)
    return report, candidates


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
    chosen, eager = by_name[report.chosen], by_name.get("eager-cuda")
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
    shapes = sorted({k.removeprefix("p50_ms_") for row in report.candidates for k in row
                     if k.startswith("p50_ms_")}, key=lambda s: [int(p[1:]) for p in s.split("_")])
    header = ["backend", "device", "status", *shapes, "worst vs best", "cosine", "compile s"]
    print(f"\n{report.model}: auto chose {report.chosen} ({report.chosen_device})")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (no CUDA needed)")
    parser.add_argument("--quick", action="store_true", help="small shapes and short timings")
    parser.add_argument("--candidates", default="", help="comma list instead of auto's")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    use_checkout()
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("no CUDA device: nothing to check on a GPU (--cpu runs the same code on the CPU)")
        return 2
    names = [n.strip() for n in args.candidates.split(",") if n.strip()] or None
    batches = (1, 8) if args.quick else (1, 8, 64, 256)
    max_batch = max(batches)
    budget = 0.2 if args.quick else 1.0
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    ceiling = bf16_matmul_tflops("cuda") if cuda else None
    print(f"device: {device}; torch {torch.__version__}"
          + (f"; bf16 matmul ceiling {ceiling:.0f} TFLOP/s" if ceiling else ""))
    reports = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="servegate-gpu-") as tmp:
        workdir = Path(tmp)
        models = [("mlp", mlp_model(), (32, 128)),
                  ("encoder", encoder_model(workdir, max_length=128), (32, 128))]
        for label, model, tokens in models:
            report, candidates = measure(model, label, workdir, cuda=cuda, batches=batches,
                                         tokens=tokens, max_batch=max_batch, names=names, budget_s=budget)
            for c in candidates:
                if c.usable and c.artifact is not None and (getattr(c, "device", "cpu") == "cuda"
                                                            or c.status == "chosen"):
                    staged = workdir / label / f"served-{c.backend}"
                    report.served[c.backend] = serve(model, c.artifact, staged, 0 if cuda else None,
                                                     max_batch)
            check_targets(report, candidates, ceiling)
            if label == "mlp" and cuda:
                stays = report.chosen_device == "cpu"
                report.targets["mlp_stays_on_cpu"] = (float(stays), 1.0, stays)
            print_report(report)
            reports.append(report)
    seconds = time.perf_counter() - start
    print(f"\n{seconds:.0f} s in all")
    if args.out:
        args.out.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                        "bf16_ceiling_tflops": ceiling, "seconds": seconds,
                                        "models": [r.__dict__ for r in reports]}, indent=1, default=str))
    served_ok = all(v == "ok" for r in reports for v in r.served.values())
    targets_met = all(met for r in reports for _, _, met in r.targets.values())
    return 0 if served_ok and (targets_met or not cuda) else 1


if __name__ == "__main__":
    sys.exit(main())
