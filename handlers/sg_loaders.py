"""Load the model an archive records in ``servegate.json`` as a numpy -> numpy callable.

The callable takes the model's positional inputs and returns ALL its outputs, as a tuple of
batch-first numpy arrays (a tuple/list output in order, a dict output's values in order).

Formats: ``state_dict`` (weights + a model file and class), ``exported_program`` (torch.export),
``aoti`` (an AOTInductor package), ``onnx`` (onnxruntime), ``torchscript`` (old artifacts),
``inductor`` (torch.compile in the worker), ``torch_tensorrt`` (CUDA only).

Device and precision come from the archive: ``device`` (cpu | cuda: the worker's GPU is
TorchServe's ``gpu_id``), ``dtype`` (float32 | float16 | bfloat16: floating inputs are cast to it,
integer inputs such as token ids are not; outputs come back as float32), ``compile_mode`` (the
``inductor`` format's torch.compile mode) and ``built_for`` (the GPU a CUDA artifact was compiled
for: another GPU recompiles an AOTInductor package from its ``fallback_artifact``, and refuses a
TensorRT engine). Inputs go to the device once per batch and outputs come back once.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sg_errors import ModelLoadError

Predictor = Callable[..., tuple[np.ndarray, ...]]
log = logging.getLogger(__name__)


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

    if (type(out) is torch.Tensor and out.device.type == "cpu" and not out.requires_grad
            and out.dtype not in (torch.bfloat16, torch.float16)):
        return (out.numpy(),)  # the common case: one float32 CPU tensor, no copy
    arrays = []
    for leaf in _flatten(out):
        if isinstance(leaf, torch.Tensor):
            if leaf.dtype in (torch.bfloat16, torch.float16):
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


def worker_device(spec: dict[str, Any], gpu_id: int | None = None) -> str:
    """Where this worker runs the archive's model: ``cpu``, or ``cuda:<gpu_id>`` (made the current
    device) for an archive built for CUDA; a ``ModelLoadError`` saying so on a worker without CUDA."""
    if spec.get("device", "cpu") != "cuda":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        built = (spec.get("built_for") or {}).get("device_name")
        raise ModelLoadError(
            f"this archive was built for CUDA ({built or 'an NVIDIA GPU'}); this worker has no CUDA "
            "device (or a CPU build of torch). Rebuild it with a CPU compiler (compiler=auto, onnx, "
            "aoti or eager) or serve it on a GPU host.")
    index = int(gpu_id or 0)
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def load_model(spec: dict[str, Any], model_dir: str, threads: int,
               gpu_id: int | None = None) -> Predictor:
    """Load the archive's model (all its outputs) on the worker's device (``worker_device``);
    raise ``ModelLoadError`` (with the cause) if it cannot be."""
    fmt = spec.get("format")
    loader = _LOADERS.get(str(fmt))
    if loader is None:
        raise ModelLoadError(f"unknown model format {fmt!r}; known: {sorted(_LOADERS)}")
    path = os.path.join(model_dir, str(spec.get("artifact")))
    if not os.path.exists(path):
        raise ModelLoadError(f"artifact {spec.get('artifact')!r} is missing from the archive")
    device = worker_device(spec, gpu_id)
    try:
        return loader(spec, path, Placement(device, str(spec.get("dtype") or "float32"), threads))
    except ModelLoadError:
        raise
    except Exception as exc:  # any library failure becomes a load error with its cause
        raise ModelLoadError(f"cannot load {fmt} artifact {spec['artifact']!r}: {exc}") from exc


#: What an out-of-memory error says: torch's and CUDA's, and onnxruntime's arena ("Failed to
#: allocate memory for requested buffer of size ...").
OUT_OF_MEMORY_MARKERS = ("out of memory", "failed to allocate memory")


#: Formats that may compile in the worker: ``inductor`` always, ``aoti`` when its package was built
#: for another GPU (recompiled from its fallback ExportedProgram).
COMPILES_IN_WORKER = ("inductor", "aoti")
#: The model directory's compile caches (Inductor's and Triton's), shared by its workers.
WORKER_CACHE_DIR = ".sg-compile-cache"
_CACHE_ENV = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def torch_default_cache_dir() -> str:
    """Inductor's cache when nothing names one (torch's ``default_cache_dir``, computed without
    importing torch): importing ``torch._dynamo`` writes it into ``TORCHINDUCTOR_CACHE_DIR``, so a
    handler that imports it early leaves this value there without anybody having chosen it."""
    import getpass
    import re
    import tempfile

    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def _operator_chose(name: str) -> bool:
    """Whether cache variable ``name`` holds an operator's choice, not torch's own default."""
    value = os.environ.get(name)
    if not value:
        return False
    return not (name == "TORCHINDUCTOR_CACHE_DIR"
                and os.path.abspath(value) == torch_default_cache_dir())


def share_compile_cache(model_dir: str) -> dict[str, str]:
    """Point Inductor's and Triton's caches of this worker at the model directory, which every
    worker of the model shares (TorchServe unpacks an archive once per model): the first worker
    compiles, the others and restarted ones load compiled code. Variables an operator set (a
    shared cache of their own) are kept; torch's default, which importing ``torch._dynamo``
    writes, is not an operator's. Returns what was set."""
    chosen = {}
    for name, folder in _CACHE_ENV.items():
        if _operator_chose(name):
            continue
        path = os.path.join(os.path.abspath(model_dir), WORKER_CACHE_DIR, folder)
        os.makedirs(path, exist_ok=True)
        os.environ[name] = chosen[name] = path
    return chosen


