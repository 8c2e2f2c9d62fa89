"""``export``: a torch.export ExportedProgram (``.pt2``) with a dynamic batch dimension."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from servegate.artifacts import CompiledArtifact
from servegate.compilers.base import CompilerBase
from servegate.compilers.variants import FP32_CPU, Variant
from servegate.errors import CompileError
from servegate.sources.base import TorchModel


def example_tensors(model: TorchModel) -> tuple:  # -> tuple[torch.Tensor, ...]
    """The model's real example inputs (every positional input) as tensors."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs(2))


def export_program(model: TorchModel, max_batch: int, variant: Variant = FP32_CPU):
    """The model's ExportedProgram when its source is one (compiled from directly, not
    re-exported); else torch.export with the model's dynamic dimensions
    (``TorchModel.dynamic_shapes``): the batch in [1, max_batch], and for text models the
    sequence length too. A non-default ``variant`` exports the module moved to its device and cast
    to its dtype, with floating example inputs cast likewise (an ExportedProgram source is
    re-exported from its module)."""
    import torch

    if model.program is not None and variant.default:
        return model.program
    try:
        module = model.program.module() if model.program is not None else model.module.eval()
        tensors = example_tensors(model)
        if not variant.default:
            module, tensors = variant.place(module, tensors)
        return torch.export.export(module, tensors, dynamic_shapes=model.dynamic_shapes(max_batch))
    except Exception as exc:
        raise CompileError(f"torch.export failed: {exc}") from exc


def variant_fields(variant: Variant) -> dict:
    """The ``CompiledArtifact`` fields a variant sets (``built_for`` on CUDA)."""
    fields: dict = {"device": variant.device, "dtype": variant.dtype_name}
    if variant.device == "cuda":
        from servegate.devices import built_for

        fields["built_for"] = built_for("cuda")
    return fields


class ExportCompiler(CompilerBase):
    def __init__(self, variant: Variant = FP32_CPU) -> None:
        self.variant = variant
        self.name = variant.name("export")
        self.device: str = variant.device

    def unavailable_reason(self) -> str | None:
        return self.variant.unavailable_reason()

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        import torch

        start = self._begin(workdir)
        path = workdir / "model.pt2"
        torch.export.save(export_program(model, max_batch, self.variant), path)
        artifact = CompiledArtifact(backend=self.name, format="exported_program", path=path,
                                    compile_seconds=time.perf_counter() - start)
        return dataclasses.replace(artifact, **variant_fields(self.variant))
