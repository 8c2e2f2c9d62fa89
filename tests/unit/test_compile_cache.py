"""Compile caches: activate() points Inductor/Triton at the cache and restores the environment;
pack/unpack; the MLflow round trip (a real local MLflow); a missing or corrupt cache is a warning;
and a second compile of the same model with a restored cache hits Inductor's FX graph cache."""

from __future__ import annotations

import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from servegate.compilers.cache import CACHE_TAG, SHA256_TAG, CompileCache, active_cache
from servegate.integrity import artifact_sha256


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
            # a run tagged with the key (and its hash) whose artifact is not a tar.gz: a warning
            junk = tmp_path / f"{key}.tar.gz"
            junk.write_bytes(b"not a tarball")
            _log_cache_run(client, experiment.experiment_id, key, junk, sha256=artifact_sha256(junk))
            again = CompileCache(key, tmp_path / "worker2")
            assert again.restore_from_mlflow(client, [experiment.experiment_id]) is False
            assert "missing or corrupt" in caplog.text
    finally:
        mlflow.set_tracking_uri(None)


def _log_cache_run(client, experiment_id: str, key: str, archive: Path, *,
                   sha256: str | None) -> str:
    """A run of ``experiment_id`` logging ``archive`` as the cache of ``key`` (hash tag optional),
    as a writer of the tracking server could without servegate."""
    run = client.create_run(experiment_id)
    client.log_artifact(run.info.run_id, str(archive), artifact_path="compile-cache")
    client.set_tag(run.info.run_id, CACHE_TAG, key)
    if sha256 is not None:
        client.set_tag(run.info.run_id, SHA256_TAG, sha256)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_a_shared_cache_is_restored_only_when_verified(tmp_path: Path, caplog) -> None:
    """The newest cache run wins only if its archive hashes to the sha256 it recorded, is within
    the size limit and belongs to the experiment asked for; else the compile runs cold."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = MlflowClient()
        mine = client.create_experiment("mine", artifact_location=(tmp_path / "a1").as_uri())
        theirs = client.create_experiment("theirs", artifact_location=(tmp_path / "a2").as_uri())
        key = "cpu-test-torch2.13.0"
        good = CompileCache(key, tmp_path / "built")
        good.inductor_dir.mkdir(parents=True)
        (good.inductor_dir / "graph.py").write_text("print('cached kernel')")
        archive = good.pack(tmp_path / "good" / f"{key}.tar.gz")
        evil = CompileCache(key, tmp_path / "evil")
        evil.inductor_dir.mkdir(parents=True)
        (evil.inductor_dir / "graph.py").write_text("import os; os.system('touch /tmp/pwned')")
        evil_archive = evil.pack(tmp_path / "evil-pack" / f"{key}.tar.gz")

        def restored() -> bool:
            target = CompileCache(key, tmp_path / f"worker-{len(list(tmp_path.glob('worker-*')))}")
            ok = target.restore_from_mlflow(client, [mine])
            assert not ok or _contents(target) == _contents(good)  # never the evil one
            return ok

        with caplog.at_level(logging.WARNING, logger="servegate.compilers.cache"):
            _log_cache_run(client, mine, key, archive, sha256=artifact_sha256(archive))
            assert restored() is True
            # newest run: the evil archive with the GOOD archive's hash recorded -> refused
            _log_cache_run(client, mine, key, evil_archive, sha256=artifact_sha256(archive))
            assert restored() is False and "does not match the sha256" in caplog.text
            # newest run: no hash recorded -> refused
            _log_cache_run(client, mine, key, evil_archive, sha256=None)
            assert restored() is False and "records no servegate.compile_cache_sha256" in caplog.text
            # newest run: verified, but over the size limit -> refused
            _log_cache_run(client, mine, key, archive, sha256=artifact_sha256(archive))
            small = CompileCache(key, tmp_path / "worker-small")
            assert small.restore_from_mlflow(client, [mine], max_archive_bytes=16) is False
            assert "over the 16-byte limit" in caplog.text
            assert small.restore_from_mlflow(client, [mine]) is True
            # another experiment's newer (verified) evil cache is never looked at
            _log_cache_run(client, theirs, key, evil_archive, sha256=artifact_sha256(evil_archive))
            assert restored() is True
    finally:
        mlflow.set_tracking_uri(None)


def test_unpack_refuses_an_archive_that_unpacks_too_big(tmp_path: Path) -> None:
    cache = CompileCache("cpu-x", tmp_path / "built")
    cache.inductor_dir.mkdir(parents=True)
    (cache.inductor_dir / "big").write_bytes(b"\0" * 4096)  # compresses to almost nothing
    archive = cache.pack(tmp_path / "p" / "cpu-x.tar.gz")
    target = CompileCache("cpu-x", tmp_path / "worker")
    with pytest.raises(tarfile.TarError, match="unpacks to more than"):
        target.unpack(archive, max_unpacked_bytes=1024)
    assert not target.path.exists()
    target.unpack(archive)
    assert (target.inductor_dir / "big").stat().st_size == 4096


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
