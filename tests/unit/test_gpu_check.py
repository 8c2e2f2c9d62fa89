"""benchmarks/gpu.py, the GPU check: it must run on a bare CUDA host (torch, numpy, onnxruntime and
tokenizers only: no MLflow, pydantic, PyYAML, scikit-learn, pandas, rich, Java). Here it runs the
same code on the CPU with every other package made unimportable; on a CUDA host, the real check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABSENT = ("mlflow", "pydantic", "yaml", "sklearn", "pandas", "rich", "typer", "httpx", "locust",
          "tensorflow", "keras", "ts", "model_archiver")
BARE = f"""
import os, runpy, sys, tempfile
ABSENT = {ABSENT!r}
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
runpy.run_path({str(ROOT / "benchmarks" / "gpu.py")!r}, run_name="__main__")
"""


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
