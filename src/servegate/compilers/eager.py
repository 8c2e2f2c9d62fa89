"""``eager``: the reference. A state_dict + model file when the class can ship, else torch.export.

Variants (``eager-bf16``, ``eager-fp16-cuda``, ...) ship the same fp32 weights and record the
device and dtype in ``servegate.json``: the loader moves and casts the model and floating inputs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from servegate.artifacts import CompiledArtifact
from servegate.compilers.base import CompilerBase
from servegate.compilers.export import variant_fields
from servegate.compilers.variants import FP32_CPU, Variant
from servegate.errors import CompileError
from servegate.sources.base import TorchModel


class EagerCompiler(CompilerBase):
    def __init__(self, variant: Variant = FP32_CPU) -> None:
        if variant.compile_mode is not None:
            raise ValueError("eager takes no torch.compile mode")
        self.variant = variant
        self.name = variant.name("eager")
        self.device: str = variant.device

    def unavailable_reason(self) -> str | None:
        return self.variant.unavailable_reason()

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        import torch

        start = self._begin(workdir)
        if model.model_file is None or model.model_class is None:
            from servegate.compilers.export import ExportCompiler

            return ExportCompiler(self.variant).compile(model, workdir, max_batch=max_batch)
        path = workdir / "model.pt"
        try:
            torch.save(model.module.state_dict(), path)
        except Exception as exc:
            raise CompileError(f"cannot save the state_dict: {exc}") from exc
        artifact = CompiledArtifact(
            backend=self.name, format="state_dict", path=path, model_file=model.model_file,
            model_class=model.model_class, model_kwargs=dict(model.model_kwargs),
            compile_seconds=time.perf_counter() - start,
        )
        return dataclasses.replace(artifact, **variant_fields(self.variant))
