"""What a compiler hands to packaging: a model artifact on disk and the format its loader takes.

A neutral module below both ``compilers/`` (which make artifacts) and ``packaging/`` (which ships
them, recording ``format`` in ``servegate.json``): it imports nothing from either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: The artifact formats the handlers load (``handlers/sg_loaders.py``: one loader each).
ModelFormat = Literal[
    "state_dict", "exported_program", "aoti", "inductor", "torchscript", "onnx", "torch_tensorrt"
]


@dataclass(frozen=True)
class CompiledArtifact:
    """A compiled model on disk and what the handler needs to load it."""

    backend: str
    format: ModelFormat
    path: Path
    model_file: Path | None = None
    model_class: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    compile_seconds: float = 0.0
    #: Where the artifact runs and in what compute precision (``servegate.json`` ``device``/``dtype``).
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    #: torch.compile mode of an ``inductor`` artifact (None, "reduce-overhead", "max-autotune").
    compile_mode: str | None = None
    #: What a CUDA artifact was compiled on (``devices.built_for()``).
    built_for: dict[str, Any] | None = None
    #: Fixed shapes the artifact is run at ({"batch": [...], "tokens": [...]}), where it needs them.
    buckets: dict[str, list[int]] | None = None
    #: An ExportedProgram shipped beside a CUDA AOTI package, to recompile on another GPU.
    fallback: Path | None = None
