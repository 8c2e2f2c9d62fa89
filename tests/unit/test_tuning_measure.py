"""The measuring side of ``servegate tune`` without a server: scratch archives, request samples,
and scratch versions dropped whatever happens (a fake backend records the calls)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from servegate.backends.base import VersionInfo
from servegate.cli import app
from servegate.errors import ConfigError, PackagingError, ServerRequestError
from servegate.tuning.measure import (
    SCRATCH_FIRST,
    TorchServeBench,
    archive_batching,
    remove_leftovers,
    request_samples,
    scratch_archive,
)
from servegate.tuning.search import Point


def _archive(path: Path, *, warmup: object = None, config: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(
            {"model": {"modelName": "m", "modelVersion": "3", "handler": "h.py"}}))
        zf.writestr("model-config.yaml", yaml.safe_dump(config if config is not None else {
            "batchSize": 8, "maxBatchDelay": 2, "minWorkers": 1, "maxWorkers": 1,
            "responseTimeout": 120, "deviceType": "cpu"}))
        zf.writestr("model.pt2", b"\x00weights\xff" * 100)
        zf.writestr("servegate.json", json.dumps({"format": "export", "intra_op_threads": None}))
        zf.writestr("warmup.json", json.dumps(warmup if warmup is not None
                                              else {"instances": [[1.0, 2.0], [3.0, 4.0]]}))
    return path


def test_a_scratch_archive_changes_only_the_version_and_the_batching(tmp_path: Path) -> None:
    source = _archive(tmp_path / "m.v3.mar")
    made = scratch_archive(source, tmp_path / "m.v900001.mar", "900001", Point(16, 5, 2))
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(made) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        assert b.read("model.pt2") == a.read("model.pt2")
        assert json.loads(b.read("MAR-INF/MANIFEST.json"))["model"] == {
            "modelName": "m", "modelVersion": "900001", "handler": "h.py"}
    assert archive_batching(made) == {"batchSize": 16, "maxBatchDelay": 5, "minWorkers": 2,
                                      "maxWorkers": 2, "responseTimeout": 120, "deviceType": "cpu"}
    assert not list(tmp_path.glob("*.partial"))


def test_a_scratch_archive_of_something_else_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mar"
    with zipfile.ZipFile(bogus, "w") as zf:
        zf.writestr("model.pt2", b"x")
    with pytest.raises(PackagingError, match="not a TorchServe archive"):
        scratch_archive(bogus, tmp_path / "m.v900001.mar", "900001", Point(1, 1, 1))
    (tmp_path / "text.mar").write_text("not a zip")
    with pytest.raises(PackagingError):
        scratch_archive(tmp_path / "text.mar", tmp_path / "m.v900002.mar", "900002", Point(1, 1, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.mar", "text.mar"]
    with pytest.raises(ConfigError, match="digits only"):
        scratch_archive(_archive(tmp_path / "m.mar"), tmp_path / "x.mar", "../1", Point(1, 1, 1))


def test_samples_are_one_warm_up_row_per_request(tmp_path: Path) -> None:
    assert request_samples(_archive(tmp_path / "a.mar")) == [
        {"instances": [[1.0, 2.0]]}, {"instances": [[3.0, 4.0]]}]
    with pytest.raises(ConfigError, match="no instances"):
        request_samples(_archive(tmp_path / "b.mar", warmup={"instances": []}))
    with zipfile.ZipFile(tmp_path / "c.mar", "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", "{}")
    with pytest.raises(ConfigError, match="warmup.json"):
        request_samples(tmp_path / "c.mar")


@dataclass
class FakeDelivery:
    model_store: Path


@dataclass
class FakeBackend:
    """Records deploys and undeploys; ``refuse`` makes TorchServe's register fail."""

    delivery: FakeDelivery
    refuse: bool = False
    client: object = None  # TorchServe's client (unused without a load)
    held: set[str] = field(default_factory=lambda: {"1", str(SCRATCH_FIRST)})
    calls: list[tuple[str, str]] = field(default_factory=list)

    default: str = "1"

    def versions(self, name: str) -> list[VersionInfo]:
        return [VersionInfo(name, v, v == self.default, 1, 1) for v in sorted(self.held)]

    def default_version(self, name: str) -> str:
        return self.default

    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1) -> None:
        assert artifact.exists() and artifact.parent == self.delivery.model_store
        self.calls.append(("deploy", version))
        if self.refuse:
            raise ServerRequestError("worker died", status=500, server_message="worker died")
        self.held.add(version)

    def undeploy(self, name: str, version: str) -> None:
        self.calls.append(("undeploy", version))
        self.held.discard(version)


