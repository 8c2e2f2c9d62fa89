"""``export``: a torch.export ExportedProgram (``.pt2``) with a dynamic batch dimension."""

from __future__ import annotations

import time
from pathlib import Path

from servegate.compilers.base import CompiledArtifact
from servegate.errors import CompileError
from servegate.sources.base import TorchModel


def export_program(model: TorchModel, max_batch: int):  # -> torch.export.ExportedProgram
    """torch.export with the batch dimension dynamic in [1, max_batch]."""
    import torch

    example = torch.from_numpy(model.example_batch(2))
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    try:
        return torch.export.export(model.module.eval(), (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise CompileError(f"torch.export failed: {exc}") from exc


class ExportCompiler:
    name = "export"

    def unavailable_reason(self) -> str | None:
        return None

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        import torch

        start = time.perf_counter()
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "model.pt2"
        torch.export.save(export_program(model, max_batch), path)
        return CompiledArtifact(backend=self.name, format="exported_program", path=path,
                                compile_seconds=time.perf_counter() - start)
