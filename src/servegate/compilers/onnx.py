"""``onnx`` (dynamo export to one file, run by onnxruntime) and ``onnx-int8`` (dynamic quantisation)."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from servegate.artifacts import CompiledArtifact
from servegate.compilers.base import CompilerBase
from servegate.compilers.export import example_tensors
from servegate.compilers.variants import NO_CUDA
from servegate.devices import built_for
from servegate.errors import CompileError
from servegate.sources.base import TorchModel


def _missing(*modules: str) -> str | None:
    import importlib.util

    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(absent)} (pip install servegate[torch])" if absent else None


class OnnxCompiler(CompilerBase):
    """``onnx`` on onnxruntime's CPU provider, or ``onnx-cuda`` on its CUDAExecutionProvider
    (onnxruntime-gpu): the same graph, ``device`` recorded for the loader."""

    def __init__(self, device: Literal["cpu", "cuda"] = "cpu") -> None:
        self.device: str = device
        self.name = "onnx" if device == "cpu" else "onnx-cuda"

    def unavailable_reason(self) -> str | None:
        if missing := _missing("onnx", "onnxscript", "onnxruntime"):
            return missing
        if self.device == "cuda":
            import onnxruntime
            import torch

            if not torch.cuda.is_available():
                return NO_CUDA
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return ("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu "
                        "instead of onnxruntime)")
        return None

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        start = self._begin(workdir)
        path = workdir / "model.onnx"
        shutil.copyfile(fp32_graph(model, max_batch, workdir), path)
        cuda = self.device == "cuda"
        return CompiledArtifact(backend=self.name, format="onnx", path=path,
                                compile_seconds=time.perf_counter() - start,
                                device="cuda" if cuda else "cpu",
                                built_for=built_for("cuda") if cuda else None)


#: The fp32 ONNX graphs exported in this process, by source (module or program) and max batch:
#: ``onnx``, ``onnx-cuda`` and ``onnx-int8`` of one ``auto`` run share one export (a dynamo export
#: of a small transformer takes seconds); a later candidate's compile time is then its own step only.
_GRAPHS: weakref.WeakKeyDictionary[Any, dict[tuple, Path]] = weakref.WeakKeyDictionary()


def _weights_state(source: Any) -> tuple:
    """Where the weights live and how often they were changed in place (torch's version
    counters): a module trained further in between gets a new export."""
    state = source.state_dict  # a module's method, an ExportedProgram's property
    return tuple((t.data_ptr(), t._version) for t in (state() if callable(state) else state).values())


#: Third-party log lines that say nothing about the user's model: torch.onnx's registry on a host
#: without torchvision, and onnxruntime's generic advice before every quantisation.
_NOISE = ("torchvision is not installed", "consider to run pre-processing before quantization")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)


@contextmanager
def _quiet_exporters() -> Iterator[None]:
    """``_NOISE`` dropped from the loggers that print it, and torch's own deprecation notice of
    its pytree internals silenced, for the block only."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx._internal.exporter._registration")]
    noise = _DropNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                    category=FutureWarning)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def fp32_graph(model: TorchModel, max_batch: int, workdir: Path) -> Path:
    """The model's fp32 ONNX graph with its dynamic dimensions: exported once into ``workdir``,
    or the one this process already exported for the same source and max batch."""
    import torch

    source = model.program if model.program is not None else model.module
    key = (max_batch, _weights_state(source))
    known = _GRAPHS.get(source, {}).get(key)
    if known is not None and known.exists():
        return known
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "fp32.onnx"
    try:
        with _quiet_exporters():
            if model.program is not None:  # already exported, with its own dynamic dimensions
                torch.onnx.export(model.program, example_tensors(model), str(path), dynamo=True,
                                  external_data=False, verbose=False)
            else:
                torch.onnx.export(model.module.eval(), example_tensors(model), str(path),
                                  dynamo=True, dynamic_shapes=model.dynamic_shapes(max_batch),
                                  external_data=False, verbose=False)
    except Exception as exc:
        raise CompileError(f"onnx export failed: {exc}") from exc
    _GRAPHS.setdefault(source, {})[key] = path
    return path


class OnnxInt8Compiler(CompilerBase):
    """Dynamic INT8 quantisation (per channel: per-tensor lost accuracy in DESIGN.md's measures)."""

    name = "onnx-int8"
    device = "cpu"

    def unavailable_reason(self) -> str | None:
        return _missing("onnx", "onnxscript", "onnxruntime")

    def compile(self, model: TorchModel, workdir: Path, *, max_batch: int) -> CompiledArtifact:
        start = self._begin(workdir)  # before the import: a clear refusal where it is missing
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = fp32_graph(model, max_batch, workdir)
        path = workdir / "model.int8.onnx"
        try:
            with _quiet_exporters():
                quantize_dynamic(str(fp32), str(path), per_channel=True,
                                 weight_type=QuantType.QInt8)
        except Exception as exc:
            raise CompileError(f"onnx int8 quantisation failed: {exc}") from exc
        return CompiledArtifact(backend=self.name, format="onnx", path=path,
                                compile_seconds=time.perf_counter() - start)
