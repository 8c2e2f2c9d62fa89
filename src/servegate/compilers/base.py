"""The interface of a compiler backend: a model + sample inputs -> an artifact the handler loads;
and the prologue every backend of every framework shares (``CompilerBase``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from servegate.artifacts import CompiledArtifact
from servegate.errors import BackendUnavailable
from servegate.sources.base import TorchModel


class Compiler(Protocol):
    name: str
    #: Where its artifacts run: "cpu" or "cuda".
    device: str

    def unavailable_reason(self) -> str | None:
        """None if this backend can run here, else why not."""

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        """Compile ``model`` into ``workdir``; raise ``CompileError`` on failure."""


class CompilerBase:
    """What a backend of any framework does before it compiles: refuse clearly where it cannot
    run here, make its directory, start the clock."""

    name: str
    device: str = "cpu"

    def unavailable_reason(self) -> str | None:
        return None

    def _begin(self, workdir: Path) -> float:
        """``BackendUnavailable`` (naming the backend and why) where it cannot run here; else
        ``workdir`` made and the start time (``time.perf_counter``)."""
        if reason := self.unavailable_reason():
            raise BackendUnavailable(f"{self.name}: {reason}")
        workdir.mkdir(parents=True, exist_ok=True)
        return time.perf_counter()
