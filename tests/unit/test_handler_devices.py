"""Device-aware handlers (issue 14): the worker's device from TorchServe's ``gpu_id``, CUDA archives
refused with a clear message on a CPU worker, the compute dtype, out-of-memory batches split instead
of failed, and shape buckets (padding and warm-up). On CPU here; the CUDA test skips without one."""

from __future__ import annotations

import inspect
import json
import os
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import passes as torch_export_passes

from servegate._resources import handler_module
from servegate.harness import HarnessContext, LocalHandler

sg_loaders = handler_module("sg_loaders")
sg_base = handler_module("sg_base")
sg_errors = handler_module("sg_errors")


class MixedInputs(nn.Module):
    """Token ids (int64, never cast) and features (floating, cast to the compute dtype)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 16)
        self.linear = nn.Linear(8, 16)

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids).mean(1) + self.linear(x)


def _inputs(rows: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 50, (rows, 4)).astype(np.int64), rng.random((rows, 8)).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def test_an_archive_built_for_cuda_is_refused_on_a_cpu_worker(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA: the archive would load")
    (tmp_path / "model.pt2").write_bytes(b"never read")
    spec = {"format": "aoti", "artifact": "model.pt2", "device": "cuda",
            "built_for": {"device_name": "NVIDIA H200", "capability": "9.0"}}
    with pytest.raises(sg_errors.ModelLoadError) as refused:
        sg_loaders.load_model(spec, str(tmp_path), 1, gpu_id=0)
    message = str(refused.value)
    assert "built for CUDA (NVIDIA H200)" in message and "no CUDA device" in message
    assert "compiler=auto" in message
    assert sg_loaders.worker_device({"device": "cpu"}, gpu_id=3) == "cpu"  # a CPU archive ignores it


def test_the_harness_hands_the_gpu_id_to_the_handler(build_archive, monkeypatch) -> None:
    assert HarnessContext("d", "m", {}, gpu_id=2).system_properties["gpu_id"] == 2
    seen = []
    original = sg_loaders.load_model

    with LocalHandler(build_archive("1")) as local:  # a CPU archive: gpu_id reaches the loader
        loaders = __import__("sys").modules["sg_loaders"]
        monkeypatch.setattr(loaders, "load_model", lambda spec, d, t, gpu_id=None:
                            seen.append(gpu_id) or original(spec, d, t, gpu_id))
        local.handler.initialize(HarnessContext(str(local.model_dir), "digits", {}, gpu_id=1))
    assert seen == [1]


@pytest.mark.parametrize("fmt", ["exported_program", "state_dict"])
def test_bf16_artifacts_run_in_bf16_and_answer_float32(fmt: str, tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    module = MixedInputs().eval()
    ids, x = _inputs()
    with torch.no_grad():
        reference = module(torch.from_numpy(ids), torch.from_numpy(x)).numpy()
    spec = {"format": fmt, "dtype": "bfloat16"}
    if fmt == "exported_program":
        half = MixedInputs()
        half.load_state_dict(module.state_dict())
        program = torch.export.export(half.to(torch.bfloat16).eval(),
                                      (torch.from_numpy(ids), torch.from_numpy(x).to(torch.bfloat16)))
        torch.export.save(program, tmp_path / "model.pt2")
        spec["artifact"] = "model.pt2"
    else:
        (tmp_path / "mixed_model.py").write_text(
            "import torch\nfrom torch import nn\n\n\n" + inspect.getsource(MixedInputs))
        monkeypatch.syspath_prepend(str(tmp_path))  # as a worker has its model directory
        torch.save(module.state_dict(), tmp_path / "model.pt")
        spec |= {"artifact": "model.pt", "model_class": "mixed_model.MixedInputs"}
    predict = sg_loaders.load_model(spec, str(tmp_path), 1)
    (served,) = predict(ids, x)
    assert served.dtype == np.float32
    assert _cosine(served, reference) >= 0.99
    assert not np.allclose(served, reference, atol=1e-6)  # really computed in bf16


@pytest.fixture
def digits_handler(build_archive):
    with LocalHandler(build_archive("1")) as local:
        yield local


def _bodies(rows: np.ndarray, per_request: int) -> list[bytes]:
    return [json.dumps({"instances": rows[i:i + per_request].tolist()}).encode()
            for i in range(0, len(rows), per_request)]


def _assert_same(replies: list, expected: list) -> None:
    """The same statuses and labels, probabilities equal to float rounding (a batch of another
    size runs other kernels)."""
    assert [status for status, _ in replies] == [status for status, _ in expected]
    for (_, got), (_, want) in zip(replies, expected, strict=True):
        for g, w in zip(got["predictions"], want["predictions"], strict=True):
            assert g["label"] == w["label"]
            np.testing.assert_allclose(g["probabilities"], w["probabilities"], atol=1e-6)


def test_a_batch_that_runs_out_of_device_memory_is_split_not_failed(digits_handler, digits) -> None:
    handler = digits_handler.handler
    bodies = _bodies(digits.eval_x[:12], 3)
    expected = digits_handler.batch(bodies)
    predict, calls = handler._predict, []

    def small_device(*arrays: np.ndarray):
        calls.append(len(arrays[0]))
        if len(arrays[0]) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return predict(*arrays)

    handler._predict = small_device
    _assert_same(digits_handler.batch(bodies), expected)  # every request answered, same values
    assert calls[0] == 12 and sum(c for c in calls if c <= 4) == 12  # halves until they fit
    calls.clear()
    _assert_same(digits_handler.batch(bodies), expected)
    assert max(calls) <= 4 and sum(calls) == 12  # the size that fitted is kept: no failed call


def test_a_row_that_never_fits_fails_only_its_own_request(digits_handler, digits) -> None:
    handler = digits_handler.handler
    predict = handler._predict
    poison = 16.0  # digits pixels are 0..16: this row's first feature marks it

    def oom_on_poison(*arrays: np.ndarray):
        if (arrays[0][:, 0] == poison).any():
            raise torch.OutOfMemoryError("CUDA out of memory")
        return predict(*arrays)

    handler._predict = oom_on_poison
    rows = digits.eval_x[:6].copy()
    rows[4, 0] = poison
    replies = digits_handler.batch(_bodies(rows, 2))
    assert [status for status, _ in replies] == [200, 200, 500]
    assert "out of memory" in json.dumps(replies[2][1])


def test_buckets_pad_batches_and_warm_up_every_shape(digits_handler, digits) -> None:
    handler = digits_handler.handler
    bodies = _bodies(digits.eval_x[:5], 1)
    expected = digits_handler.batch(bodies)
    predict, shapes = handler._predict, []

    def recording(*arrays: np.ndarray):
        shapes.append(arrays[0].shape)
        return predict(*arrays)

    handler._predict = recording
    handler.buckets = sg_base.Buckets((1, 2, 4))
    _assert_same(digits_handler.batch(bodies), expected)  # 5 rows: a bucket of 4, then 1
    assert sorted(s[0] for s in shapes) == [1, 4]
    shapes.clear()
    handler._warm_up_buckets(str(digits_handler.model_dir))
    assert [s[0] for s in shapes] == [1, 2, 4]


def test_token_buckets_keep_masked_pooling_unchanged() -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 50, (3, 7)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[2, 5:] = 0
    buckets = sg_base.Buckets((1, 2, 4, 8), (8, 16))
    padded_ids, padded_mask = buckets.pad((ids, mask), (0, 0))
    assert padded_ids.shape == padded_mask.shape == (4, 8)
    table = rng.random((50, 4))

    def pooled(i: np.ndarray, m: np.ndarray) -> np.ndarray:
        return (table[i] * m[..., None]).sum(1) / m.sum(1, keepdims=True)

    np.testing.assert_allclose(pooled(padded_ids, padded_mask)[:3], pooled(ids, mask))
    warm = buckets.shapes_of((ids[:1], mask[:1]), (0, 0))
    assert sorted(tuple(a.shape) for a, _ in warm) == sorted(
        (b, t) for b in (1, 2, 4, 8) for t in (8, 16))


def test_on_a_gpu_the_worker_loads_on_its_device(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    module = MixedInputs().eval()
    ids, x = _inputs()
    program = torch.export.export(module.cuda(), (torch.from_numpy(ids).cuda(), torch.from_numpy(x).cuda()))
    torch.export.save(program, tmp_path / "model.pt2")
    spec = {"format": "exported_program", "artifact": "model.pt2", "device": "cuda"}
    predict = sg_loaders.load_model(spec, str(tmp_path), 1, gpu_id=0)
    with torch.no_grad():
        reference = module.cpu()(torch.from_numpy(ids), torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predict(ids, x)[0], reference, atol=1e-4)
    assert torch.cuda.current_device() == 0



class _Activation:
    """Stands for what a forward pass holds on the device while it runs."""


def test_the_oom_retry_runs_after_the_failed_attempt_is_freed(digits_handler, digits,
                                                              monkeypatch) -> None:
    """Inside the ``except`` block the traceback keeps the failed call's frames (and tensors)
    alive: ``empty_cache`` must come after it, when nothing of the failed attempt is left."""
    handler = digits_handler.handler
    predict, activations, alive_at_free = handler._predict, [], []

    def small_device(*arrays: np.ndarray):
        activation = _Activation()
        activations.append(weakref.ref(activation))
        if len(arrays[0]) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return predict(*arrays)

    loaders = sys.modules["sg_loaders"]  # the archive's own copy, which the handler calls
    monkeypatch.setattr(loaders, "free_device_memory",
                        lambda: alive_at_free.append(sum(r() is not None for r in activations)))
    handler._predict = small_device
    replies = digits_handler.batch(_bodies(digits.eval_x[:12], 3))
    assert [status for status, _ in replies] == [200] * 4
    assert alive_at_free and set(alive_at_free) == {0}


def test_the_chunk_size_grows_back_once_memory_is_free_again(digits_handler, digits,
                                                             monkeypatch) -> None:
    handler = digits_handler.handler
    monkeypatch.setattr(sys.modules["sg_base"], "CHUNK_GROWTH_AFTER", 2)
    predict, calls, short_of_memory = handler._predict, [], [True]

    def device(*arrays: np.ndarray):
        calls.append(len(arrays[0]))
        if short_of_memory[0] and len(arrays[0]) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return predict(*arrays)

    bodies = _bodies(digits.eval_x[:12], 3)
    expected = digits_handler.batch(bodies)
    handler._predict = device
    for _ in range(12):  # a lasting shortage: tries at a larger size become rarer
        _assert_same(digits_handler.batch(bodies), expected)
    failed = [i for i, rows in enumerate(calls) if rows > 4]
    gaps = np.diff(failed[1:]).tolist()  # calls between two tries at a larger size
    assert failed[:2] == [0, 1] and len(failed) <= 6  # 12 and 6 rows failed, then few tries
    assert len(gaps) >= 2 and gaps == sorted(gaps) and gaps[-1] > gaps[0]
    short_of_memory[0] = False  # the shortage was transient: the memory is back
    calls.clear()
    for _ in range(12):
        _assert_same(digits_handler.batch(bodies), expected)
    assert calls[-1] == 12  # a whole batch in one call again


def test_onnxruntime_allocation_failures_are_out_of_memory() -> None:
    pybind = pytest.importorskip("onnxruntime.capi.onnxruntime_pybind11_state")
    arena = pybind.RuntimeException(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
        "MatMul node. Status Message: bfc_arena.cc:376 void* onnxruntime::BFCArena::"
        "AllocateRawInternal(size_t, bool) Failed to allocate memory for requested buffer of size 8")
    assert sg_loaders.is_out_of_memory(arena)
    assert sg_loaders.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not sg_loaders.is_out_of_memory(pybind.Fail("[ONNXRuntimeError] : 1 : FAIL : bad input"))
    assert not sg_loaders.is_out_of_memory(ValueError("failed to allocate memory"))  # a user's error


def test_an_onnx_cuda_session_that_fell_back_to_the_cpu_is_refused(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """onnxruntime drops a CUDA provider that fails to load and runs on the CPU, saying nothing
    but a warning: the loader checks what the session really got."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    real_session, asked = ort.InferenceSession, []

    def cuda_fails_to_load(model, options=None, providers=None):
        asked.append([p if isinstance(p, str) else p[0] for p in providers])
        return real_session(model, options, providers=["CPUExecutionProvider"])  # the fallback

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", cuda_fails_to_load)
    with pytest.raises(sg_errors.ModelLoadError, match="only \\['CPUExecutionProvider'\\]"):
        sg_loaders._load_onnx({}, str(path), sg_loaders.Placement("cuda:1"))
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    predict = sg_loaders._load_onnx({}, str(path), sg_loaders.Placement("cpu"))  # a CPU archive
    np.testing.assert_array_equal(predict(np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32))[0],
                                  [[0.0, 2.0, 0.0, 4.0]])


