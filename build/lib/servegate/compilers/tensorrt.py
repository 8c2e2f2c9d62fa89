"""``torch-tensorrt``: FP32/FP16 with ``torch_tensorrt.compile(..., ir="dynamo")`` (NVIDIA GPUs only).

One ``torch_tensorrt.Input`` per model input, each in its own dtype (a text model's token ids and
mask are int64), dynamic in the batch ([1, max_batch]) and for text in the token count
([1, max_length]). TensorRT's timing cache lives in the active compile cache (``cache.py``) when
torch_tensorrt takes ``timing_cache_path``. An engine runs only on the GPU model and TensorRT
version that built it (``built_for``).

Imported lazily; on a machine without CUDA or without torch_tensorrt it says so and why.
"""

from __future__ import annotations

import copy
import inspect
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from servegate.artifacts import CompiledArtifact
from servegate.compilers.shapes import bucket_sizes
from servegate.errors import BackendUnavailable, CompileError
from servegate.sources.base import TorchModel


def input_ranges(model: TorchModel, max_batch: int) -> list[tuple[tuple[int, ...], tuple[int, ...],
                                                                  tuple[int, ...], np.dtype]]:
    """(min, opt, max shape, dtype) of each example input: the batch in [1, max_batch]
    (optimised for half of it), for text the token dimension in [1, max_length] (optimised for
    128 or less); other dimensions as in the example."""
    max_batch = max(1, max_batch)
    opt_batch = max(1, max_batch // 2)
    ranges = []
    for array in model.example_inputs(2):
        rest = tuple(int(d) for d in array.shape[1:])
        lo, opt, hi = (1, *rest), (opt_batch, *rest), (max_batch, *rest)
        if model.is_text and array.ndim >= 2:
            limit = int(model.max_length or 128)
            lo = (1, 1, *rest[1:])
            opt = (opt_batch, min(128, limit), *rest[1:])
            hi = (max_batch, limit, *rest[1:])
        ranges.append((lo, opt, hi, array.dtype))
    return ranges


def timing_cache_kwargs(compile_fn: Any) -> dict[str, str]:
    """``timing_cache_path`` of the active compile cache, where ``compile_fn`` takes it."""
    from servegate.compilers.cache import active_cache

    cache = active_cache()
    if cache is None:
        return {}
    try:
        params = inspect.signature(compile_fn).parameters
    except (TypeError, ValueError):
        return {}
    if "timing_cache_path" not in params:
        return {}
    cache.tensorrt_timing_cache.parent.mkdir(parents=True, exist_ok=True)
    return {"timing_cache_path": str(cache.tensorrt_timing_cache)}


class TorchTensorRTCompiler:
    device = "cuda"

    def __init__(self, precision: Literal["fp32", "fp16"] = "fp32") -> None:
        self.precision = precision
        self.name = "torch-tensorrt" if precision == "fp32" else "torch-tensorrt-fp16"

    def unavailable_reason(self) -> str | None:
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            return ("torch-TensorRT needs an NVIDIA GPU with CUDA and a CUDA build of torch; "
                    "this machine has no CUDA device")
        if importlib.util.find_spec("torch_tensorrt") is None:
            return "torch_tensorrt is not installed (pip install servegate[gpu] on a CUDA host)"
        return None

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        if reason := self.unavailable_reason():
            raise BackendUnavailable(f"{self.name}: {reason}")
        import torch
        import torch_tensorrt

        from servegate.devices import built_for

        start = time.perf_counter()
        workdir.mkdir(parents=True, exist_ok=True)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        inputs = [torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi,
                                       dtype=torch.from_numpy(np.zeros(0, dt)).dtype)
                  for lo, opt, hi, dt in input_ranges(model, max_batch)]
        path = workdir / "model.trt.ep"
        try:
            module = copy.deepcopy(model.module).eval().cuda()  # the source stays on the CPU
            compiled = torch_tensorrt.compile(
                module, ir="dynamo", inputs=inputs, enabled_precisions={dtype},
                **timing_cache_kwargs(torch_tensorrt.dynamo.compile))
            examples = [torch.from_numpy(np.ascontiguousarray(a)).cuda()
                        for a in model.example_inputs(2)]
            torch_tensorrt.save(compiled, str(path), inputs=examples)
        except Exception as exc:
            raise CompileError(f"torch-TensorRT compilation failed: {exc}") from exc
        return CompiledArtifact(backend=self.name, format="torch_tensorrt", path=path, device="cuda",
                                built_for=built_for("cuda"), buckets=bucket_sizes(model, max_batch),
                                compile_seconds=time.perf_counter() - start)
