"""``torch-tensorrt``: FP32/FP16 with torch_tensorrt's dynamo path (NVIDIA GPUs only).

The shapes come from one pure function, ``tensorrt_profile``: every input shares one batch
dimension, and a text model's ``input_ids`` and ``attention_mask`` share one sequence dimension
(torch_tensorrt's own inference from ``Input`` objects gives each input its own, which the model
contradicts). The ranges are the shape buckets the worker pads to: the batch in [1, max_batch],
the sequence from the smallest token bucket (never below the export's minimum of 2) to
``max_length``; TensorRT tunes for ``opt``, the common serving size (the default TorchServe batch
of 8 rows, 128 tokens), rounded up to a bucket. The module is exported with those shared
``Dim``s, compiled from that program, and saved with the same ``dynamic_shapes`` (saving from
example tensors alone re-traces at the example's shape and rejects other batches).

FP16 casts the module and its floating inputs to float16: with ``use_explicit_typing`` (the
default of recent torch_tensorrt) an fp32 module builds an fp32 engine whatever
``enabled_precisions`` says. TensorRT's timing cache lives in the active compile cache
(``cache.py``) when torch_tensorrt takes ``timing_cache_path``. An engine runs only on the GPU
model and TensorRT version that built them: both are in ``built_for``.

Imported lazily; on a machine without CUDA or without torch_tensorrt it says so and why.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from servegate.artifacts import CompiledArtifact
from servegate.compilers.shapes import bucket_sizes
from servegate.errors import BackendUnavailable, CompileError
from servegate.sources.base import TorchModel

#: The serving size TensorRT tunes for (``opt``): TorchServe's default batch (``BatchingConfig``)
#: and a common sentence length, each rounded up to a bucket.
OPT_BATCH = 8
OPT_TOKENS = 128
#: The export's smallest sequence length (``TorchModel.dynamic_shapes``).
EXPORT_MIN_TOKENS = 2


@dataclass(frozen=True)
class InputProfile:
    """One model input: its min/opt/max shapes, dtype, and which named dimension each dynamic
    axis is (``{0: "batch", 1: "sequence"}``)."""

    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    dtype: np.dtype
    axes: dict[int, str]


@dataclass(frozen=True)
class TensorRTProfile:
    inputs: tuple[InputProfile, ...]
    #: name -> (min, max) of each shared dimension.
    dims: dict[str, tuple[int, int]]


def _bucket_at_least(sizes: Sequence[int], wanted: int) -> int:
    return next((s for s in sorted(sizes) if s >= wanted), max(sizes))


def tensorrt_profile(examples: Sequence[tuple[tuple[int, ...], np.dtype]], *, is_text: bool,
                     buckets: dict[str, list[int]], opt_batch: int = OPT_BATCH,
                     opt_tokens: int = OPT_TOKENS) -> TensorRTProfile:
    """The dynamic shapes of a model's inputs (``examples``: each input's example shape and
    dtype) from its shape buckets: one shared batch dimension; for a text model's 2-D inputs one
    shared sequence dimension from the smallest token bucket (at least the export's minimum) to
    the largest; ``opt`` at the common serving size rounded up to a bucket. Other dimensions keep
    the example's size."""
    batches = sorted(buckets["batch"])
    dims = {"batch": (batches[0], max(2, batches[-1]))}
    opt_b = _bucket_at_least(batches, min(opt_batch, batches[-1]))
    tokens = sorted(buckets.get("tokens") or [])
    if is_text and tokens:
        low = max(EXPORT_MIN_TOKENS, tokens[0])
        dims["sequence"] = (low, max(low + 1, tokens[-1]))
        opt_t = _bucket_at_least(tokens, min(max(opt_tokens, low), tokens[-1]))
    profiles = []
    for shape, dtype in examples:
        rest = tuple(int(d) for d in shape[1:])
        axes = {0: "batch"}
        lo, opt, hi = [dims["batch"][0], *rest], [opt_b, *rest], [dims["batch"][1], *rest]
        if "sequence" in dims and len(shape) >= 2:
            axes[1] = "sequence"
            lo[1], opt[1], hi[1] = dims["sequence"][0], opt_t, dims["sequence"][1]
        profiles.append(InputProfile(tuple(lo), tuple(opt), tuple(hi), np.dtype(dtype), axes))
    return TensorRTProfile(tuple(profiles), dims)


def input_ranges(model: TorchModel, max_batch: int) -> list[tuple[tuple[int, ...], tuple[int, ...],
                                                                  tuple[int, ...], np.dtype]]:
    """(min, opt, max shape, dtype) of each model input (``tensorrt_profile`` of its buckets)."""
    profile = model_profile(model, max_batch)
    return [(p.min_shape, p.opt_shape, p.max_shape, p.dtype) for p in profile.inputs]


def model_profile(model: TorchModel, max_batch: int) -> TensorRTProfile:
    examples = [(a.shape, a.dtype) for a in model.example_inputs(2)]
    return tensorrt_profile(examples, is_text=bool(model.is_text),
                            buckets=bucket_sizes(model, max(1, max_batch)))


def dynamic_shapes(profile: TensorRTProfile) -> tuple[dict[int, Any], ...]:
    """torch.export ``dynamic_shapes`` of the profile: one ``Dim`` object per shared dimension."""
    import torch

    dims = {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, hi) in profile.dims.items()}
    return tuple({axis: dims[name] for axis, name in p.axes.items()} for p in profile.inputs)


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
        import torch_tensorrt

        return self.build(model, workdir, max_batch=max_batch, trt=torch_tensorrt)

    def build(self, model: TorchModel, workdir: Path, *, max_batch: int, trt: Any,
              device: str = "cuda") -> CompiledArtifact:
        """The compile itself, with the ``torch_tensorrt`` module ``trt`` on ``device`` (tests
        run the wiring on the CPU with a stand-in ``trt``): the module exported with the
        profile's shared ``Dim``s, compiled from that program, saved with the same
        ``dynamic_shapes``."""
        import torch

        from servegate.devices import built_for

        start = time.perf_counter()
        workdir.mkdir(parents=True, exist_ok=True)
        half = self.precision == "fp16"
        profile = model_profile(model, max_batch)
        shared = dynamic_shapes(profile)
        inputs = [trt.Input(min_shape=p.min_shape, opt_shape=p.opt_shape, max_shape=p.max_shape,
                            dtype=_torch_dtype(p.dtype, half)) for p in profile.inputs]
        path = workdir / "model.trt.ep"
        try:
            module = copy.deepcopy(model.module).eval().to(device)  # the source stays on the CPU
            if half:
                module = module.half()
            examples = _examples(model, profile, half, device)
            program = torch.export.export(module, examples, dynamic_shapes=shared)
            compiled = trt.dynamo.compile(program, inputs=inputs,
                                          **precision_kwargs(trt.dynamo.compile, half),
                                          **timing_cache_kwargs(trt.dynamo.compile))
            save_kwargs = ({"dynamic_shapes": shared} if _takes(trt.save, "dynamic_shapes")
                           else {})
            trt.save(compiled, str(path), arg_inputs=list(examples), **save_kwargs)
        except Exception as exc:
            raise CompileError(f"torch-TensorRT compilation failed: {exc}") from exc
        return CompiledArtifact(backend=self.name, format="torch_tensorrt", path=path, device="cuda",
                                dtype="float16" if half else "float32",
                                built_for=built_for("cuda") | tensorrt_versions(),
                                buckets=bucket_sizes(model, max_batch),
                                compile_seconds=time.perf_counter() - start)


