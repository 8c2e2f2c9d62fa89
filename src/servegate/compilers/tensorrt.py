"""``torch-tensorrt``: FP32/FP16 with ``torch_tensorrt.compile(..., ir="dynamo")`` (NVIDIA GPUs only).

Imported lazily; on a machine without CUDA or without torch_tensorrt it says so and why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from servegate.artifacts import CompiledArtifact
from servegate.errors import BackendUnavailable, CompileError
from servegate.sources.base import TorchModel


class TorchTensorRTCompiler:
    def __init__(self, precision: Literal["fp32", "fp16"] = "fp32") -> None:
        self.precision = precision
        self.name = "torch-tensorrt" if precision == "fp32" else "torch-tensorrt-fp16"

    def unavailable_reason(self) -> str | None:
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            return ("torch-TensorRT needs an NVIDIA GPU with CUDA and a CUDA build of torch; "
                    "this machine has no CUDA device")
        if importlib.util.find_spec("torch_tensorrt") is None:
            return "torch_tensorrt is not installed (pip install servegate[gpu] on a CUDA host)"
        return None

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        if reason := self.unavailable_reason():
            raise BackendUnavailable(f"{self.name}: {reason}")
        import torch
        import torch_tensorrt

        start = time.perf_counter()
        workdir.mkdir(parents=True, exist_ok=True)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        shape = tuple(model.input_shape)
        inputs = [torch_tensorrt.Input(min_shape=(1, *shape), opt_shape=(max(1, max_batch // 2), *shape),
                                       max_shape=(max_batch, *shape), dtype=torch.float32)]
        path = workdir / "model.trt.ep"
        try:
            compiled = torch_tensorrt.compile(model.module.eval().cuda(), ir="dynamo", inputs=inputs,
                                              enabled_precisions={dtype})
            example = torch.from_numpy(model.example_batch(2)).cuda()
            torch_tensorrt.save(compiled, str(path), inputs=[example])
        except Exception as exc:
            raise CompileError(f"torch-TensorRT compilation failed: {exc}") from exc
        return CompiledArtifact(backend=self.name, format="torch_tensorrt", path=path,
                                compile_seconds=time.perf_counter() - start)
