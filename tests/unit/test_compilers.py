"""Compiler backends: CPU ones compile with parity; auto measures and picks; broken ones are
rejected with the reason; GPU ones say why they cannot run here."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from servegate import compilers
from servegate.compilers.onnx import OnnxCompiler
from servegate.compilers.select import choose, evaluate, parse_compiler_option, table_rows
from servegate.errors import BackendUnavailable, CompileError, ConfigError


class _ShuffledOnnx:
    """A backend whose artifact changes the answers (its output rows are permuted)."""

    name = "broken"

    def unavailable_reason(self) -> None:
        return None

    def compile(self, model, workdir: Path, *, max_batch: int):
        import torch

        wrong = copy.deepcopy(model)
        wrong.module = copy.deepcopy(model.module)
        last = wrong.module.layers[-1]
        with torch.no_grad():
            last.weight.copy_(torch.roll(last.weight, 1, 0))
        return OnnxCompiler().compile(wrong, workdir, max_batch=max_batch)


@pytest.fixture
def with_broken(monkeypatch):
    registry = compilers._registry()
    monkeypatch.setattr(compilers, "_registry", lambda: registry | {"broken": _ShuffledOnnx})


def test_cpu_backends_pass_parity_and_auto_picks_the_fastest(digits, tmp_path: Path, with_broken) -> None:
    names = ["eager", "export", "onnx", "onnx-int8", "broken", "torch-tensorrt"]
    candidates = evaluate(digits, names, tmp_path, max_batch=64, repeats=10)
    by_name = {c.backend: c for c in candidates}
    for name in ("eager", "export", "onnx"):
        assert by_name[name].status == "passed", by_name[name].reason
        assert by_name[name].max_abs < 1e-4 and by_name[name].top1 == 1.0
        assert {s.label for s in by_name[name].p50_ms} == {"b1", "b8"}
    assert by_name["broken"].status == "rejected"
    assert "parity" in by_name["broken"].reason and "top-1" in by_name["broken"].reason
    int8 = by_name["onnx-int8"]  # gated like the others: kept only within the reduced limits
    if int8.status == "rejected":
        assert int8.reason.startswith("parity")
    else:
        from servegate.parity_limits import PARITY_LIMITS

        assert int8.status == "passed" and int8.top1 >= PARITY_LIMITS["reduced"].min_top1
    assert by_name["torch-tensorrt"].status == "skipped"
    assert "no CUDA device" in by_name["torch-tensorrt"].reason
    best = choose(candidates, 8)
    assert best.status == "chosen"
    passing = [c for c in candidates if c.usable]
    # the kept backend has the smallest worst-case slowdown against the fastest at any shape
    assert best.regret == min(c.regret for c in passing) and best.regret >= 1.0
    for c in passing:
        fastest = {s: min(o.p50_ms[s] for o in passing) for s in c.p50_ms}
        assert c.regret == pytest.approx(max(c.p50_ms[s] / fastest[s] for s in c.p50_ms))
    rows = table_rows(candidates)
    assert [r["backend"] for r in rows] == names and "p50_ms_b8" in rows[0]


def test_nothing_passing_is_an_error(digits, tmp_path: Path, with_broken) -> None:
    with pytest.raises(CompileError, match="no compiler backend passed"):
        choose(evaluate(digits, ["broken"], tmp_path, max_batch=8, repeats=2), 8)


def test_gpu_backends_explain_themselves_on_cpu(digits, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the CPU-only message cannot be shown")
    for name in ("torch-tensorrt", "torch-tensorrt-fp16"):
        with pytest.raises(BackendUnavailable, match="NVIDIA GPU with CUDA"):
            compilers.get_compiler(name).compile(digits, tmp_path, max_batch=8)


def test_compiler_option_parsing() -> None:
    assert parse_compiler_option("onnx") is None
    assert parse_compiler_option("eager, onnx") == ["eager", "onnx"]
    assert "aoti" in parse_compiler_option("auto")
    with pytest.raises(ConfigError):
        parse_compiler_option("tensorflow-magic")


def test_auto_keeps_the_smallest_worst_case_slowdown_over_all_shapes() -> None:
    """Fastest at batch 1 but 30% slower at batch 8 loses to 10% slower at 1 and fastest at 8."""
    from servegate.compilers.select import Candidate
    from servegate.compilers.shapes import Shape

    one, eight = Shape(1), Shape(8)
    spiky = Candidate("spiky", status="passed", p50_ms={one: 1.0, eight: 13.0})
    steady = Candidate("steady", status="passed", p50_ms={one: 1.1, eight: 10.0})
    slow = Candidate("slow", status="passed", p50_ms={one: 3.0, eight: 30.0})
    rejected = Candidate("rejected", status="rejected", p50_ms={one: 0.1, eight: 0.1})
    best = choose([spiky, steady, slow, rejected], 8)
    assert best is steady and steady.status == "chosen"
    assert steady.regret == pytest.approx(1.1) and spiky.regret == pytest.approx(1.3)
    assert slow.regret == pytest.approx(3.0) and spiky.status == "passed"


def test_timing_shapes_cross_batches_with_token_counts(digits, minilm) -> None:
    from servegate.compilers.shapes import Shape, timing_shapes

    assert timing_shapes(digits, (8, 1)) == [Shape(1), Shape(8)]
    assert [s.label for s in timing_shapes(minilm, (1, 8))] == ["b1_t32", "b1_t128", "b8_t32",
                                                                 "b8_t128"]
    (x,) = digits.inputs_at(5)
    assert x.shape == (5, 64) and x.dtype.name == "float32"
    ids, mask = minilm.inputs_at(3, 32)
    assert ids.shape == mask.shape == (3, 32) and mask.all()
    vocab = minilm.text_encoder().tokenizer
    assert {vocab.id_to_token(int(i)) for i in ids[:, 0]} == {"[CLS]"}
    assert {vocab.id_to_token(int(i)) for i in ids[:, -1]} == {"[SEP]"}
    assert "[PAD]" not in {vocab.id_to_token(int(i)) for i in ids.reshape(-1)}
    with pytest.raises(ConfigError, match="max_length"):
        minilm.inputs_at(1, 10_000)


def test_onnx_candidates_share_one_export_until_the_weights_change(tmp_path: Path) -> None:
    """``onnx`` and ``onnx-int8`` of one auto run quantise the graph exported once; a module
    changed in place in between (trained further) is exported again."""
    import torch
    from torch import nn

    from servegate.compilers.onnx import OnnxCompiler, OnnxInt8Compiler, fp32_graph
    from servegate.sources.base import TorchModel

    module = nn.Sequential(nn.Linear(8, 4)).eval()
    model = TorchModel(module=module, input_shape=(8,), labels=[], task="tensor",
                       eval_x=np.random.default_rng(0).random((4, 8)).astype(np.float32))
    fp32 = OnnxCompiler().compile(model, tmp_path / "onnx", max_batch=8)
    OnnxInt8Compiler().compile(model, tmp_path / "int8", max_batch=8)
    assert not (tmp_path / "int8" / "fp32.onnx").exists()  # quantised from the onnx candidate's
    shared = fp32_graph(model, 8, tmp_path / "again")
    assert shared.read_bytes() == fp32.path.read_bytes()
    with torch.no_grad():
        module[0].weight.add_(1.0)
    assert fp32_graph(model, 8, tmp_path / "after") == tmp_path / "after" / "fp32.onnx"


def test_onnx_compiles_print_no_third_party_noise(digits, tmp_path, capfd, caplog) -> None:
    """torch.onnx's torchvision notice and onnxruntime's pre-processing advice said nothing about
    the user's model and filled the terminal of every run (issue 20): they are dropped."""
    import logging

    from servegate.compilers import get_compiler

    with caplog.at_level(logging.WARNING):
        get_compiler("onnx-int8").compile(digits, tmp_path / "int8", max_batch=8)
    printed = capfd.readouterr().err + caplog.text
    assert "torchvision is not installed" not in printed
    assert "pre-processing before quantization" not in printed
    assert (tmp_path / "int8" / "model.int8.onnx").is_file()