#: Marks a model directory whose cache holds the archive's shipped caches (unpacked once).
SHIPPED_MARKER = "shipped.done"
#: The most a shipped cache may unpack to, whatever its spec says.
MOST_SHIPPED_BYTES = 8 << 30


def unpack_shipped_cache(spec: dict, model_dir: str, shared: dict[str, str]) -> str:
    """Unpack the archive's shipped compile caches (``spec["compile_cache"]``: the build ran this
    handler's load and warm-up and packed what it compiled) into the model directory's cache,
    once per model directory; call it under ``compile_lock``. Only where ``share_compile_cache``
    chose that cache (``shared``): an operator's own cache is left alone. The file must hash to
    the recorded sha256 and unpack within the recorded size, through ``tarfile``'s ``data``
    filter (no links out, no absolute paths, no devices). Anything wrong is a warning and a cold
    compile, never a failed load. Returns what was done, for the log."""
    import hashlib
    import shutil
    import tarfile
    import tempfile

    shipped = spec.get("compile_cache")
    if not shipped:
        return "no shipped compile cache"
    if set(shared) != set(_CACHE_ENV):
        return "an operator's compile cache is set: the shipped one is not used"
    folder = os.path.join(os.path.abspath(model_dir), WORKER_CACHE_DIR)
    marker = os.path.join(folder, SHIPPED_MARKER)
    if os.path.exists(marker):
        return "shipped compile cache already unpacked"
    path = os.path.join(model_dir, os.path.basename(str(shipped.get("file", ""))))
    limit = min(int(shipped.get("unpacked_bytes", 0)), MOST_SHIPPED_BYTES)
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != shipped.get("sha256"):
            raise ValueError("it does not hash to the sha256 recorded at build")
        staging = tempfile.mkdtemp(prefix=".unpack-", dir=folder)
        try:
            with tarfile.open(path, "r:gz") as tar:
                members = tar.getmembers()
                if sum(m.size for m in members) > limit:
                    raise ValueError(f"it unpacks to more than the {limit} bytes recorded")
                if any(m.name.split("/", 1)[0] not in _CACHE_ENV.values() for m in members):
                    raise ValueError("it holds more than inductor/ and triton/")
                tar.extractall(staging, filter="data")
            for name in _CACHE_ENV.values():
                if os.path.isdir(os.path.join(staging, name)):
                    shutil.copytree(os.path.join(staging, name), os.path.join(folder, name),
                                    dirs_exist_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except (OSError, ValueError, tarfile.TarError) as exc:
        log.warning("shipped compile cache %s not used (%s): compiling cold", path, exc)
        return f"shipped compile cache not used: {exc}"
    with open(marker, "w", encoding="utf-8") as fh:
        fh.write(str(shipped.get("sha256")))
    return "shipped compile cache unpacked"


@contextlib.contextmanager
def compile_lock(model_dir: str) -> Iterator[None]:
    """One worker of the model compiles at a time (an exclusive ``flock`` on a file of the model
    directory): the next one then finds the first one's code in the shared cache instead of
    compiling the same kernels alongside it. Without ``fcntl`` (not Unix), no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = os.path.join(model_dir, WORKER_CACHE_DIR)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "compile.lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (torch's error, or a runtime's:
    onnxruntime raises its own exception types, derived from ``Exception`` only)."""
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    runtime = isinstance(exc, (RuntimeError, MemoryError)) or type(exc).__module__.startswith(
        "onnxruntime")
    message = str(exc).lower()
    return runtime and any(marker in message for marker in OUT_OF_MEMORY_MARKERS)


def free_device_memory() -> None:
    """Give cached CUDA blocks back (after an out-of-memory error)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load(spec: dict[str, Any], model_dir: str, threads: int) -> Callable[..., np.ndarray]:
    """``load_model`` answering the FIRST output only (servegate's compiler parity checks call
    this; the handlers use ``load_model``)."""
    predict = load_model(spec, model_dir, threads)

    def first(*arrays: np.ndarray) -> np.ndarray:
        return predict(*arrays)[0]

    return first


class Placement:
    """Where and how a worker runs its model: ``device`` (cpu | cuda:N), ``dtype`` of the floating
    inputs (the artifact's compute precision) and CPU ``threads``."""

    def __init__(self, device: str, dtype: str = "float32", threads: int = 1) -> None:
        self.device, self.dtype, self.threads = device, dtype, threads

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def index(self) -> int:
        return int(self.device.partition(":")[2] or 0) if self.cuda else -1

    def torch_dtype(self):  # -> torch.dtype
        import torch

        return getattr(torch, self.dtype)


def _torch_predictor(module: Any, placement: Placement) -> Predictor:
    """numpy in -> numpy out on the placement's device: each input copied there once (floating
    ones cast to its dtype), every output copied back once as float32/int numpy."""
    import torch

    dtype, device = placement.torch_dtype(), placement.device
    on_cpu = not placement.cuda

    def to_device(array: np.ndarray):  # -> torch.Tensor
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if on_cpu and (tensor.dtype == dtype or not tensor.is_floating_point()):
            return tensor  # already where and what it must be: no .to()
        if tensor.is_floating_point():
            return tensor.to(device=device, dtype=dtype, non_blocking=False)
        return tensor.to(device=device)

    def predict(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = module(*(to_device(a) for a in arrays))
        return torch_outputs(out)

    return predict


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set or parallel work has started: keep what is there
        pass


def capability_mismatch(spec: dict[str, Any], placement: Placement) -> str | None:
    """How the worker's GPU differs from the one a CUDA artifact was built for, or None."""
    built = spec.get("built_for") or {}
    wanted = built.get("capability")
    if not placement.cuda or not wanted:
        return None
    import torch

    major, minor = torch.cuda.get_device_capability(placement.index)
    have = f"{major}.{minor}"
    if have == str(wanted):
        return None
    return (f"built for {built.get('device_name') or 'another GPU'} (compute capability {wanted}); "
            f"this worker has {torch.cuda.get_device_name(placement.index)} ({have})")


def _load_state_dict(spec: dict[str, Any], path: str, placement: Placement) -> Predictor:
    import torch

    _set_torch_threads(placement.threads)
    module_name, _, class_name = str(spec["model_class"]).rpartition(".")
    model_cls = getattr(importlib.import_module(module_name), class_name)
    model = model_cls(**spec.get("model_kwargs", {}))
    model.load_state_dict(torch.load(path, map_location=placement.device, weights_only=True))
    return _torch_predictor(model.to(placement.device, placement.torch_dtype()).eval(), placement)


def program_devices(program: Any) -> set[str]:
    """Every device an ExportedProgram names: its weights, buffers and constants, the devices
    its graph's tensors live on, and ``device=`` arguments baked into its nodes (``torch.export``
    records the export device, e.g. in ``aten.arange(..., device=...)``)."""
    import torch

    tensors = [*program.state_dict.values(), *program.constants.values()]
    devices = {str(t.device) for t in tensors if isinstance(t, torch.Tensor)}
    for node in program.graph.nodes:
        device = node.kwargs.get("device")
        if isinstance(device, torch.device):
            devices.add(str(device))
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            devices.add(str(value.device))
    return devices


def on_device(program: Any, device: str) -> Any:
    """``program`` moved to ``device`` (``cuda:N``) with ``torch.export.passes.move_to_device_pass``
    when it names any other device: ``.to(device)`` on its module moves the weights but not the
    devices baked into the graph, and a worker on ``gpu_id`` 1 would mix devices."""
    import torch
    from torch.export.passes import move_to_device_pass

    target = str(torch.device(device))
    if program_devices(program) <= {target}:
        return program
    return move_to_device_pass(program, target)


def _exported_module(path: str, placement: Placement) -> Any:
    """An ExportedProgram's module on the placement's device (exported in its dtype already)."""
    import torch

    program = torch.export.load(path)
    if not placement.cuda:
        return program.module()
    return on_device(program, placement.device).module().to(placement.device)


def _load_exported_program(spec: dict[str, Any], path: str, placement: Placement) -> Predictor:
    _set_torch_threads(placement.threads)
    return _torch_predictor(_exported_module(path, placement), placement)


def _load_aoti(spec: dict[str, Any], path: str, placement: Placement) -> Predictor:
    import torch
    import torch._inductor

    _set_torch_threads(placement.threads)
    if mismatch := capability_mismatch(spec, placement):
        fallback = spec.get("fallback_artifact")
        if not fallback:
            raise ModelLoadError(f"this AOTInductor package was {mismatch}, and the archive has no "
                                 "ExportedProgram to recompile from: rebuild it on this GPU")
        log.warning("AOTInductor package %s: recompiling from %s with torch.compile", mismatch, fallback)
        module = _exported_module(os.path.join(os.path.dirname(path), str(fallback)), placement)
        return _torch_predictor(torch.compile(module, dynamic=True), placement)
    if placement.cuda:
        return _torch_predictor(torch._inductor.aoti_load_package(path, device_index=placement.index),
                                placement)
    return _torch_predictor(torch._inductor.aoti_load_package(path), placement)


def _load_inductor(spec: dict[str, Any], path: str, placement: Placement) -> Predictor:
    import torch

    _set_torch_threads(placement.threads)
    module = _exported_module(path, placement)
    return _torch_predictor(torch.compile(module, dynamic=True, mode=spec.get("compile_mode")),
                            placement)


def _load_torchscript(spec: dict[str, Any], path: str, placement: Placement) -> Predictor:
    import torch

    _set_torch_threads(placement.threads)
    return _torch_predictor(torch.jit.load(path, map_location=placement.device).eval(), placement)


def _load_onnx(spec: dict[str, Any], path: str, placement: Placement) -> Predictor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = placement.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers: list[Any] = ["CPUExecutionProvider"]
    if placement.cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelLoadError("this ONNX archive runs on CUDA, and this worker's onnxruntime has "
                                 "no CUDAExecutionProvider: install onnxruntime-gpu (make setup-gpu)")
        providers = [("CUDAExecutionProvider", {"device_id": placement.index}), "CPUExecutionProvider"]
    session = ort.InferenceSession(path, options, providers=providers)
    check_providers(session, placement)
    names = [i.name for i in session.get_inputs()]
    floating = {i.name: i.type == "tensor(float16)" for i in session.get_inputs()}

    def predict(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        feeds = {n: a.astype(np.float16) if floating[n] else a
                 for n, a in zip(names, arrays, strict=True)}
        return tuple(np.asarray(o, dtype=np.float32) if o.dtype == np.float16 else o
                     for o in session.run(None, feeds))

    return predict


def check_providers(session: Any, placement: Placement) -> None:
    """A CUDA placement's session must have the CUDA provider: onnxruntime falls back to the CPU
    provider silently when CUDA's fails to load (missing CUDA or cuDNN libraries, another CUDA
    version), and the archive would be served on the CPU, many times slower."""
    if not placement.cuda:
        return
    got = list(session.get_providers())
    if "CUDAExecutionProvider" not in got:
        raise ModelLoadError(
            f"this ONNX archive runs on CUDA, and onnxruntime gave the session only {got}: its CUDA "
            "provider failed to load (see onnxruntime's warning above: the CUDA and cuDNN libraries "
            "onnxruntime-gpu was built for must be installed); refusing to serve it on the CPU")


def _load_torch_tensorrt(spec: dict[str, Any], path: str, placement: Placement) -> Predictor:
    if not placement.cuda:
        raise ModelLoadError(
            "this archive holds a torch-TensorRT artifact, which needs an NVIDIA GPU with CUDA; "
            "this worker has no CUDA device. Rebuild the archive with a CPU compiler "
            "(compiler=auto, onnx, aoti or eager) or serve it on a GPU host."
        )
    if mismatch := capability_mismatch(spec, placement):
        raise ModelLoadError(f"this TensorRT engine was {mismatch}: TensorRT engines run only on the "
                             "GPU model that built them; rebuild the archive on this GPU")
    try:
        import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops)
    except ImportError as exc:
        raise ModelLoadError("torch_tensorrt is not installed in this worker's environment") from exc
    if mismatch := tensorrt_mismatch(spec.get("built_for") or {}, _installed_tensorrt()):
        raise ModelLoadError(mismatch)
    return _torch_predictor(_exported_module(path, placement), placement)


def _installed_tensorrt() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("tensorrt")
    except metadata.PackageNotFoundError:
        return None


def tensorrt_mismatch(built: dict[str, Any], installed: str | None) -> str | None:
    """Why an engine built with TensorRT ``built["tensorrt"]`` cannot run with ``installed``,
    or None (an archive that does not record the version is not refused)."""
    wanted = built.get("tensorrt")
    if not wanted or wanted == installed:
        return None
    return (f"this TensorRT engine was built with TensorRT {wanted}; this worker has "
            f"{'TensorRT ' + installed if installed else 'no tensorrt package'}: an engine runs only "
            "with the TensorRT version that built it; rebuild the archive in this environment")


_LOADERS: dict[str, Callable[[dict[str, Any], str, Placement], Predictor]] = {
    "state_dict": _load_state_dict,
    "exported_program": _load_exported_program,
    "aoti": _load_aoti,
    "inductor": _load_inductor,
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
    "torch_tensorrt": _load_torch_tensorrt,
}
