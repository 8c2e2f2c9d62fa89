"""``onnx`` (dynamo export to one file, run by onnxruntime) and ``onnx-int8`` (dynamic quantisation)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from servegate.artifacts import CompiledArtifact
from servegate.compilers.export import example_tensors
from servegate.compilers.variants import NO_CUDA
from servegate.devices import built_for
from servegate.errors import BackendUnavailable, CompileError
from servegate.sources.base import TorchModel


def _missing(*modules: str) -> str | None:
    import importlib.util

    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(absent)} (pip install servegate[torch])" if absent else None


class OnnxCompiler:
    """``onnx`` on onnxruntime's CPU provider, or ``onnx-cuda`` on its CUDAExecutionProvider
    (onnxruntime-gpu): the same graph, ``device`` recorded for the loader."""

    def __init__(self, device: Literal["cpu", "cuda"] = "cpu") -> None:
        self.device = device
        self.name = "onnx" if device == "cpu" else "onnx-cuda"

    def unavailable_reason(self) -> str | None:
        if missing := _missing("onnx", "onnxscript", "onnxruntime"):
            return missing
        if self.device == "cuda":
            import onnxruntime
            import torch

            if not torch.cuda.is_available():
                return NO_CUDA
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return ("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu "
                        "instead of onnxruntime)")
        return None

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        import torch

        if reason := self.unavailable_reason():
            raise BackendUnavailable(f"{self.name}: {reason}")
        start = time.perf_counter()
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "model.onnx"
        try:
            if model.program is not None:  # already exported, with its own dynamic dimensions
                torch.onnx.export(model.program, example_tensors(model), str(path), dynamo=True,
                                  external_data=False, verbose=False)
            else:
                torch.onnx.export(model.module.eval(), example_tensors(model), str(path), dynamo=True,
                                  dynamic_shapes=model.dynamic_shapes(max_batch), external_data=False,
                                  verbose=False)
        except Exception as exc:
            raise CompileError(f"onnx export failed: {exc}") from exc
        built = {"device": "cuda", "built_for": built_for("cuda")} if self.device == "cuda" else {}
        return CompiledArtifact(backend=self.name, format="onnx", path=path,
                                compile_seconds=time.perf_counter() - start, **built)


class OnnxInt8Compiler:
    """Dynamic INT8 quantisation (per channel: per-tensor lost accuracy in DESIGN.md's measures)."""

    name = "onnx-int8"
    device = "cpu"

    def unavailable_reason(self) -> str | None:
        return _missing("onnx", "onnxscript", "onnxruntime")

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        start = time.perf_counter()
        fp32 = OnnxCompiler().compile(model, workdir / "fp32", max_batch=max_batch)
        path = workdir / "model.int8.onnx"
        try:
            quantize_dynamic(str(fp32.path), str(path), per_channel=True, weight_type=QuantType.QInt8)
        except Exception as exc:
            raise CompileError(f"onnx int8 quantisation failed: {exc}") from exc
        return CompiledArtifact(backend=self.name, format="onnx", path=path,
                                compile_seconds=time.perf_counter() - start)
