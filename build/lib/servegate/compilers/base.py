"""The interface of a compiler backend: a model + sample inputs -> an artifact the handler loads."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from servegate.artifacts import CompiledArtifact
from servegate.sources.base import TorchModel


class Compiler(Protocol):
    name: str
    #: Where its artifacts run: "cpu" or "cuda".
    device: str

    def unavailable_reason(self) -> str | None:
        """None if this backend can run here, else why not."""

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        """Compile ``model`` into ``workdir``; raise ``CompileError`` on failure."""
