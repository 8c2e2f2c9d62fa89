"""Compile caches: activate() points Inductor/Triton at the cache and restores the environment;
pack/unpack; the MLflow round trip (a real local MLflow); a missing or corrupt cache is a warning;
and a second compile of the same model with a restored cache hits Inductor's FX graph cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from servegate.compilers.cache import CACHE_TAG, CompileCache, active_cache


def _contents(cache: CompileCache) -> dict[str, bytes]:
    return {str(p.relative_to(cache.path)): p.read_bytes() for p in cache.files()}


def test_activate_points_the_caches_and_restores_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", "/somewhere/else")
    cache = CompileCache("cpu-key", tmp_path)
    with cache.activate() as active:
        assert active is cache and active_cache() is cache
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cpu-key" / "inductor").resolve())
        assert os.environ["TRITON_CACHE_DIR"] == str((tmp_path / "cpu-key" / "triton").resolve())
        assert cache.tensorrt_timing_cache.is_relative_to(cache.path)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert os.environ["TRITON_CACHE_DIR"] == "/somewhere/else" and active_cache() is None
    with pytest.raises(ValueError, match="safe name"):
        CompileCache("../escape", tmp_path)


def test_pack_unpack_round_trip_and_a_corrupt_archive_leaves_the_cache(tmp_path: Path) -> None:
    first = CompileCache("k1", tmp_path / "a")
    (first.inductor_dir / "fxgraph").mkdir(parents=True)
    (first.inductor_dir / "fxgraph" / "entry").write_bytes(os.urandom(64))
    first.tensorrt_timing_cache.parent.mkdir(parents=True)
    first.tensorrt_timing_cache.write_bytes(b"timing")
    archive = first.pack()
    second = CompileCache("k1", tmp_path / "b")
    second.unpack(archive)
    assert _contents(second) == _contents(first) and len(_contents(first)) == 2
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[: len(archive.read_bytes()) // 2])
    with pytest.raises(Exception):  # noqa: B017 (tarfile or zlib: either says it is corrupt)
        second.unpack(broken)
    assert _contents(second) == _contents(first)


def test_the_cache_round_trips_through_mlflow(tmp_path: Path, caplog) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.set_experiment("compile-cache")
        client = MlflowClient()
        key = "NVIDIA_H200-sm9.0-cuda13.0-driver580-torch2.13.0"
        cache = CompileCache(key, tmp_path / "built")
        cache.triton_dir.mkdir(parents=True)
        (cache.triton_dir / "kernel.cubin").write_bytes(os.urandom(128))
        other = CompileCache("other-device", tmp_path / "built")
        other.inductor_dir.mkdir(parents=True)
        (other.inductor_dir / "x").write_bytes(b"not this one")
        for c in (other, cache):
            with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
                c.save_to_mlflow(client, run.info.run_id)
        tagged = client.get_run(run.info.run_id)
        assert tagged.data.tags[CACHE_TAG] == key
        assert [f.path for f in client.list_artifacts(run.info.run_id, "compile-cache")] == [
            f"compile-cache/{key}.tar.gz"]

        restored = CompileCache(key, tmp_path / "worker")
        assert restored.restore_from_mlflow(client, [experiment.experiment_id]) is True
        assert _contents(restored) == _contents(cache)

        with caplog.at_level(logging.WARNING, logger="servegate.compilers.cache"):
            missing = CompileCache("never-built", tmp_path / "worker")
            assert missing.restore_from_mlflow(client, [experiment.experiment_id]) is False
            assert "no MLflow run" in caplog.text
            # a run tagged with the key whose artifact is not a tar.gz: a warning, not a failure
            with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
                junk = tmp_path / f"{key}.tar.gz"
                junk.write_bytes(b"not a tarball")
                client.log_artifact(run.info.run_id, str(junk), artifact_path="compile-cache")
                client.set_tag(run.info.run_id, CACHE_TAG, key)
            again = CompileCache(key, tmp_path / "worker2")
            assert again.restore_from_mlflow(client, [experiment.experiment_id]) is False
            assert "missing or corrupt" in caplog.text
    finally:
        mlflow.set_tracking_uri(None)


def test_a_restored_cache_makes_the_second_inductor_compile_a_cache_hit(tmp_path: Path) -> None:
    import torch
    from torch._dynamo.utils import counters

    from servegate.compilers.driver import compile_model
    from servegate.compilers.select import load_predictor
    from servegate.config import BatchingConfig
    from servegate.sources.base import TorchModel

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x = np.random.default_rng(0).normal(size=(32, 12)).astype(np.float32)
    model = TorchModel(module=module, input_shape=(12,), labels=["a", "b", "c"], eval_x=x)

    def compile_and_run(cache: CompileCache) -> tuple[np.ndarray, dict[str, int]]:
        torch._dynamo.reset()
        counters.clear()
        artifact, _ = compile_model(model, "inductor", tmp_path / "work" / cache.root.name,
                                    BatchingConfig(), cache=cache)
        with cache.activate():  # the worker compiles on its first call
            out = load_predictor(artifact, 1)(x)[0]
        return out, dict(counters["inductor"])

    built = CompileCache("cpu-test", tmp_path / "builder")
    cold_out, cold = compile_and_run(built)
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and cold.get("fxgraph_cache_hit", 0) == 0
    assert any(p.is_relative_to(built.inductor_dir) for p in built.files())

    worker = CompileCache("cpu-test", tmp_path / "worker")
    worker.unpack(built.pack())
    warm_out, warm = compile_and_run(worker)
    assert warm.get("fxgraph_cache_hit", 0) >= 1 and warm.get("fxgraph_cache_miss", 0) == 0
    np.testing.assert_allclose(warm_out, cold_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(warm_out, module(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_the_run_modes_local_and_shared(tmp_path: Path, monkeypatch) -> None:
    """``local``: torch's own caches (nothing redirected, nothing read from MLflow); ``shared``: a
    fresh home restores the newest cache of this device type logged in the run's experiment."""
    import mlflow

    from servegate import tracking

    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("cache-modes")
    try:
        monkeypatch.setenv("SERVEGATE_HOME", str(tmp_path / "first-runner"))
        assert tracking.compile_cache("local") is None
        with mlflow.start_run():
            cache = tracking.compile_cache("shared")
            assert cache is not None and cache.path.is_relative_to(tmp_path / "first-runner")
            (cache.inductor_dir / "fxgraph").mkdir(parents=True)
            (cache.inductor_dir / "fxgraph" / "entry").write_bytes(b"compiled")
            tracking.save_compile_cache(cache)
        monkeypatch.setenv("SERVEGATE_HOME", str(tmp_path / "fresh-runner"))
        with mlflow.start_run():
            assert tracking.compile_cache("local") is None
            assert not (tmp_path / "fresh-runner" / "compile-cache").exists()  # never read
            shared = tracking.compile_cache("shared")
            assert shared is not None and _contents(shared) == {"inductor/fxgraph/entry": b"compiled"}
    finally:
        mlflow.set_tracking_uri(None)