def test_a_scratch_version_skips_held_numbers_and_is_dropped_after_use(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    source = _archive(store / "m.v1.mar")
    backend = FakeBackend(FakeDelivery(store))
    bench = TorchServeBench(backend, "m", source, request_samples(source), seconds=1.0)
    with bench.applied(Point(4, 2, 1)):
        version = str(SCRATCH_FIRST + 1)  # the first is held by the server
        assert version in backend.held and (store / f"m.v{version}.mar").exists()
    assert backend.calls == [("deploy", version), ("undeploy", version)]
    assert backend.held == {"1", str(SCRATCH_FIRST)}
    assert sorted(p.name for p in store.iterdir()) == ["m.v1.mar"]


def test_a_scratch_version_the_server_refused_is_dropped_too(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    source = _archive(store / "m.v1.mar")
    backend = FakeBackend(FakeDelivery(store), refuse=True)
    bench = TorchServeBench(backend, "m", source, request_samples(source), seconds=1.0)
    with pytest.raises(ServerRequestError), bench.applied(Point(4, 2, 1)):
        pytest.fail("never reached")
    assert [c[0] for c in backend.calls] == ["deploy", "undeploy"]
    assert sorted(p.name for p in store.iterdir()) == ["m.v1.mar"]


def test_a_server_without_a_model_store_is_refused(tmp_path: Path) -> None:
    backend = FakeBackend(FakeDelivery(tmp_path))
    backend.delivery = object()  # type: ignore[assignment]  # registered by URL: no store
    with pytest.raises(ConfigError, match="model store"):
        TorchServeBench(backend, "m", tmp_path / "m.v1.mar", [], seconds=1.0)
    with pytest.raises(ConfigError, match="not a fleet"):  # a fleet has neither
        TorchServeBench(object(), "m", tmp_path / "m.v1.mar", [], seconds=1.0)


@pytest.mark.parametrize("option, message", [
    (["--delays-ms", "0,5"], "100 ms"), (["--users", "4,x"], "whole numbers"),
    (["--workers", "0"], "start at 1")])
def test_tune_refuses_bad_search_options_before_touching_a_server(tmp_path: Path, option,
                                                                   message) -> None:
    result = CliRunner().invoke(app, ["tune", "digits", *option, "--workdir", str(tmp_path),
                                      "--server", "local"])
    assert result.exit_code == 5, result.output
    assert message in result.output
    assert not any(tmp_path.iterdir()), "no server was started"


def test_a_point_with_threads_sets_them_in_the_spec_only(tmp_path: Path) -> None:
    source = _archive(tmp_path / "m.v3.mar")
    auto = scratch_archive(source, tmp_path / "a.mar", "900001", Point(4, 2, 1))
    pinned = scratch_archive(source, tmp_path / "b.mar", "900002", Point(4, 2, 1, threads=3))
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(auto) as b, zipfile.ZipFile(pinned) as c:
        assert b.read("servegate.json") == a.read("servegate.json")
        assert json.loads(c.read("servegate.json")) == {"format": "export", "intra_op_threads": 3}


def test_leftover_scratch_versions_are_removed_but_never_the_default(tmp_path: Path) -> None:
    backend = FakeBackend(FakeDelivery(tmp_path), held={"1", "7", "900001", "900005", "1.0"})
    for version in backend.held:
        (tmp_path / f"m.v{version}.mar").write_bytes(b"x")
    assert remove_leftovers(backend, "m") == ["900001", "900005"]
    assert backend.held == {"1", "7", "1.0"}  # another tool's version name is left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.v1.0.mar", "m.v1.mar", "m.v7.mar"]
    backend.default = "900001"  # someone made a scratch version the default: not ours to drop
    backend.held.add("900001")
    assert remove_leftovers(backend, "m") == [] and "900001" in backend.held
