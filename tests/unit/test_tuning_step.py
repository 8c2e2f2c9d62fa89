"""The pipeline's ``tune=true`` step without a server: what it does with the search's winner
(the archive rewritten, logged, its hash recorded, the run's batching changed) and without one
(the archive kept as built)."""

from __future__ import annotations

import json
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from servegate import steps
from servegate.config import PipelineConfig
from servegate.integrity import artifact_sha256
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG
from servegate.targets import Built
from servegate.tuning import measure as measure
from servegate.tuning.measure import archive_batching
from servegate.tuning.search import SLO, Costs, Measurement, Outcome, Point, TuneResult


class FakeRegistry:
    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}

    def tag(self, version: str, tags: dict[str, str]) -> None:
        self.tags.setdefault(version, {}).update(tags)


def _result(winner: Point | None) -> TuneResult:
    best = Measurement(8, 900.0, 5.0, 9.0, 12.0, 0.0, 9000)
    outcomes = (Outcome(winner, "frontier", "", (best,), best),) if winner else ()
    return TuneResult(outcomes, outcomes[0] if outcomes else None, SLO(50, 100),
                      Costs(0.5, 2.0, 32, 1.0, 2), grid_measurements=100, measurements=3)


@pytest.fixture
def stepped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    archive = tmp_path / "m.v2.mar"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "m", "modelVersion": "2"}}))
        zf.writestr("model-config.yaml", yaml.safe_dump({"batchSize": 8, "maxBatchDelay": 2,
                                                         "minWorkers": 1, "maxWorkers": 1}))
    logged: list[tuple[str, ...]] = []

    @contextmanager
    def step(name: str, nested: bool = True):
        logged.append(("step", name))
        yield "run-id"

    monkeypatch.setattr(steps.tracking, "step", step)
    def log_tuning(params: dict, metrics: dict, folder: Path) -> None:
        logged.append(("tuning", *sorted(p.name for p in folder.iterdir())))

    monkeypatch.setattr(steps.tracking, "log_tuning", log_tuning)
    monkeypatch.setattr(steps.tracking, "log_artifact_file",
                        lambda path, where: f"runs:/tune-run/{where}/{path.name}")
    run = steps.Run(PipelineConfig(name="m", tune=True, server="local"), None, object(),  # type: ignore[arg-type]
                    Console(quiet=True))
    built = Built(archive, "runs:/package-run/archive/m.v2.mar", "eager", "float32")
    return run, built, archive, logged, tmp_path


def test_the_winner_becomes_the_archive_the_registry_and_the_runs_batching(stepped, monkeypatch) -> None:
    run, built, archive, logged, tmp_path = stepped
    monkeypatch.setattr(measure, "tune_archive", lambda *a, **k: _result(Point(16, 5, 2, threads=3)))
    registry = FakeRegistry()
    tuned, sha256 = steps.tune(run, registry, built, "old-sha", "2", tmp_path)  # type: ignore[arg-type]
    assert tuned.path != archive and tuned.uri == "runs:/tune-run/archive/m.v2.mar"
    assert archive_batching(tuned.path) == {"batchSize": 16, "maxBatchDelay": 5, "minWorkers": 2,
                                            "maxWorkers": 2}
    assert sha256 == artifact_sha256(tuned.path)
    assert registry.tags == {"2": {ARCHIVE_TAG: tuned.uri, ARCHIVE_SHA256_TAG: sha256}}
    b = run.config.batching
    assert (b.batch_size, b.max_batch_delay_ms, b.min_workers, b.max_workers) == (16, 5, 2, 2)
    assert b.threads_per_worker == 3  # the run's threads parameter is the winner's too
    assert ("tuning", "frontier.json", "frontier.png") in logged


def test_without_a_winner_the_archive_stays_as_built(stepped, monkeypatch) -> None:
    run, built, archive, logged, tmp_path = stepped
    monkeypatch.setattr(measure, "tune_archive", lambda *a, **k: _result(None))
    registry = FakeRegistry()
    before = run.config
    assert steps.tune(run, registry, built, "old-sha", "2", tmp_path) == (built, "old-sha")  # type: ignore[arg-type]
    assert registry.tags == {} and run.config == before
    assert ("tuning", "frontier.json", "frontier.png") in logged


def test_the_workers_parameter_sets_both_bounds_torchserve_reads() -> None:
    from servegate.config import config_from_parameters

    batching = config_from_parameters({"workers": "3.0", "batch_size": "16"}).batching
    assert (batching.min_workers, batching.max_workers) == (3, 3)
    written = batching.model_config_yaml()
    assert written["minWorkers"] == written["maxWorkers"] == 3 and written["batchSize"] == 16
    assert config_from_parameters({}).batching.max_workers == 1


def test_tune_is_refused_for_a_target_without_a_batching_search() -> None:
    from servegate.config import config_from_parameters
    from servegate.errors import ConfigError

    assert config_from_parameters({"tune": "true", "target": "tfserving"}).tune is True
    with pytest.raises(ConfigError, match="tune searches the batching of torchserve and tfserving"):
        config_from_parameters({"tune": "true", "target": "toy"})
    assert config_from_parameters({"tune": "false", "target": "toy"}).tune is False


def test_on_tf_serving_the_winner_becomes_the_savedmodels_batching_file(
        stepped, monkeypatch) -> None:
    pytest.importorskip("tensorflow_serving")
    from servegate.tuning import tfserving as tune_tf

    run, _, _, logged, tmp_path = stepped
    run.config = run.config.model_copy(update={"target": "tfserving"})
    version_dir = tmp_path / "compiled" / "2"
    (version_dir / "variables").mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"graph")
    tune_tf.write_point(version_dir, Point(8, 2, 4))  # as built
    built = Built(version_dir, "runs:/package-run/savedmodel/2", "savedmodel", "float32")
    searched: list[Path] = []

    def search(backend, name, path, served, **kw):
        searched.append(path)
        return _result(Point(32, 10, 2))

    monkeypatch.setattr(measure, "tune_archive", lambda *a, **k: pytest.fail("TorchServe's search"))
    monkeypatch.setattr(tune_tf, "tune_savedmodel", search)
    monkeypatch.setattr(steps.tracking, "log_artifact_dir",
                        lambda path, where: f"runs:/tune-run/{where}")
    registry = FakeRegistry()
    tuned, sha256 = steps.tune(run, registry, built, "old-sha", "2", tmp_path)  # type: ignore[arg-type]
    assert searched == [version_dir]
    assert tuned.uri == "runs:/tune-run/savedmodel/2" and tuned.path != version_dir
    assert tune_tf.savedmodel_point(tuned.path, cores=1) == Point(32, 10, 2)
    assert tune_tf.savedmodel_point(version_dir, cores=1) == Point(8, 2, 4)  # the build's kept
    assert (tuned.path / "saved_model.pb").read_bytes() == b"graph"
    assert sha256 == artifact_sha256(tuned.path) != artifact_sha256(version_dir)
    assert registry.tags == {"2": {ARCHIVE_TAG: tuned.uri, ARCHIVE_SHA256_TAG: sha256}}
    b = run.config.batching
    assert (b.batch_size, b.max_batch_delay_ms, b.min_workers) == (32, 10, 2)
