"""Compiler backends: CPU ones compile with parity; auto measures and picks; broken ones are
rejected with the reason; GPU ones say why they cannot run here."""

from __future__ import annotations

import copy
from pathlib import Path

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
        assert set(by_name[name].p50_ms) == {1, 8}
    assert by_name["broken"].status == "rejected"
    assert "parity" in by_name["broken"].reason and "top-1" in by_name["broken"].reason
    assert by_name["onnx-int8"].status in ("passed", "rejected")  # gated, never silently kept
    assert by_name["torch-tensorrt"].status == "skipped"
    assert "no CUDA device" in by_name["torch-tensorrt"].reason
    best = choose(candidates, 8)
    assert best.status == "chosen"
    passing = [c for c in candidates if c.usable]
    assert best.rows_per_s[8] == max(c.rows_per_s[8] for c in passing)
    rows = table_rows(candidates, (1, 8))
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
