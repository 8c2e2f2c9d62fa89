"""``export``: a torch.export ExportedProgram (``.pt2``) with a dynamic batch dimension."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from servegate.artifacts import CompiledArtifact
from servegate.errors import CompileError
from servegate.sources.base import TorchModel


def example_tensors(model: TorchModel) -> tuple:  # -> tuple[torch.Tensor, ...]
    """The model's real example inputs (every positional input) as tensors."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs(2))


def export_program(model: TorchModel, max_batch: int):  # -> torch.export.ExportedProgram
    """The model's ExportedProgram when its source is one (compiled from directly, not
    re-exported); else torch.export with the model's dynamic dimensions
    (``TorchModel.dynamic_shapes``): the batch in [1, max_batch], and for text models the
    sequence length too."""
    import torch

    if model.program is not None:
        return model.program
    try:
        return torch.export.export(model.module.eval(), example_tensors(model),
                                   dynamic_shapes=model.dynamic_shapes(max_batch))
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
