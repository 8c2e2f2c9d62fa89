"""``eager``: the reference. A state_dict + model file when the class can ship, else torch.export."""

from __future__ import annotations

import time
from pathlib import Path

from servegate.artifacts import CompiledArtifact
from servegate.errors import CompileError
from servegate.sources.base import TorchModel


class EagerCompiler:
    name = "eager"

    def unavailable_reason(self) -> str | None:
        return None

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        import torch

        start = time.perf_counter()
        workdir.mkdir(parents=True, exist_ok=True)
        if model.model_file is None or model.model_class is None:
            from servegate.compilers.export import ExportCompiler

            return ExportCompiler().compile(model, workdir, max_batch=max_batch)
        path = workdir / "model.pt"
        try:
            torch.save(model.module.state_dict(), path)
        except Exception as exc:
            raise CompileError(f"cannot save the state_dict: {exc}") from exc
        return CompiledArtifact(
            backend=self.name, format="state_dict", path=path, model_file=model.model_file,
            model_class=model.model_class, model_kwargs=dict(model.model_kwargs),
            compile_seconds=time.perf_counter() - start,
        )
