"""Compiler backends: one module per backend behind ``Compiler`` (see ``base.py``)."""

from __future__ import annotations

from servegate.compilers.base import CompiledArtifact, Compiler
from servegate.errors import ConfigError


def get_compiler(name: str) -> Compiler:
    """The compiler backend called ``name``."""
    if name == "eager":
        from servegate.compilers.eager import EagerCompiler

        return EagerCompiler()
    if name == "export":
        from servegate.compilers.export import ExportCompiler

        return ExportCompiler()
    raise ConfigError(f"unknown compiler {name!r}; known: eager, export")


__all__ = ["CompiledArtifact", "Compiler", "get_compiler"]
