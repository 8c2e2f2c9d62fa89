"""CUDA and precision variants of the compilers: the name grammar, why each cannot run on a CPU
host, what ``auto`` tries on each kind of host, precision gating, TensorRT's input ranges, the
candidate table's device column, and what a GPU archive records (servegate.json, model-config.yaml,
TorchServe's number_of_gpu)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from servegate import compilers, devices
from servegate.artifacts import CompiledArtifact
from servegate.compilers.select import Candidate, candidates_table, parse_compiler_option, table_rows
from servegate.compilers.shapes import Shape, bucket_sizes, timing_batch_sizes
from servegate.config import BatchingConfig, TorchServeSettings
from servegate.errors import BackendUnavailable
from servegate.parity_limits import precision_of

GRAMMAR = re.compile(r"^(eager|export|aoti|inductor|onnx|torch-tensorrt)"
                     r"(-(cudagraphs|max-autotune))?(-(fp16|bf16|int8))?(-cuda)?$")
CUDA_NAMES = ["eager-cuda", "eager-fp16-cuda", "eager-bf16-cuda", "aoti-cuda", "aoti-fp16-cuda",
              "aoti-bf16-cuda", "inductor-fp16-cuda", "inductor-cudagraphs-fp16-cuda",
              "inductor-max-autotune-fp16-cuda", "onnx-cuda", "torch-tensorrt", "torch-tensorrt-fp16"]


def _no_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the CPU-host messages cannot be shown")


def test_every_name_follows_the_grammar_and_says_where_it_runs() -> None:
    names = compilers.compiler_names()
    assert set(CUDA_NAMES) | {"eager-bf16", "aoti-bf16"} <= set(names)
    for name in names:
        assert GRAMMAR.match(name), name
        compiler = compilers.get_compiler(name)
        assert compiler.name == name
        cuda = name.endswith("-cuda") or name.startswith("torch-tensorrt")
        assert compiler.device == ("cuda" if cuda else "cpu"), name
    inductor = {n: compilers.get_compiler(n).variant for n in names if n.startswith("inductor")}
    assert inductor["inductor-cudagraphs-fp16-cuda"].compile_mode == "reduce-overhead"
    assert inductor["inductor-max-autotune-fp16-cuda"].compile_mode == "max-autotune"
    assert inductor["inductor-fp16-cuda"].compile_mode is None
    assert compilers.get_compiler("aoti-bf16-cuda").variant.dtype_name == "bfloat16"
    assert compilers.get_compiler("eager-fp16-cuda").variant.dtype_name == "float16"


def test_cuda_variants_say_no_cuda_device_on_a_cpu_host(tmp_path: Path) -> None:
    _no_cuda()
    from servegate.sources.digits import builtin_digits

    model = builtin_digits(epochs=1)
    for name in CUDA_NAMES:
        compiler = compilers.get_compiler(name)
        reason = compiler.unavailable_reason()
        assert reason is not None and "no CUDA device" in reason, (name, reason)
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            compiler.compile(model, tmp_path / name, max_batch=8)
        assert not (tmp_path / name / "model.pt").exists()


def test_bf16_cpu_variants_name_the_missing_cpu_flags(monkeypatch) -> None:
    monkeypatch.setattr(devices.sys, "platform", "linux")
    monkeypatch.setattr(devices, "_cpuinfo", lambda: "model name : Old CPU\nflags : fpu sse2 avx2 avx512f\n")
    assert not devices.cpu_supports_bf16()
    for name in ("eager-bf16", "aoti-bf16"):
        reason = compilers.get_compiler(name).unavailable_reason()
        assert reason is not None and "avx512_bf16" in reason and "amx_bf16" in reason
    monkeypatch.setattr(devices, "_cpuinfo", lambda: "flags : fpu avx512f amx_bf16 amx_tile\n")
    assert devices.cpu_supports_bf16()
    assert compilers.get_compiler("eager-bf16").unavailable_reason() is None


def test_auto_candidates_follow_the_host(monkeypatch) -> None:
    import torch

    here = compilers.auto_candidates()
    assert here[:len(compilers.AUTO_CANDIDATES)] == list(compilers.AUTO_CANDIDATES)
    assert parse_compiler_option("auto") == here
    has_bf16 = devices.cpu_supports_bf16()
    assert ("eager-bf16" in here and "aoti-bf16" in here) == has_bf16
    if not torch.cuda.is_available():
        assert not [n for n in here if n.endswith("-cuda")]

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compilers.auto_candidates() == list(compilers.AUTO_CANDIDATES)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu_host = compilers.auto_candidates()
    assert gpu_host == list(compilers.AUTO_CANDIDATES) + list(compilers.CUDA_CANDIDATES)
    assert set(CUDA_NAMES) <= set(gpu_host) and "eager-bf16" not in gpu_host
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    assert {"eager-bf16", "aoti-bf16"} <= set(compilers.auto_candidates())


def test_this_host_is_detected_as_it_is() -> None:
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert devices.cpu_supports_bf16() == bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
    assert len(devices.cuda_devices()) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    key = devices.device_key("cpu")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", key) and torch.__version__.replace("+", "_") in key
    assert ("nobf16" in key) != devices.cpu_supports_bf16()
    info = devices.built_for("cpu")
    assert info["torch"] == torch.__version__ and info["capability"] is None


def test_reduced_precision_is_read_from_the_name_tokens() -> None:
    for name in ("onnx-int8", "torch-tensorrt-fp16", "eager-bf16", "aoti-bf16", "eager-fp16-cuda",
                 "aoti-bf16-cuda", "inductor-cudagraphs-fp16-cuda", "inductor-max-autotune-fp16-cuda"):
        assert precision_of(name) == "reduced", name
    for name in ("eager", "aoti", "eager-cuda", "aoti-cuda", "onnx-cuda", "torch-tensorrt", "mybf16net"):
        assert precision_of(name) == "fp32", name


def test_model_config_for_cpu_and_for_two_gpus(monkeypatch) -> None:
    batching = BatchingConfig(batch_size=4, max_batch_delay_ms=3, min_workers=1, max_workers=2,
                              workers_per_gpu=3)
    cpu = batching.model_config_yaml()
    assert cpu["deviceType"] == "cpu" and "deviceIds" not in cpu
    assert (cpu["minWorkers"], cpu["maxWorkers"]) == (1, 2)
    two = [devices.CudaDevice(i, "NVIDIA H200", "9.0", 141 << 30) for i in range(2)]
    monkeypatch.setattr(devices, "cuda_devices", lambda: two)
    gpu = batching.model_config_yaml(device="cuda")
    assert gpu["deviceType"] == "gpu" and gpu["deviceIds"] == [0, 1]
    assert gpu["minWorkers"] == gpu["maxWorkers"] == 6 and gpu["batchSize"] == 4
    monkeypatch.setattr(devices, "cuda_devices", lambda: [])
    one = BatchingConfig().model_config_yaml(device="cuda")  # packaged on a host without a GPU
    assert one["deviceIds"] == [0] and one["minWorkers"] == one["maxWorkers"] == 1


def test_local_torchserve_is_told_the_hosts_gpu_count(tmp_path: Path, monkeypatch) -> None:
    from servegate.backends.torchserve.local import render_config

    ports = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}
    lines = render_config(TorchServeSettings(workdir=tmp_path), ports, tmp_path).splitlines()
    assert f"number_of_gpu={len(devices.cuda_devices())}" in lines
    two = [devices.CudaDevice(i, "g", "8.0", 1) for i in range(2)]
    monkeypatch.setattr(devices, "cuda_devices", lambda: two)
    lines = render_config(TorchServeSettings(workdir=tmp_path), ports, tmp_path).splitlines()
    assert "number_of_gpu=2" in lines and sum(line.startswith("number_of_gpu=") for line in lines) == 1


def test_candidate_table_shows_the_device() -> None:
    from rich.console import Console

    fast = Candidate("eager-fp16-cuda", device="cuda", status="passed",
                     p50_ms={Shape(1): 0.2, Shape(64): 0.5})
    slow = Candidate("eager", device="cpu", status="passed", p50_ms={Shape(1): 0.1, Shape(64): 2.0})
    skipped = Candidate("onnx-cuda", device="cuda", status="skipped", reason="no CUDA device")
    rows = table_rows([fast, slow, skipped])
    assert [(r["backend"], r["device"]) for r in rows] == [
        ("eager-fp16-cuda", "cuda"), ("eager", "cpu"), ("onnx-cuda", "cuda")]
    table = candidates_table([fast, slow, skipped])
    assert [c.header for c in table.columns][:3] == ["backend", "device", "status"]
    console = Console(width=300, record=True)
    console.print(table)
    text = console.export_text()
    assert re.search(r"eager-fp16-cuda\s*│\s*cuda\s*│\s*passed", text)
    assert re.search(r"eager\s*│\s*cpu\s*│\s*passed", text)


def test_timing_shapes_and_buckets_on_a_gpu_host() -> None:
    assert timing_batch_sizes(8, 512) == [1, 8]
    assert timing_batch_sizes(8, 512, cuda=True) == [1, 8, 64, 256]
    assert timing_batch_sizes(8, 100, cuda=True) == [1, 8, 64]
    image = SimpleNamespace(is_text=False, max_length=None)
    assert bucket_sizes(image, 48) == {"batch": [1, 2, 4, 8, 16, 32, 48], "tokens": []}
    text = SimpleNamespace(is_text=True, max_length=100)
    assert bucket_sizes(text, 8) == {"batch": [1, 2, 4, 8], "tokens": [16, 32, 64, 100]}


def test_tensorrt_gets_one_dynamic_input_per_model_input() -> None:
    from servegate.compilers.tensorrt import input_ranges

    ids = np.zeros((2, 7), np.int64)
    text = SimpleNamespace(is_text=True, max_length=256, example_inputs=lambda rows: (ids, ids.copy()))
    ranges = input_ranges(text, 64)
    assert [(lo, opt, hi, dt) for lo, opt, hi, dt in ranges] == [
        ((1, 16), (8, 128), (64, 256), np.dtype("int64"))] * 2
    image = SimpleNamespace(is_text=False, max_length=None,
                            example_inputs=lambda rows: (np.zeros((2, 3, 8, 8), np.float32),))
    assert input_ranges(image, 16) == [((1, 3, 8, 8), (8, 3, 8, 8), (16, 3, 8, 8), np.dtype("float32"))]


def test_a_cuda_archive_records_device_dtype_buckets_and_its_fallback(tmp_path: Path, monkeypatch) -> None:
    from servegate.packaging.mar import build_mar, contents_for, read_archive_member
    from servegate.packaging.spec import ArtifactSpec
    from servegate.sources.digits import builtin_digits

    two = [devices.CudaDevice(i, "g", "9.0", 1) for i in range(2)]
    monkeypatch.setattr(devices, "cuda_devices", lambda: two)
    model = builtin_digits(epochs=1)
    package, fallback = tmp_path / "model.aoti.pt2", tmp_path / "model.fallback.pt2"
    package.write_bytes(b"aoti package")
    fallback.write_bytes(b"exported program")
    built = {"device_name": "NVIDIA H200", "capability": "9.0", "cuda": "13.0", "torch": "2.13.0"}
    artifact = CompiledArtifact(backend="aoti-fp16-cuda", format="aoti", path=package, device="cuda",
                                dtype="float16", built_for=built, buckets={"batch": [1, 8], "tokens": []},
                                fallback=fallback)
    contents = contents_for(model, artifact, name="digits", version="1",
                            batching=BatchingConfig(workers_per_gpu=2), max_batch=8)
    archive = build_mar(contents, tmp_path / "store")
    spec = ArtifactSpec.model_validate_json(read_archive_member(archive, "servegate.json"))
    assert (spec.device, spec.dtype, spec.compiler, spec.format) == (
        "cuda", "float16", "aoti-fp16-cuda", "aoti")
    assert spec.built_for == built and spec.buckets == {"batch": [1, 8], "tokens": []}
    assert spec.fallback_artifact == "model.fallback.pt2"
    assert read_archive_member(archive, "model.fallback.pt2") == b"exported program"
    config = yaml.safe_load(read_archive_member(archive, "model-config.yaml"))
    assert config["deviceType"] == "gpu" and config["deviceIds"] == [0, 1]
    assert config["minWorkers"] == config["maxWorkers"] == 4
    raw = json.loads(zipfile.ZipFile(archive).read("servegate.json"))
    assert raw["compile_mode"] is None


@pytest.mark.parametrize(("name", "bucketed"), [("inductor-cudagraphs-fp16-cuda", True),
                                                ("inductor-max-autotune-fp16-cuda", True),
                                                ("inductor-fp16-cuda", False)])
def test_every_cuda_graph_mode_gets_shape_buckets(name: str, bucketed: bool, tmp_path: Path,
                                                  monkeypatch) -> None:
    """``max-autotune`` captures CUDA graphs too: without buckets each distinct batch x length
    would record a graph of its own, without bound."""
    from servegate.compilers import aoti, export

    compiler = compilers.get_compiler(name)
    monkeypatch.setattr(type(compiler), "unavailable_reason", lambda self: None)
    exported = CompiledArtifact(backend="export-fp16-cuda", format="exported_program",
                                path=tmp_path / "model.pt2", device="cuda", dtype="float16")
    monkeypatch.setattr(export.ExportCompiler, "compile", lambda self, model, workdir, **kw: exported)
    text = SimpleNamespace(is_text=True, max_length=128)
    artifact = compiler.compile(text, tmp_path, max_batch=8)
    assert artifact.format == "inductor" and aoti.InductorCompiler is type(compiler)
    assert artifact.buckets == (bucket_sizes(text, 8) if bucketed else None)


def test_the_handlers_know_the_same_cuda_graph_modes() -> None:
    from servegate._resources import handler_module
    from servegate.compilers.variants import CUDA_GRAPH_MODES

    assert handler_module("sg_base").CUDA_GRAPH_MODES == CUDA_GRAPH_MODES


def test_tensorrt_shapes_share_batch_and_sequence_and_follow_the_buckets() -> None:
    """input_ids and attention_mask share one batch and one sequence dimension; the sequence
    starts at the smallest token bucket (never below the export's 2); opt is the common serving
    size rounded up to a bucket."""
    import torch

    from servegate.compilers.tensorrt import dynamic_shapes, tensorrt_profile

    ids = ((2, 7), np.dtype("int64"))
    profile = tensorrt_profile([ids, ids], is_text=True,
                               buckets={"batch": [1, 2, 4, 16], "tokens": [16, 32, 64, 100]})
    assert profile.dims == {"batch": (1, 16), "sequence": (16, 100)}
    assert [(p.min_shape, p.opt_shape, p.max_shape, p.axes) for p in profile.inputs] == [
        ((1, 16), (16, 100), (16, 100), {0: "batch", 1: "sequence"})] * 2
    assert tensorrt_profile([ids], is_text=True, buckets={"batch": [1], "tokens": [1, 8]}).dims == {
        "batch": (1, 2), "sequence": (2, 8)}
    small = tensorrt_profile([ids], is_text=True, buckets={"batch": [1, 2, 4], "tokens": [16, 32]})
    assert small.inputs[0].opt_shape == (4, 32)
    image = tensorrt_profile([((2, 3, 8, 8), np.dtype("float32"))], is_text=False,
                             buckets={"batch": [1, 2, 4, 8, 16], "tokens": []})
    assert image.dims == {"batch": (1, 16)} and image.inputs[0].axes == {0: "batch"}

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(30, 4)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            weights = mask.unsqueeze(-1).float()
            return (self.embedding(ids) * weights).sum(1) / weights.sum(1).clamp(min=1)

    text = tensorrt_profile([ids, ids], is_text=True,
                            buckets={"batch": [1, 2, 4, 8], "tokens": [16, 32, 64]})
    shapes = dynamic_shapes(text)
    assert shapes[0][0] is shapes[1][0] and shapes[0][1] is shapes[1][1]  # one Dim each, shared
    example = torch.ones(text.inputs[0].opt_shape, dtype=torch.int64)
    program = torch.export.export(Pooled().eval(), (example, example.clone()), dynamic_shapes=shapes)
    served = program.module()(torch.ones(3, 40, dtype=torch.int64), torch.ones(3, 40, dtype=torch.int64))
    assert served.shape == (3, 4)  # another batch and length than the example's: accepted


def _small_text_model(tmp_path: Path):
    """A tiny sentence encoder with a WordPiece tokenizer (random weights)."""
    pytest.importorskip("tokenizers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from servegate.sources.base import TensorSpec, TorchModel
    from servegate.sources.text_net import SentenceEmbedding

    words = [f"w{i}" for i in range(40)]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3} | {w: i + 4 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    module = SentenceEmbedding(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=64).eval()
    rng = np.random.default_rng(0)
    sentences = np.array([" ".join(rng.choice(words, size=int(rng.integers(3, 20))))
                          for _ in range(16)])
    return TorchModel(module=module, input_shape=(), labels=[], task="embedding",
                      tokenizer_file=tmp_path / "tokenizer.json", max_length=64, eval_x=sentences,
                      outputs=(TensorSpec("embedding", (16,)),), source_uri="random:tiny")


class _FakeTensorRT:
    """torch_tensorrt's calls the compiler makes, recorded; the 'engine' is the program itself."""

    def __init__(self, explicit_typing: bool) -> None:
        self.calls: dict[str, Any] = {}
        outer = self

        class Input:
            def __init__(self, **kwargs: Any) -> None:
                self.__dict__.update(kwargs)

        def compile_new(program, *, inputs, use_explicit_typing=True, timing_cache_path=None):
            outer.calls["compile"] = {"program": program, "inputs": inputs,
                                      "use_explicit_typing": use_explicit_typing}
            return program.module()

        def compile_old(program, *, inputs, enabled_precisions=None):
            outer.calls["compile"] = {"program": program, "inputs": inputs,
                                      "enabled_precisions": enabled_precisions}
            return program.module()

        def save(module, path, *, arg_inputs=None, dynamic_shapes=None):
            outer.calls["save"] = {"arg_inputs": arg_inputs, "dynamic_shapes": dynamic_shapes}
            Path(path).write_bytes(b"engine")

        self.Input = Input
        self.dynamo = SimpleNamespace(compile=compile_new if explicit_typing else compile_old)
        self.save = save


@pytest.mark.parametrize("explicit_typing", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_compiles_an_export_with_shared_dims_and_saves_them(
        explicit_typing: bool, precision: str, tmp_path: Path) -> None:
    """The compiler's wiring, on the CPU with a stand-in torch_tensorrt: one export with shared
    batch/sequence Dims, compiled from that program, saved with the same dynamic_shapes; the
    TensorRT version in built_for."""
    import torch

    from servegate.compilers.tensorrt import TorchTensorRTCompiler

    model = _small_text_model(tmp_path)
    trt = _FakeTensorRT(explicit_typing)
    artifact = TorchTensorRTCompiler(precision).build(model, tmp_path / "out", max_batch=8,
                                                      trt=trt, device="cpu")
    half = precision == "fp16"
    compiled, saved = trt.calls["compile"], trt.calls["save"]
    assert [(i.min_shape, i.opt_shape, i.max_shape) for i in compiled["inputs"]] == [
        ((1, 16), (8, 64), (8, 64))] * 2  # buckets: batch 1..8, tokens 16..64 (max_length 64)
    ids_dims, mask_dims = saved["dynamic_shapes"]
    assert ids_dims[0] is mask_dims[0] and ids_dims[1] is mask_dims[1]
    assert [tuple(t.shape) for t in saved["arg_inputs"]] == [(8, 64)] * 2
    program = compiled["program"]
    ids = torch.full((3, 20), 5, dtype=torch.int64)
    assert program.module()(ids, torch.ones_like(ids)).shape == (3, 16)  # any bucketed shape
    weights = {p.dtype for p in program.parameters()}
    assert weights == {torch.float16 if half else torch.float32}  # explicit typing follows these
    if explicit_typing:  # enabled_precisions may only be float32 there
        assert compiled["use_explicit_typing"] is True and "enabled_precisions" not in compiled
    else:
        assert compiled["enabled_precisions"] == {torch.float16 if half else torch.float32}
    assert {"tensorrt", "torch_tensorrt"} <= set(artifact.built_for)
    assert artifact.dtype == ("float16" if half else "float32")
    assert artifact.buckets == bucket_sizes(model, 8)
