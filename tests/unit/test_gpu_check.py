"""benchmarks/gpu.py, the GPU check: it must run on a bare CUDA host (torch and numpy; onnxruntime
and tokenizers when present: no MLflow, pydantic, PyYAML, scikit-learn, pandas, rich, Java). Here it
runs the same code on the CPU with every other package made unimportable; on a CUDA host, the real
check. Its decisions (which shapes CPU candidates are timed at, on how many threads; the preflight;
the deadline) are tested in process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABSENT = ("mlflow", "pydantic", "yaml", "sklearn", "pandas", "rich", "typer", "httpx", "locust",
          "tensorflow", "keras", "ts", "model_archiver")
#: A host with torch and numpy only.
TORCH_NUMPY_ONLY = (*ABSENT, "tokenizers", "onnx", "onnxscript", "onnxruntime")
BARE_TEMPLATE = """
import os, runpy, sys, tempfile
ABSENT = {absent!r}
# Every site-packages folder is replaced by a view of it without the absent packages, so that
# they are as missing as on a bare host (importlib.util.find_spec says None, as torch checks).
view = tempfile.mkdtemp(prefix="bare-site-", dir=os.getcwd())
for i, folder in enumerate(list(sys.path)):
    if folder.endswith("site-packages") and os.path.isdir(folder):
        for entry in os.listdir(folder):
            if entry.split(".")[0] not in ABSENT:
                os.symlink(os.path.join(folder, entry), os.path.join(view, entry))
        sys.path[i] = view
import importlib.util
assert all(importlib.util.find_spec(name) is None for name in ABSENT), "a package is still there"
sys.argv = ["gpu.py", *sys.argv[1:]]
runpy.run_path({gpu!r}, run_name="__main__")
"""
BARE = BARE_TEMPLATE.format(absent=ABSENT, gpu=str(ROOT / "benchmarks" / "gpu.py"))
TORCH_NUMPY_BARE = BARE_TEMPLATE.format(absent=TORCH_NUMPY_ONLY, gpu=str(ROOT / "benchmarks" / "gpu.py"))


@pytest.fixture(scope="module")
def gpu():
    """benchmarks/gpu.py as a module (it imports only numpy at import time)."""
    spec = importlib.util.spec_from_file_location("servegate_gpu_check", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        module.use_checkout()
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_check_runs_with_only_torch_numpy_onnxruntime_and_tokenizers(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-c", BARE, "--cpu", "--quick", "--candidates", "eager,onnx",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    figures = json.loads(out.read_text())
    models = {m["model"]: m for m in figures["models"]}
    assert set(models) == {"mlp", "encoder"}
    for model in models.values():
        assert model["chosen"] in {"eager", "onnx"}
        assert model["served"] and set(model["served"].values()) == {"ok"}  # the real handler
        assert {row["status"] for row in model["candidates"]} <= {"chosen", "passed"}
    assert "auto chose" in done.stdout and "served by the handler" in done.stdout


def test_the_check_runs_with_only_torch_and_numpy(tmp_path: Path) -> None:
    """No tokenizers, onnx, onnxscript or onnxruntime: the encoder and the ONNX candidates are
    skipped with the reason, the MLP is measured and served; the preflight comes first."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-c", TORCH_NUMPY_BARE, "--cpu", "--quick", "--candidates",
                           "eager,onnx", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    models = {m["model"]: m for m in json.loads(out.read_text())["models"]}
    assert "tokenizers is not installed" in models["encoder"]["skipped"]
    rows = {row["backend"]: row for row in models["mlp"]["candidates"]}
    assert rows["onnx"]["status"] == "skipped" and "onnx" in rows["onnx"]["reason"]
    assert models["mlp"]["chosen"] == "eager" and models["mlp"]["served"] == {"eager": "ok"}
    lines = done.stdout.splitlines()
    assert lines[0].startswith(("GPU:", "WARNING: no C++ compiler")), done.stdout[:2000]
    absent = next(line for line in lines if line.startswith("optional packages absent"))
    assert all(name in absent for name in ("tokenizers", "onnx", "onnxscript", "onnxruntime"))
    assert lines.index(absent) < next(i for i, line in enumerate(lines) if line.startswith("mlp"))
    assert "encoder: skipped: tokenizers is not installed" in done.stdout


