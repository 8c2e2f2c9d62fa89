"""An Inductor archive ships what its handler's load and warm-up compiled at build
(``packaging.worker_cache``), and its worker starts from it: the compile is a cache hit in a fresh
model directory. The worker unpacks the file only when it hashes to the recorded sha256, holds
only the caches, stays within the recorded size and passes ``tarfile``'s ``data`` filter; anything
else is a cold compile, never a failed load; an operator's own cache is left alone."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from servegate._resources import handler_module

sg_loaders = handler_module("sg_loaders")
SRC = Path(__file__).resolve().parents[2] / "src"
#: A worker's start; with "early", torch._dynamo is imported before the handler's setup, as a
#: user's handler may do (the import writes torch's default cache into TORCHINDUCTOR_CACHE_DIR).
WORKER = """
import json, os, sys
from pathlib import Path
if sys.argv[2] == "early":
    import torch._dynamo
from servegate.harness import LocalHandler
with LocalHandler(Path(sys.argv[1])) as handler:
    status, answer = handler.batch([json.dumps({"instances": [[0.5] * 20]}).encode()])[0]
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
    inside = cache.startswith(str(handler.model_dir))
from torch._dynamo.utils import counters
print(json.dumps({"status": status, "model_dir_cache": inside, **counters["inductor"]}))
"""


def _worker_start(archive: Path, dynamo: str = "late") -> dict:
    """A worker's load, warm-up and one request in a process of its own (torch's in-memory
    caches empty), the model directory fresh, no compile cache set in the environment;
    ``dynamo="early"`` imports torch._dynamo before the handler's setup."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", WORKER, str(archive), dynamo], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "compile cache" in line]
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"log": lines}


def test_an_inductor_archive_ships_its_compiles_and_a_fresh_worker_hits_them(tmp_path) -> None:
    import torch

    from servegate.config import BatchingConfig
    from servegate.integrity import artifact_sha256
    from servegate.packaging.builder import build_archive
    from servegate.sources import TorchModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 48), torch.nn.GELU(), torch.nn.Linear(48, 5))
    rows = np.random.default_rng(0).normal(size=(24, 20)).astype(np.float32)
    model = TorchModel(module=net.eval(), input_shape=(20,), labels=list("vwxyz"), eval_x=rows,
                       source_uri="test:gelu-mlp")
    built = build_archive(model, name="primed", version="1", compiler="inductor",
                          batching=BatchingConfig(batch_size=4, max_batch_delay_ms=2),
                          output_dir=tmp_path / "store")
    with zipfile.ZipFile(built.archive) as zf:
        spec = json.loads(zf.read("servegate.json"))
        shipped = spec["compile_cache"]
        packed = tmp_path / "shipped.tar.gz"
        packed.write_bytes(zf.read(shipped["file"]))
    assert spec["format"] == "inductor"
    assert shipped["sha256"] == artifact_sha256(packed)
    with tarfile.open(packed) as tar:
        names = tar.getnames()
        assert sum(m.size for m in tar.getmembers()) == shipped["unpacked_bytes"] > 0
    assert {n.split("/")[0] for n in names} <= {"inductor", "triton"} and len(names) > 1

    for dynamo in ("late", "early"):  # a user's handler may import torch._dynamo first
        started = _worker_start(built.archive, dynamo)
        assert started["status"] == 200
        assert started["model_dir_cache"], (dynamo, started)  # the model directory's cache
        assert started.get("fxgraph_cache_hit", 0) >= 1, (dynamo, started)
        assert started.get("fxgraph_cache_miss", 0) == 0, (dynamo, started)


def _pack(tmp_path: Path, members: dict[str, bytes], *, link: str | None = None) -> tuple[Path, dict]:
    path = tmp_path / "compile-cache.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo("inductor/escape")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, {"compile_cache": {"file": path.name, "sha256": sha,
                                    "unpacked_bytes": sum(len(d) for d in members.values())}}


@pytest.fixture
def shared(tmp_path: Path, monkeypatch) -> dict[str, str]:
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    return sg_loaders.share_compile_cache(str(tmp_path))


def test_the_worker_unpacks_the_shipped_caches_once(tmp_path: Path, shared) -> None:
    _, spec = _pack(tmp_path, {"inductor/fx/graph": b"compiled", "triton/k/kernel": b"ptx"})
    cache = tmp_path / sg_loaders.WORKER_CACHE_DIR
    assert sg_loaders.unpack_shipped_cache(spec, str(tmp_path), shared) == "shipped compile cache unpacked"
    assert (cache / "inductor" / "fx" / "graph").read_bytes() == b"compiled"
    assert (cache / "triton" / "k" / "kernel").read_bytes() == b"ptx"
    (cache / "inductor" / "fx" / "graph").write_bytes(b"recompiled by a worker")
    assert "already" in sg_loaders.unpack_shipped_cache(spec, str(tmp_path), shared)
    assert (cache / "inductor" / "fx" / "graph").read_bytes() == b"recompiled by a worker"
    assert sg_loaders.unpack_shipped_cache({}, str(tmp_path), shared) == "no shipped compile cache"


@pytest.mark.parametrize("tamper", ["sha256", "size", "foreign member", "link out", "missing file"])
def test_a_shipped_cache_that_is_not_what_the_build_recorded_is_a_cold_compile(
        tamper: str, tmp_path: Path, shared, caplog) -> None:
    members = {"inductor/fx/graph": b"compiled"}
    if tamper == "foreign member":
        members["handler_override.py"] = b"import os"
    path, spec = _pack(tmp_path, members, link="/etc/passwd" if tamper == "link out" else None)
    if tamper == "sha256":
        spec["compile_cache"]["sha256"] = "0" * 64
    elif tamper == "size":
        spec["compile_cache"]["unpacked_bytes"] = 3
    elif tamper == "missing file":
        path.unlink()
    outcome = sg_loaders.unpack_shipped_cache(spec, str(tmp_path), shared)
    assert outcome.startswith("shipped compile cache not used"), outcome
    cache = tmp_path / sg_loaders.WORKER_CACHE_DIR
    assert not (cache / sg_loaders.SHIPPED_MARKER).exists()
    assert not (cache / "inductor" / "fx").exists() and not (tmp_path / "handler_override.py").exists()
    assert not any(p.name.startswith(".unpack-") for p in cache.iterdir())
    assert "compiling cold" in caplog.text


def test_an_operators_own_cache_is_left_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "operators"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    shared = sg_loaders.share_compile_cache(str(tmp_path))
    _, spec = _pack(tmp_path, {"inductor/fx/graph": b"compiled"})
    assert "operator" in sg_loaders.unpack_shipped_cache(spec, str(tmp_path), shared)
    assert not (tmp_path / "operators").exists()
    assert not (tmp_path / sg_loaders.WORKER_CACHE_DIR / "inductor" / "fx").exists()


def test_only_an_archive_whose_worker_compiles_is_primed() -> None:
    from servegate.packaging.worker_cache import compiles_in_worker

    assert compiles_in_worker({"format": "inductor"})
    assert compiles_in_worker({"format": "onnx", "routes": [{"format": "onnx"}, {"format": "inductor"}]})
    assert not compiles_in_worker({"format": "aoti", "routes": []})
    assert not compiles_in_worker({"format": "exported_program"})
