"""The interface of a compiler backend: a model + sample inputs -> an artifact the handler loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from servegate.packaging.spec import ModelFormat
from servegate.sources.base import TorchModel


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


class Compiler(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """None if this backend can run here, else why not."""

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        """Compile ``model`` into ``workdir``; raise ``CompileError`` on failure."""