def test_a_deadline_ends_the_run_with_what_was_done(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-c", TORCH_NUMPY_BARE, "--cpu", "--quick", "--candidates",
                           "eager", "--deadline", "0", "--out", str(out)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 3, (done.stdout + done.stderr)[-4000:]
    assert "the deadline ended the run" in done.stdout
    assert json.loads(out.read_text())["deadline_reached"] is True


def test_the_default_run_ends_within_eight_minutes(gpu) -> None:
    assert gpu.parse_args([]).deadline == 480
    assert gpu.parse_args(["--deadline", "30"]).deadline == 30
    assert gpu.HARD_STOP_GRACE_S <= 10  # the hard stop follows the deadline closely


def test_evaluate_stops_at_the_deadline_and_keeps_what_was_measured(gpu, tmp_path: Path) -> None:
    from servegate.compilers.select import evaluate

    finished = []
    candidates = evaluate(gpu.mlp_model(), ["eager", "export"], tmp_path, max_batch=8,
                          batch_sizes=(1, 8), repeats=5, budget_s=0.01,
                          should_stop=lambda: bool(finished), on_done=finished.append)
    assert [c.backend for c in finished] == ["eager", "export"]
    eager, export = candidates
    assert eager.status == "passed" and len(eager.p50_ms) == 2
    assert export.status == "skipped" and "deadline" in export.reason and not export.p50_ms


def test_the_hard_stop_prints_the_model_in_progress_and_exits(gpu, tmp_path: Path, capsys) -> None:
    from servegate.compilers.select import Candidate

    out = tmp_path / "gpu.json"
    run = gpu.Run("cpu", None, out)
    run.current = ("encoder", [Candidate("aoti", status="passed")])
    exits = []
    run.hard_stop(exit_fn=exits.append)
    assert exits == [gpu.DEADLINE_EXIT]
    printed = capsys.readouterr().out
    assert "deadline reached while measuring encoder" in printed and "aoti" in printed
    figures = json.loads(out.read_text())
    assert figures["deadline_reached"] is True and figures["models"][0]["model"] == "encoder"
    run.hard_stop(exit_fn=exits.append)  # once finished, a late timer does nothing
    assert exits == [gpu.DEADLINE_EXIT]


def test_cpu_candidates_are_timed_at_small_shapes_on_every_core(gpu, monkeypatch) -> None:
    import servegate.compilers.select as select

    calls = []

    def fake_evaluate(model, names, workdir, **kwargs):
        calls.append((list(names), kwargs))
        return []

    monkeypatch.setattr(select, "evaluate", fake_evaluate)
    text = types.SimpleNamespace(is_text=True, max_length=128)
    report, _ = gpu.measure(text, "encoder", Path("unused"), cuda=True, batches=(1, 8, 64, 256),
                            tokens=(32, 128), max_batch=256, names=["eager", "eager-cuda"],
                            budget_s=1.0, flops=gpu.encoder_flops)
    (gpu_names, on_gpu), (cpu_names, on_cpu) = calls
    assert gpu_names == ["eager-cuda"] and cpu_names == ["eager"]  # the GPU candidates first
    assert {s.batch for s in on_gpu["shapes"]} == {1, 8, 64, 256}
    assert {s.batch for s in on_cpu["shapes"]} == {1, 8}
    assert on_cpu["threads"] == os.cpu_count()
    assert report.chosen == "none"
    _, mlp_cpu = gpu.timing_shapes_for(types.SimpleNamespace(is_text=False), gpu.mlp_flops,
                                       batches=(1, 8, 64, 256), tokens=(32, 128))
    assert [s.batch for s in mlp_cpu] == [1, 8, 64, 256]  # a cheap model: the CPU can win anywhere


def test_the_preflight_says_first_that_no_compiler_skips_aoti(gpu, monkeypatch) -> None:
    monkeypatch.setattr(gpu, "cxx_compiler", lambda: None)
    lines = gpu.preflight(cuda=False)
    assert lines[0].startswith("WARNING: no C++ compiler") and "AOTInductor" in lines[0]
    assert any(line.startswith("torch ") and "CUDA" in line for line in lines)
    monkeypatch.setattr(gpu, "cxx_compiler", lambda: "/usr/bin/g++")
    assert gpu.preflight(cuda=False)[0].startswith("GPU:")


def test_the_preflight_names_the_gpu_on_a_cuda_host(gpu, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu, "cxx_compiler", lambda: "/usr/bin/g++")
    lines = gpu.preflight(cuda=True)
    assert lines[0] == "GPU: NVIDIA H200 (compute capability 9.0, 1 device(s))"


def test_runs_are_sized_after_the_warm_ups(monkeypatch) -> None:
    """A warm-up that compiles (a new shape) must not leave the shape 5 runs."""
    from servegate.compilers.select import time_call

    calls = []

    def predict() -> None:
        calls.append(1)
        if len(calls) <= 2:  # the warm-ups: a compile
            import time

            time.sleep(0.05)

    time_call(predict, (), repeats=30, budget_s=0.05)
    assert len(calls) == 2 + 30


def test_without_cuda_it_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA: the check would run")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA device" in done.stdout


@pytest.mark.gpu
def test_the_gpu_check_meets_its_targets(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
