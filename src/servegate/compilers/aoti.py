"""``aoti`` (an AOTInductor package compiled ahead of time) and ``inductor`` (torch.compile in the
worker, from an ExportedProgram), each in precision/device variants (``variants.py``).

A CUDA AOTI package runs only on GPUs of the compute capability it was built for: the
ExportedProgram it was compiled from ships beside it (``fallback``) so a worker on another GPU can
recompile."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from servegate.artifacts import CompiledArtifact
from servegate.compilers.base import CompilerBase
from servegate.compilers.export import ExportCompiler, export_program, variant_fields
from servegate.compilers.shapes import bucket_sizes
from servegate.compilers.variants import FP32_CPU, Variant
from servegate.errors import BackendUnavailable, CompileError
from servegate.sources.base import TorchModel


def _cxx_missing() -> str | None:
    import shutil

    return None if shutil.which("g++") or shutil.which("c++") else "no C++ compiler on PATH"


class AotiCompiler(CompilerBase):
    def __init__(self, variant: Variant = FP32_CPU) -> None:
        if variant.compile_mode is not None:
            raise ValueError("aoti takes no torch.compile mode")
        self.variant = variant
        self.name = variant.name("aoti")
        self.device: str = variant.device

    def unavailable_reason(self) -> str | None:
        return self.variant.unavailable_reason() or _cxx_missing()

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        import torch
        import torch._inductor

        start = self._begin(workdir)
        path = workdir / "model.aoti.pt2"
        program = export_program(model, max_batch, self.variant)
        fallback = None
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
            if self.variant.device == "cuda":
                fallback = workdir / "model.fallback.pt2"
                torch.export.save(program, fallback)
        except Exception as exc:
            raise CompileError(f"AOTInductor compilation failed: {exc}") from exc
        artifact = CompiledArtifact(backend=self.name, format="aoti", path=path, fallback=fallback,
                                    compile_seconds=time.perf_counter() - start)
        return dataclasses.replace(artifact, **variant_fields(self.variant))


class InductorCompiler(CompilerBase):
    """torch.compile inside the worker: compiles on start and per new batch size (with CUDA graphs,
    ``reduce-overhead`` and ``max-autotune``, at fixed shape buckets the worker pads to)."""

    def __init__(self, variant: Variant = FP32_CPU) -> None:
        self.variant = variant
        self.name = variant.name("inductor")
        self.device: str = variant.device

    def unavailable_reason(self) -> str | None:
        return self.variant.unavailable_reason() or _cxx_missing()

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        """The ``export`` artifact, which the worker loads and compiles with torch.compile."""
        if reason := self.unavailable_reason():
            raise BackendUnavailable(f"{self.name}: {reason}")
        exported = ExportCompiler(self.variant).compile(model, workdir, max_batch=max_batch)
        buckets = bucket_sizes(model, max_batch) if self.variant.cuda_graphs else None
        return dataclasses.replace(exported, backend=self.name, format="inductor",
                                   compile_mode=self.variant.compile_mode, buckets=buckets)