class _BakesItsDevice(nn.Module):
    """``torch.arange(..., device=x.device)``: torch.export records the export device in the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + torch.arange(x.shape[1], device=x.device)


def test_an_exported_program_is_moved_to_the_workers_device(tmp_path: Path, monkeypatch) -> None:
    def exported():  # the pass moves the program it is given: a fresh one each time
        return torch.export.export(_BakesItsDevice().eval(), (torch.randn(2, 4),))

    program = exported()
    assert sg_loaders.program_devices(program) == {"cpu"}
    assert sg_loaders.on_device(program, "cpu") is program  # already there: nothing to do
    moved = sg_loaders.on_device(exported(), "meta")  # the real pass, to a device this host has
    assert sg_loaders.program_devices(moved) == {"meta"}
    passes = []

    def recording_pass(ep, location):
        passes.append(location)
        return ep

    monkeypatch.setattr(torch_export_passes, "move_to_device_pass", recording_pass)
    sg_loaders.on_device(program, "cuda:1")  # exported on another device than the worker's
    assert passes == ["cuda:1"]
    torch.export.save(program, tmp_path / "model.pt2")
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # no CUDA to move to
    sg_loaders._exported_module(str(tmp_path / "model.pt2"), sg_loaders.Placement("cuda:1"))
    assert passes == ["cuda:1", "cuda:1"]  # the loader of exported, inductor and TensorRT artifacts


def test_mean_pooling_of_a_half_precision_model_is_computed_in_float32() -> None:
    from servegate.sources.text_net import mean_pool_normalize

    torch.manual_seed(0)
    hidden = (1000 + torch.rand(3, 128, 16) * 100).half()  # summed over 128 tokens: > 65504
    mask = torch.ones(3, 128, dtype=torch.int64)
    mask[1, 5:] = 0
    mask[2] = 0  # no real token (1e-9 is 0 in float16: 0 / 0)
    pooled = mean_pool_normalize(hidden, mask)
    assert pooled.dtype == torch.float16 and torch.isfinite(pooled).all()
    reference = mean_pool_normalize(hidden.double(), mask).float()
    torch.testing.assert_close(pooled.float()[:2], reference[:2], atol=1e-3, rtol=0)
    assert (pooled[2] == 0).all()


@pytest.mark.parametrize(("device", "mode", "calls"), [("cuda", "reduce-overhead", 3),
                                                       ("cuda", "max-autotune", 3),
                                                       ("cuda", None, 1), ("cpu", None, 1)])
def test_the_warm_up_calls_each_bucket_until_its_cuda_graph_is_recorded(
        digits_handler, device: str, mode: str | None, calls: int) -> None:
    """cudagraph trees warm a new shape up on its first call and record it on a later one: one
    warm-up call would leave the recording to the first real request of each bucket."""
    handler = digits_handler.handler
    handler.spec = dict(handler.spec, device=device, compile_mode=mode)
    handler.buckets = sg_base.Buckets((1, 2, 4))
    predict, shapes = handler._predict, []

    def recording(*arrays: np.ndarray):
        shapes.append(arrays[0].shape[0])
        return predict(*arrays)

    handler._predict = recording
    handler._warm_up_buckets(str(digits_handler.model_dir))
    assert shapes == [b for b in (1, 2, 4) for _ in range(calls)]


def test_a_tensorrt_engine_from_another_tensorrt_version_is_refused() -> None:
    assert sg_loaders.tensorrt_mismatch({"tensorrt": "10.3.0"}, "10.3.0") is None
    assert sg_loaders.tensorrt_mismatch({}, "10.3.0") is None  # older archives record no version
    refused = sg_loaders.tensorrt_mismatch({"tensorrt": "10.3.0"}, "10.7.0")
    assert refused and "10.3.0" in refused and "10.7.0" in refused
    assert "no tensorrt package" in sg_loaders.tensorrt_mismatch({"tensorrt": "10.3.0"}, None)


def test_workers_of_a_model_share_one_compile_cache(tmp_path: Path, monkeypatch) -> None:
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    chosen = sg_loaders.share_compile_cache(str(tmp_path))
    cache = tmp_path / sg_loaders.WORKER_CACHE_DIR
    assert chosen == {"TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
                      "TRITON_CACHE_DIR": str(cache / "triton")}
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/operators/cache")
    monkeypatch.delenv("TRITON_CACHE_DIR")
    assert sg_loaders.share_compile_cache(str(tmp_path)) == {"TRITON_CACHE_DIR": str(cache / "triton")}
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/operators/cache"  # an operator's choice stays


def test_torchs_own_default_cache_is_not_taken_for_an_operators(tmp_path: Path, monkeypatch) -> None:
    """A handler that imports torch._dynamo before the setup leaves torch's default cache in
    TORCHINDUCTOR_CACHE_DIR; the workers still share the model directory's cache."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    assert sg_loaders.torch_default_cache_dir() == default_cache_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    chosen = sg_loaders.share_compile_cache(str(tmp_path))
    assert chosen["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / sg_loaders.WORKER_CACHE_DIR / "inductor")


def test_one_worker_compiles_at_a_time(tmp_path: Path) -> None:
    events: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with sg_loaders.compile_lock(str(tmp_path)):
            events.append("first in")
            inside.set()
            time.sleep(0.3)
            events.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    with sg_loaders.compile_lock(str(tmp_path)):  # another open file: as another worker
        events.append("second in")
    thread.join()
    assert events == ["first in", "first out", "second in"]


def test_an_inductor_archive_loads_and_warms_up_under_the_lock_with_the_shared_cache(
        digits_handler, tmp_path: Path, monkeypatch) -> None:
    import fcntl
    import shutil

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    model_dir = tmp_path / "model"
    shutil.copytree(digits_handler.model_dir, model_dir)
    spec = json.loads((model_dir / "servegate.json").read_text())
    (model_dir / "servegate.json").write_text(json.dumps(spec | {"format": "inductor"}))
    predict, seen = digits_handler.handler._predict, []

    def compiling_load(spec, directory, threads, gpu_id=None):
        with open(model_dir / sg_loaders.WORKER_CACHE_DIR / "compile.lock", "a+b") as other:
            try:  # another worker's attempt to take the lock now
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("lock free")
            except BlockingIOError:
                seen.append("lock held")
        seen.append(os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
        return predict

    monkeypatch.setattr(sys.modules["sg_loaders"], "load_model", compiling_load)
    handler = type(digits_handler.handler)()
    handler.setup(str(model_dir))
    assert seen == ["lock held", str(model_dir / sg_loaders.WORKER_CACHE_DIR / "inductor")]
