"""Compiler backends: one module per backend behind ``Compiler`` (see ``base.py``);
``select.py`` measures them and keeps the fastest that passes parity."""

from __future__ import annotations

from collections.abc import Callable

from servegate.compilers.base import Compiler
from servegate.errors import ConfigError


def _registry() -> dict[str, Callable[[], Compiler]]:
    from servegate.compilers.aoti import AotiCompiler, InductorCompiler
    from servegate.compilers.eager import EagerCompiler
    from servegate.compilers.export import ExportCompiler
    from servegate.compilers.onnx import OnnxCompiler, OnnxInt8Compiler
    from servegate.compilers.tensorrt import TorchTensorRTCompiler

    return {
        "eager": EagerCompiler,
        "export": ExportCompiler,
        "aoti": AotiCompiler,
        "onnx": OnnxCompiler,
        "onnx-int8": OnnxInt8Compiler,
        "inductor": InductorCompiler,
        "torch-tensorrt": TorchTensorRTCompiler,
        "torch-tensorrt-fp16": lambda: TorchTensorRTCompiler("fp16"),
    }


#: Backends ``auto`` tries, in this order (``inductor`` compiles in the worker: opt-in only).
AUTO_CANDIDATES = ("eager", "export", "aoti", "onnx", "onnx-int8", "torch-tensorrt",
                   "torch-tensorrt-fp16")


def compiler_names() -> list[str]:
    return list(_registry())


def get_compiler(name: str) -> Compiler:
    """The compiler backend called ``name``."""
    factory = _registry().get(name)
    if factory is None:
        raise ConfigError(f"unknown compiler {name!r}; known: {', '.join(_registry())}, auto")
    return factory()


__all__ = ["AUTO_CANDIDATES", "Compiler", "compiler_names", "get_compiler"]
