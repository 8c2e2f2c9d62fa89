"""Compiler backends: one module per backend behind ``Compiler`` (see ``base.py``);
``select.py`` measures them and keeps the fastest that passes parity.

Names follow ``<backend>[-<mode>][-<precision>][-cuda]`` (``variants.py``): ``aoti-bf16`` runs on
a CPU with bf16, ``eager-fp16-cuda`` on a GPU; ``torch-tensorrt*`` implies CUDA.

TensorFlow's compilers (``savedmodel``, ``xla``, ``tf-trt``) have their registry in ``tf.py``;
both frameworks' candidates go through ``select.measure`` and ``base.CompilerBase``."""

from __future__ import annotations

import functools
from collections.abc import Callable

from servegate.compilers.base import Compiler
from servegate.errors import ConfigError


def _registry() -> dict[str, Callable[[], Compiler]]:
    from servegate.compilers.aoti import AotiCompiler, InductorCompiler
    from servegate.compilers.eager import EagerCompiler
    from servegate.compilers.export import ExportCompiler
    from servegate.compilers.onnx import OnnxCompiler, OnnxInt8Compiler
    from servegate.compilers.tensorrt import TorchTensorRTCompiler
    from servegate.compilers.variants import Variant

    registry: dict[str, Callable[[], Compiler]] = {
        "eager": EagerCompiler,
        "export": ExportCompiler,
        "aoti": AotiCompiler,
        "onnx": OnnxCompiler,
        "onnx-int8": OnnxInt8Compiler,
        "inductor": InductorCompiler,
        "torch-tensorrt": TorchTensorRTCompiler,
        "torch-tensorrt-fp16": lambda: TorchTensorRTCompiler("fp16"),
        "onnx-cuda": lambda: OnnxCompiler("cuda"),
    }
    variants: list[tuple[type, Variant]] = [
        (EagerCompiler, Variant("bf16")),
        (AotiCompiler, Variant("bf16")),
        (EagerCompiler, Variant("fp32", "cuda")),
        (EagerCompiler, Variant("fp16", "cuda")),
        (EagerCompiler, Variant("bf16", "cuda")),
        (AotiCompiler, Variant("fp32", "cuda")),
        (AotiCompiler, Variant("fp16", "cuda")),
        (AotiCompiler, Variant("bf16", "cuda")),
        (InductorCompiler, Variant("fp16", "cuda")),
        (InductorCompiler, Variant("fp16", "cuda", "reduce-overhead")),
        (InductorCompiler, Variant("fp16", "cuda", "max-autotune")),
    ]
    for cls, variant in variants:
        registry[cls(variant).name] = functools.partial(cls, variant)
    return registry


#: Backends ``auto`` tries on any host, in this order (``inductor`` compiles in the worker:
#: opt-in only).
AUTO_CANDIDATES = ("eager", "export", "aoti", "onnx", "onnx-int8", "torch-tensorrt",
                   "torch-tensorrt-fp16")
#: Added where the CPU has native bf16 (AVX512_BF16 / AMX).
CPU_BF16_CANDIDATES = ("eager-bf16", "aoti-bf16")
#: Added where torch sees a CUDA device.
CUDA_CANDIDATES = ("eager-cuda", "eager-fp16-cuda", "eager-bf16-cuda", "aoti-cuda", "aoti-fp16-cuda",
                   "aoti-bf16-cuda", "inductor-fp16-cuda", "inductor-cudagraphs-fp16-cuda",
                   "inductor-max-autotune-fp16-cuda", "onnx-cuda")


def auto_candidates() -> list[str]:
    """What ``auto`` tries on this host: the CPU candidates, the bf16 CPU ones where the CPU has
    bf16, the CUDA variants where torch sees a GPU."""
    import torch

    from servegate.devices import cpu_supports_bf16

    names = list(AUTO_CANDIDATES)
    if cpu_supports_bf16():
        names += CPU_BF16_CANDIDATES
    if torch.cuda.is_available():
        names += CUDA_CANDIDATES
    return names


def compiler_names() -> list[str]:
    return list(_registry())


def get_compiler(name: str) -> Compiler:
    """The compiler backend called ``name``."""
    factory = _registry().get(name)
    if factory is None:
        raise ConfigError(f"unknown compiler {name!r}; known: {', '.join(_registry())}, auto")
    return factory()


__all__ = ["AUTO_CANDIDATES", "CPU_BF16_CANDIDATES", "CUDA_CANDIDATES", "Compiler",
           "auto_candidates", "compiler_names", "get_compiler"]