def _takes(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def precision_kwargs(compile_fn: Any, half: bool) -> dict[str, Any]:
    """How to ask ``compile_fn`` (``torch_tensorrt.dynamo.compile``) for the module's own
    precision. With ``use_explicit_typing`` (recent versions; on by default there) the engine
    follows the module's dtypes, and ``enabled_precisions`` may only be float32: the module is
    cast to float16 for FP16 instead. Older versions take ``enabled_precisions``."""
    import torch

    if _takes(compile_fn, "use_explicit_typing"):
        return {"use_explicit_typing": True}
    return {"enabled_precisions": {torch.float16 if half else torch.float32}}


def tensorrt_versions() -> dict[str, str | None]:
    """The TensorRT and torch_tensorrt versions an engine was built with (``built_for``)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for key, package in (("tensorrt", "tensorrt"), ("torch_tensorrt", "torch-tensorrt")):
        try:
            versions[key] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def _torch_dtype(dtype: np.dtype, half: bool):  # -> torch.dtype
    import torch

    if half and dtype.kind == "f":
        return torch.float16
    return torch.from_numpy(np.zeros(0, dtype)).dtype


def _examples(model: TorchModel, profile: TensorRTProfile, half: bool,
              device: str = "cuda") -> tuple:
    """Real inputs on ``device`` at the profile's ``opt`` shape, inside every range (the model's
    own example may be shorter than the smallest token bucket); floating ones in float16 for FP16."""
    import torch

    opt = profile.inputs[0].opt_shape
    arrays = model.inputs_at(opt[0], opt[1] if "sequence" in profile.dims else None)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device, _torch_dtype(p.dtype, half))
                 for a, p in zip(arrays, profile.inputs, strict=True))
