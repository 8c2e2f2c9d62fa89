"""Issue 21.2: a fleet of replicas, all or none. The decisions with in-memory replicas
(``servegate.testing.MemoryBackend``) and MLflow on SQLite; three real TorchServes in
tests/integration/test_fleet_replicas.py."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from servegate import promotion
from servegate.backends.base import ServingBackend
from servegate.backends.torchserve.fleet import FleetBackend, Replica
from servegate.config import TorchServeAttach, parse_replicas
from servegate.errors import ConfigError, PipelineError, ReplicaFailed, ServerNotRunning
from servegate.promotion import PROMOTION_TAG, move_champion, pending_move
from servegate.reconcile import reconcile
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, CHAMPION, PREVIOUS, Registry
from servegate.testing import MemoryBackend


def fleet(count: int = 3) -> tuple[FleetBackend, list[MemoryBackend]]:
    members = [MemoryBackend() for _ in range(count)]
    return FleetBackend([Replica(f"replica-{i}", m) for i, m in enumerate(members)]), members


def down(*args: str) -> None:
    raise ServerNotRunning("TorchServe unreachable")


def defaults(members: list[MemoryBackend], name: str = "digits") -> list[str | None]:
    return [m.default_version(name) for m in members]


def test_a_fleet_is_a_serving_backend() -> None:
    assert isinstance(fleet()[0], ServingBackend)


def test_names_lists_a_model_on_any_replica_and_a_dead_replica_is_named() -> None:
    backend, members = fleet()
    members[1].deploy(Path("/nowhere"), "wine", "1")  # a partial deployment is still listed
    backend.deploy(Path("/nowhere"), "digits", "1")
    assert backend.names() == ["digits", "wine"]
    members[2].names = down  # type: ignore[method-assign]
    with pytest.raises(ReplicaFailed, match="replica-2"):
        backend.names()


def test_set_default_moves_every_replica_or_none_and_names_the_one_that_failed() -> None:
    backend, members = fleet()
    for v in ("1", "2"):
        backend.deploy(Path("/nowhere"), "digits", v)
    assert defaults(members) == ["1", "1", "1"]
    members[2].hooks["set_default"] = down
    with pytest.raises(ReplicaFailed) as failed:
        backend.set_default("digits", "2")
    assert failed.value.replica == "replica-2" and "replica replica-2 failed" in str(failed.value)
    assert isinstance(failed.value.__cause__, ServerNotRunning)
    assert defaults(members) == ["1", "1", "1"]  # replicas 0 and 1 were moved back
    del members[2].hooks["set_default"]
    backend.set_default("digits", "2")
    assert defaults(members) == ["2", "2", "2"]


def test_deploy_is_all_or_none_too() -> None:
    backend, members = fleet()
    backend.deploy(Path("/nowhere"), "digits", "1")
    members[1].hooks["deploy"] = down
    with pytest.raises(ReplicaFailed, match="replica-1"):
        backend.deploy(Path("/nowhere"), "digits", "2")
    assert [[v.version for v in m.versions("digits")] for m in members] == [["1"]] * 3


def test_an_archive_that_fails_its_hash_on_one_replica_leaves_none_and_keeps_its_kind() -> None:
    from servegate.errors import IntegrityError

    backend, members = fleet()

    def tampered(*args: str) -> None:
        raise IntegrityError("digits v1: the bytes in this replica's store differ")

    members[2].hooks["deploy"] = tampered
    with pytest.raises(IntegrityError):
        backend.deploy(Path("/nowhere"), "digits", "1")
    assert [m.versions("digits") for m in members] == [[], [], []]


def test_a_version_is_served_only_when_every_replica_serves_it() -> None:
    backend, members = fleet()
    for v in ("1", "2"):
        backend.deploy(Path("/nowhere"), "digits", v)
    backend.set_default("digits", "2")
    members[1]._state.clear()  # replica 1 restarted empty
    assert backend.versions("digits") == []
    assert backend.default_version("digits") is None
    # deploying again only fills the replica that lacks it; the default copies stay
    backend.deploy(Path("/nowhere"), "digits", "2")
    assert [c for m in members for c in m.calls if c[0] == "deploy"][-1:] == [("deploy", "digits", "2")]
    assert sum(c == ("deploy", "digits", "2") for m in members for c in m.calls) == 4
    assert [v.version for v in backend.versions("digits")] == ["2"]


def test_a_replica_that_does_not_answer_fails_every_read() -> None:
    backend, members = fleet()
    backend.deploy(Path("/nowhere"), "digits", "1")
    members[0].hooks["predict"] = down  # predict goes round-robin: each replica is reached
    with pytest.raises(ServerNotRunning):
        for _ in range(3):
            backend.predict("digits", {})
    original = members[2].versions
    members[2].versions = lambda name: down()  # type: ignore[method-assign]
    with pytest.raises(ReplicaFailed, match="replica-2"):
        backend.versions("digits")
    members[2].versions = original  # type: ignore[method-assign]


# ---- promotion across a fleet -------------------------------------------------------------------


def registered(name: str, count: int) -> Registry:
    client = MlflowClient()
    client.create_registered_model(name)
    for _ in range(count):
        client.create_model_version(name, source="file:///nowhere")
    return Registry.for_model(name)


def test_a_replica_killed_mid_promotion_reverts_the_others_and_the_registry(mlflow_store: Path) -> None:
    registry = registered("digits", 2)
    backend, members = fleet()
    for v in ("1", "2"):
        backend.deploy(Path("/nowhere"), "digits", v)
    registry.set_alias(CHAMPION, "1")

    def kill_replica_2(name: str, version: str) -> None:  # replica 0 moved; then 2 dies
        members[2].hooks["set_default"] = down
        members[2].versions = lambda n: down()  # type: ignore[method-assign]
        members[2].default_version = lambda n: down()  # type: ignore[method-assign]

    members[1].hooks["set_default"] = kill_replica_2
    with pytest.raises(PipelineError) as failed:
        move_champion(registry, backend, "digits", "2")
    message = str(failed.value)
    assert "replica replica-2 failed" in message and "registry is back at v1" in message
    assert registry.version_for_alias(CHAMPION) == "1" and registry.version_for_alias(PREVIOUS) is None
    assert defaults(members[:2]) == ["1", "1"]  # the live replicas were moved back
    assert pending_move(registry) is not None  # the dead one is unknown: the next run repairs
    # it restarts empty; reconcile (or the next run) repairs the move and restores the champion
    members[2] = MemoryBackend()
    backend.replicas[2] = Replica("replica-2", members[2])
    archive = mlflow_store / "digits.mar"
    archive.write_bytes(b"champion")
    from servegate.integrity import artifact_sha256

    mlflow.set_experiment("t")
    with mlflow.start_run():
        mlflow.log_artifact(str(archive), artifact_path="archive")
        uri = f"{mlflow.get_artifact_uri('archive')}/{archive.name}"
    registry.tag("1", {ARCHIVE_TAG: uri, ARCHIVE_SHA256_TAG: artifact_sha256(archive)})
    said: list[str] = []
    done = reconcile(registry, backend, "digits", 1, said.append)
    assert done.restored and done.champion == "1"
    assert registry.model_tags()[PROMOTION_TAG].startswith("reverted by repair")
    assert defaults(members) == ["1", "1", "1"]
    assert [v.version for v in backend.versions("digits")] == ["1"]
    assert not reconcile(registry, backend, "digits", 1, said.append).restored  # idempotent


def test_a_promotion_across_the_fleet(mlflow_store: Path) -> None:
    registry = registered("digits", 2)
    backend, members = fleet()
    for v in ("1", "2"):
        backend.deploy(Path("/nowhere"), "digits", v)
    registry.set_alias(CHAMPION, "1")
    promotion.promote(registry, backend, "digits", "2", print)
    assert defaults(members) == ["2", "2", "2"] and registry.version_for_alias(CHAMPION) == "2"


# ---- the attach settings -----------------------------------------------------------------------
def test_replicas_as_json_with_each_ones_keys() -> None:
    replicas = parse_replicas('[{"management_url": "http://a:8081", "inference_url": "http://a:8080",'
                              ' "key_file": "/a/key_file.json"},'
                              ' {"management_url": "http://b:8081", "inference_url": "http://b:8080",'
                              ' "keys": "{}"}]')
    assert [r.management_url for r in replicas] == ["http://a:8081", "http://b:8081"]
    assert replicas[0].key_file == Path("/a/key_file.json") and replicas[1].keys is not None
    assert "{}" not in repr(replicas[1])  # the keys are a secret


def test_replicas_as_a_comma_list_and_from_dns() -> None:
    pairs = parse_replicas("http://a:8081=http://a:8080, https://b:9081=https://b:9080")
    assert [(r.management_url, r.inference_url) for r in pairs] == [
        ("http://a:8081", "http://a:8080"), ("https://b:9081", "https://b:9080")]
    resolved = parse_replicas("dns:http://ts.ns.svc:8081=http://ts.ns.svc:8080",
                              resolve=lambda host: ["10.0.0.7", "10.0.0.5", "10.0.0.7"])
    assert [(r.management_url, r.inference_url) for r in resolved] == [
        ("http://10.0.0.5:8081", "http://10.0.0.5:8080"),
        ("http://10.0.0.7:8081", "http://10.0.0.7:8080")]


@pytest.mark.parametrize(("text", "why"), [
    ("", "no replica"),
    ("http://a:8081", "not MANAGEMENT_URL=INFERENCE_URL"),
    ("ftp://a:8081=http://a:8080", "not an http"),
    ("http://user:pw@a:8081=http://a:8080", "not an http"),
    ("http://a:8081=http://a:8080,http://a:8081/=http://b:8080", "listed twice"),
    ("[{\"management_url\": \"http://a:8081\"}]", "inference_url"),
    ("[1, 2]", "list of objects"),
    ("[not json", "not valid JSON"),
    ("dns:http://a:8081=http://b:8080", "one Service host"),
])
def test_bad_replica_lists_are_refused_clearly(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_replicas(text, resolve=lambda host: ["10.0.0.1"])


def test_a_dns_name_without_addresses_is_refused() -> None:
    with pytest.raises(ConfigError, match="resolves to no address"):
        parse_replicas("dns:http://a:8081=http://a:8080", resolve=lambda host: [])


def test_the_environment_names_a_fleet_or_one_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MANAGEMENT_URL", "INFERENCE_URL", "KEY_FILE", "KEYS", "REPLICAS"):
        monkeypatch.delenv(f"SERVEGATE_TORCHSERVE_{name}", raising=False)
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_REPLICAS", "http://a:8081=http://a:8080")
    attach = TorchServeAttach.from_env()
    assert attach is not None and len(attach.replicas) == 1
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_KEY_FILE", "/one/key_file.json")
    with pytest.raises(ConfigError, match="each have their own"):
        TorchServeAttach.from_env()
    monkeypatch.delenv("SERVEGATE_TORCHSERVE_KEY_FILE")
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_MANAGEMENT_URL", "http://c:8081")
    with pytest.raises(ConfigError, match="not both"):
        TorchServeAttach.from_env()


def test_the_next_run_restores_the_champion_on_a_replica_that_came_back_empty(
        mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from servegate.config import PipelineConfig
    from servegate.errors import GateFailed
    from servegate.pipeline import DeployPipeline
    from servegate.testing import ScriptedModel, ScriptedTarget

    mlflow.set_experiment("fleet")
    backend, members = fleet()
    target = ScriptedTarget(backend, [ScriptedModel(0.95, 10), ScriptedModel(0.80, 10)])

    def run() -> None:
        DeployPipeline(PipelineConfig(model="builtin:scripted"), backend, Console(quiet=True),
                       target=target).run()

    run()
    assert defaults(members, "scripted") == ["1", "1", "1"]
    members[1]._state.clear()  # replica 1 restarted: it serves nothing
    seen = [len(m.calls) for m in members]
    with pytest.raises(GateFailed):  # the worse challenger is rejected, after the restore
        run()
    assert defaults(members, "scripted") == ["1", "1", "1"]
    assert [[v.version for v in m.versions("scripted")] for m in members] == [["1"]] * 3
    restored = [[c for c in m.calls[n:] if c == ("deploy", "scripted", "1")]
                for m, n in zip(members, seen, strict=True)]
    assert restored == [[], [("deploy", "scripted", "1")], []]  # only where it was missing
