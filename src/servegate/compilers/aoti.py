"""``aoti`` (an AOTInductor package compiled ahead of time) and ``inductor`` (torch.compile in the
worker, from an ExportedProgram)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from servegate.artifacts import CompiledArtifact
from servegate.compilers.export import ExportCompiler, export_program
from servegate.errors import CompileError
from servegate.sources.base import TorchModel


class AotiCompiler:
    name = "aoti"

    def unavailable_reason(self) -> str | None:
        import shutil

        return None if shutil.which("g++") or shutil.which("c++") else "no C++ compiler on PATH"

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        import torch._inductor

        start = time.perf_counter()
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "model.aoti.pt2"
        try:
            torch._inductor.aoti_compile_and_package(export_program(model, max_batch),
                                                     package_path=str(path))
        except Exception as exc:
            raise CompileError(f"AOTInductor compilation failed: {exc}") from exc
        return CompiledArtifact(backend=self.name, format="aoti", path=path,
                                compile_seconds=time.perf_counter() - start)


class InductorCompiler:
    """torch.compile inside the worker: compiles on start and per new batch size."""

    name = "inductor"

    def unavailable_reason(self) -> str | None:
        return AotiCompiler().unavailable_reason()

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        """The ``export`` artifact, which the worker loads and compiles with torch.compile."""
        exported = ExportCompiler().compile(model, workdir, max_batch=max_batch)
        return dataclasses.replace(exported, backend=self.name, format="inductor")
