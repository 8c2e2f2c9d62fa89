"""Load the model an archive records in ``servegate.json`` as a numpy -> numpy callable.

The callable takes the model's positional inputs and returns ALL its outputs, as a tuple of
batch-first numpy arrays (a tuple/list output in order, a dict output's values in order).

Formats: ``state_dict`` (weights + a model file and class), ``exported_program`` (torch.export),
``aoti`` (an AOTInductor package), ``onnx`` (onnxruntime), ``torchscript`` (old artifacts),
``inductor`` (torch.compile in the worker), ``torch_tensorrt`` (CUDA only).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from sg_errors import ModelLoadError

Predictor = Callable[..., tuple[np.ndarray, ...]]


def _flatten(out: Any) -> list[Any]:
    """A model's output(s) as a flat list: tensors, tuples/lists and dicts (values in order)."""
    if isinstance(out, dict):
        return [leaf for value in out.values() for leaf in _flatten(value)]
    if isinstance(out, (tuple, list)):
        return [leaf for value in out for leaf in _flatten(value)]
    return [out]


def torch_outputs(out: Any) -> tuple[np.ndarray, ...]:
    """Every output of a torch model as numpy (float16/bfloat16 as float32)."""
    import torch

    arrays = []
    for leaf in _flatten(out):
        if isinstance(leaf, torch.Tensor):
            if leaf.dtype in (torch.bfloat16,):
                leaf = leaf.float()
            arrays.append(leaf.detach().cpu().numpy())
        else:
            arrays.append(np.asarray(leaf))
    return tuple(arrays)


def intra_op_threads(spec: dict[str, Any], max_workers: int) -> int:
    """Threads per worker: workers x threads <= cores - 1, one core left to TorchServe's frontend.

    TorchServe sets no thread count, so each worker's OpenMP pool spans every core and spins
    between batches (DESIGN.md: 1 thread per worker took an MLP at batch 8 from 1.5k to 2.8k
    req/s on 2 cores). ``intra_op_threads`` in the archive overrides this.
    """
    configured = spec.get("intra_op_threads")
    if configured:
        return int(configured)
    cores = os.cpu_count() or 1
    return max(1, (cores - 1) // max(1, max_workers))


def load_model(spec: dict[str, Any], model_dir: str, threads: int) -> Predictor:
    """Load the archive's model (all its outputs); raise ``ModelLoadError`` (with the cause) if it
    cannot be."""
    fmt = spec.get("format")
    loader = _LOADERS.get(str(fmt))
    if loader is None:
        raise ModelLoadError(f"unknown model format {fmt!r}; known: {sorted(_LOADERS)}")
    path = os.path.join(model_dir, str(spec.get("artifact")))
    if not os.path.exists(path):
        raise ModelLoadError(f"artifact {spec.get('artifact')!r} is missing from the archive")
    try:
        return loader(spec, path, threads)
    except ModelLoadError:
        raise
    except Exception as exc:  # any library failure becomes a load error with its cause
        raise ModelLoadError(f"cannot load {fmt} artifact {spec['artifact']!r}: {exc}") from exc


def load(spec: dict[str, Any], model_dir: str, threads: int) -> Callable[..., np.ndarray]:
    """``load_model`` answering the FIRST output only (servegate's compiler parity checks call
    this; the handlers use ``load_model``)."""
    predict = load_model(spec, model_dir, threads)

    def first(*arrays: np.ndarray) -> np.ndarray:
        return predict(*arrays)[0]

    return first


def _torch_predictor(module: Any) -> Predictor:
    import torch

    def predict(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return torch_outputs(out)

    return predict


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set or parallel work has started: keep what is there
        pass


def _load_state_dict(spec: dict[str, Any], path: str, threads: int) -> Predictor:
    import torch

    _set_torch_threads(threads)
    module_name, _, class_name = str(spec["model_class"]).rpartition(".")
    model_cls = getattr(importlib.import_module(module_name), class_name)
    model = model_cls(**spec.get("model_kwargs", {}))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _torch_predictor(model.eval())


def _load_exported_program(spec: dict[str, Any], path: str, threads: int) -> Predictor:
    import torch

    _set_torch_threads(threads)
    return _torch_predictor(torch.export.load(path).module())


def _load_aoti(spec: dict[str, Any], path: str, threads: int) -> Predictor:
    import torch
    import torch._inductor

    _set_torch_threads(threads)
    return _torch_predictor(torch._inductor.aoti_load_package(path))


def _load_inductor(spec: dict[str, Any], path: str, threads: int) -> Predictor:
    import torch

    _set_torch_threads(threads)
    program = torch.export.load(path).module()
    return _torch_predictor(torch.compile(program, dynamic=True))


def _load_torchscript(spec: dict[str, Any], path: str, threads: int) -> Predictor:
    import torch

    _set_torch_threads(threads)
    return _torch_predictor(torch.jit.load(path, map_location="cpu").eval())


def _load_onnx(spec: dict[str, Any], path: str, threads: int) -> Predictor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def predict(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(session.run(None, dict(zip(names, arrays, strict=True))))

    return predict


def _load_torch_tensorrt(spec: dict[str, Any], path: str, threads: int) -> Predictor:
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError(
            "this archive holds a torch-TensorRT artifact, which needs an NVIDIA GPU with CUDA; "
            "this worker has no CUDA device. Rebuild the archive with a CPU compiler "
            "(compiler=auto, onnx, aoti or eager) or serve it on a GPU host."
        )
    try:
        import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops)
    except ImportError as exc:
        raise ModelLoadError("torch_tensorrt is not installed in this worker's environment") from exc
    module = torch.export.load(path).module().to("cuda")

    def predict(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(np.ascontiguousarray(a)).to("cuda") for a in arrays))
        return torch_outputs(out)

    return predict


_LOADERS: dict[str, Callable[[dict[str, Any], str, int], Predictor]] = {
    "state_dict": _load_state_dict,
    "exported_program": _load_exported_program,
    "aoti": _load_aoti,
    "inductor": _load_inductor,
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
    "torch_tensorrt": _load_torch_tensorrt,
}
