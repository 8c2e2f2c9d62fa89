"""A compiling worker gets the time to compile before TorchServe gives up on it (issue 23): the
archive's ``startupTimeout`` grows with the shapes an Inductor artifact compiles at warm-up and
what one took at build; other archives keep the configured floor."""

from __future__ import annotations

from pathlib import Path

import yaml

from servegate.artifacts import CompiledArtifact
from servegate.compilers.select import Candidate
from servegate.compilers.shapes import Shape
from servegate.config import BatchingConfig
from servegate.packaging.builder import first_call_compile_s
from servegate.packaging.mar import MarContents
from servegate.packaging.spec import ArtifactSpec, OwnedShape, RouteSpec
from servegate.packaging.startup import worker_startup_timeout

ENCODER_BUCKETS = {"batch": [1, 2, 4, 8, 16, 32, 64, 128], "tokens": [16, 32, 64, 128, 256]}


def spec(fmt: str = "eager", **fields) -> ArtifactSpec:
    return ArtifactSpec(task="embedding", format=fmt, artifact="model.pt2", **fields)


def test_an_archive_that_compiles_nothing_keeps_the_configured_timeout() -> None:
    assert worker_startup_timeout(spec("exported_program"), 120) == 120
    assert worker_startup_timeout(spec("onnx"), 300, compile_s_per_shape=50.0) == 300


def test_an_inductor_worker_gets_time_for_every_bucket_it_compiles() -> None:
    forty = spec("inductor", buckets=ENCODER_BUCKETS)  # 8 x 5 shapes, 3 s each as on the H200
    assert worker_startup_timeout(forty, 120, compile_s_per_shape=3.0) == 60 + 2 * 3 * 40
    assert worker_startup_timeout(forty, 120) == 60 + 2 * 20 * 40  # not measured: assumed
    one_shape = spec("inductor")
    assert worker_startup_timeout(one_shape, 120, compile_s_per_shape=1.0) == 120  # the floor


def test_a_routed_archive_counts_only_its_compiling_artifacts() -> None:
    routed = spec("exported_program", routes=[
        RouteSpec(compiler="export", format="exported_program", artifact="model.pt2",
                  owns=[OwnedShape(batch=1)]),
        RouteSpec(compiler="inductor", format="inductor", artifact="inductor.model.pt",
                  buckets={"batch": [8, 16, 32]}, owns=[OwnedShape(batch=8)])])
    assert worker_startup_timeout(routed, 120, compile_s_per_shape=30.0) == 60 + 2 * 30 * 3


def test_an_aoti_package_that_may_recompile_on_another_gpu_gets_time_for_it() -> None:
    aoti = spec("aoti", device="cuda", fallback_artifact="model.pt2")
    assert worker_startup_timeout(aoti, 120) > 120
    assert worker_startup_timeout(spec("aoti", device="cuda"), 120) == 120


def test_the_archives_model_config_carries_it(tmp_path: Path) -> None:
    contents = MarContents(name="enc", version="1", artifact=tmp_path / "model.pt",
                           spec=spec("inductor", buckets=ENCODER_BUCKETS),
                           batching=BatchingConfig(), compile_s_per_shape=3.0)
    config = yaml.safe_load(yaml.safe_dump(contents.model_config))
    assert config["startupTimeout"] == 300 and config["batchSize"] == 8


def test_the_compile_measured_at_build_is_the_first_calls_beyond_the_artifacts_own(
        tmp_path: Path) -> None:
    def candidate(backend: str, fmt: str, total_s: float, owns: list[Shape]) -> Candidate:
        artifact = CompiledArtifact(backend=backend, format=fmt, path=tmp_path / backend,
                                    compile_seconds=0.5)
        return Candidate(backend, status="chosen" if owns else "passed", artifact=artifact,
                         compile_seconds=total_s, owns=owns)

    inductor = candidate("inductor", "inductor", 12.5, [Shape(8)])
    eager = candidate("eager", "eager", 0.6, [Shape(1)])
    unshipped = candidate("inductor-max", "inductor", 99.0, [])
    assert first_call_compile_s(eager.artifact, [eager, inductor, unshipped]) == 12.0
    assert first_call_compile_s(eager.artifact, [eager]) is None
