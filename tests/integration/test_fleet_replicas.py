"""Issue 21.2 against three real TorchServe processes on loopback (a fleet attached through
``SERVEGATE_TORCHSERVE_REPLICAS``, each replica with its own keys and model store) and MLflow on
SQLite: a gated run promotes across every replica and its load reaches all of them; a replica
SIGKILLed mid-promotion leaves every live replica and the registry on the old champion and is
named; restarted empty on the same ports, `servegate reconcile` brings it to the champion.
The three servers are started once, in parallel, for the whole module."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from pipeline_env import pipeline_home

from servegate import promotion
from servegate._resources import loadtests_dir
from servegate.backends._process import group_processes
from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
from servegate.backends.torchserve.local import ServerState
from servegate.config import LoadSettings, PipelineConfig, TorchServeSettings
from servegate.errors import PipelineError
from servegate.integrity import artifact_sha256
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, CHAMPION, PREVIOUS, Registry

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 3


class Fleet:
    """Three local TorchServes; ``restart(i)`` brings one back empty on the same ports."""

    def __init__(self, root: Path) -> None:
        self.servers = [LocalTorchServe(TorchServeSettings(workdir=root / f"replica{i}"))
                        for i in range(REPLICAS)]
        with ThreadPoolExecutor(REPLICAS) as pool:
            self.states: list[ServerState] = list(pool.map(lambda s: s.start(), self.servers))

    def replicas_env(self) -> str:
        return json.dumps([{"management_url": s.management, "inference_url": s.inference,
                            "metrics_url": s.metrics, "key_file": s.key_file,
                            "model_store": s.model_store} for s in self.states])

    def kill(self, i: int) -> None:
        """SIGKILL the whole process group of replica ``i`` (a lost pod)."""
        os.killpg(os.getpgid(self.states[i].pid), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while group_processes(self.states[i].pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, i: int) -> None:
        state = self.states[i]
        ports = {k: int(getattr(state, k).rsplit(":", 1)[1]) for k in ("inference", "management", "metrics")}
        self.servers[i].stop()
        self.servers[i] = LocalTorchServe(TorchServeSettings(
            workdir=Path(state.workdir), inference_port=ports["inference"],
            management_port=ports["management"], metrics_port=ports["metrics"]))
        self.states[i] = self.servers[i].start()

    def backends(self) -> list[TorchServeBackend]:
        return [TorchServeBackend.from_state(s) for s in self.states]

    def stop(self) -> None:
        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(lambda s: s.stop(), self.servers))
        for state in self.states:
            assert group_processes(state.pid) == [], "TorchServe processes left behind"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Path]]:
    home = tmp_path_factory.mktemp("fleet")
    pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "src")) if p)
    servers = Fleet(home / "servers")
    try:
        with pipeline_home(home, PYTHONPATH=pythonpath):
            yield servers, home
    finally:
        servers.stop()


@pytest.fixture
def attached(fleet, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    """The fleet named as an operator names it (``SERVEGATE_TORCHSERVE_REPLICAS``)."""
    servers, _ = fleet
    for name in ("MANAGEMENT_URL", "INFERENCE_URL", "KEY_FILE", "KEYS"):
        monkeypatch.delenv(f"SERVEGATE_TORCHSERVE_{name}", raising=False)
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_REPLICAS", servers.replicas_env())
    return servers


def requests_served(backend: TorchServeBackend, name: str) -> int:
    """TorchServe's own count of ``name``'s inference requests (Prometheus counter)."""
    text = backend.client.metrics_text()
    return int(sum(float(m.group(1)) for m in re.finditer(
        rf'ts_inference_requests_total{{[^}}]*model_name="{name}"[^}}]*}} ([0-9.e+]+)', text)))


def test_a_run_promotes_across_every_replica_and_loads_them_all(attached: Fleet, digits) -> None:
    from servegate import api

    config = PipelineConfig(model="builtin:digits", name="fleetrun", compiler="eager",
                            server="attach", load=LoadSettings(users=3, seconds=3, rounds=1,
                                                               processes=2))
    result = api.deploy(config)
    assert result.decision == "promoted", result.checks
    for backend in attached.backends():
        with backend:
            assert backend.default_version("fleetrun") == result.version
            # the parity rows (round-robin) and the load (users spread over replicas) reached it
            assert requests_served(backend, "fleetrun") > 20
    deploy_runs = mlflow.search_runs(search_all_experiments=True,
                                     filter_string="attributes.run_name = 'deploy'")
    assert any("fleet of 3 replicas" in str(s) for s in deploy_runs["params.server"])

    # the load gate's Locust spreads its users' requests over every replica, each with its key
    from servegate.backends.factory import open_torchserve
    from servegate.gates.load import run_load

    with open_torchserve(TorchServeSettings(), "attach") as fleet:
        before = [requests_served(r.backend, "fleetrun") for r in fleet.replicas]
        access = fleet.access()
        rows = digits.eval_x[:8]
        load = run_load(label="fleet", host=access.inference_url, model="fleetrun", version=None,
                        inference_key=access.inference_key, replicas=access.replicas,
                        samples=[{"inputs": row.tolist()} for row in rows],
                        settings=LoadSettings(users=2, seconds=2, rounds=1),
                        locustfile=loadtests_dir() / "torchserve.py", user_class="TorchServePredictUser")
        each = [requests_served(r.backend, "fleetrun") - b
                for r, b in zip(fleet.replicas, before, strict=True)]
    assert load.failures == 0 and load.requests > 30
    total = sum(each)
    assert all(n > 0.2 * total for n in each), each  # round-robin: about a third each


def test_a_replica_killed_mid_promotion_reverts_all_and_reconcile_restores_it(
        attached: Fleet, build_archive, tmp_path: Path) -> None:
    from servegate.backends.factory import open_torchserve

    name = "fleetkill"
    client = MlflowClient()
    client.create_registered_model(name)
    mlflow.set_experiment("fleet")
    archives = {v: build_archive(v, name=name, store=tmp_path / v) for v in ("1", "2")}
    with mlflow.start_run():
        for v, archive in archives.items():
            mlflow.log_artifact(str(archive), artifact_path=f"archive-{v}")
            uri = f"{mlflow.get_artifact_uri(f'archive-{v}')}/{archive.name}"
            client.create_model_version(name, source=uri)
            Registry.for_model(name).tag(v, {ARCHIVE_TAG: uri, ARCHIVE_SHA256_TAG: artifact_sha256(archive)})
    registry = Registry.for_model(name)
    said: list[str] = []
    fleet = open_torchserve(TorchServeSettings(), "attach")
    try:
        assert len(fleet.replicas) == REPLICAS
        for v, archive in archives.items():
            fleet.deploy(archive, name, v, sha256=artifact_sha256(archive))
        promotion.move_champion(registry, fleet, name, "1")

        second = fleet.replicas[1].backend
        move = second.set_default

        def then_lose_the_third(model: str, version: str) -> None:  # mid-promotion
            move(model, version)
            attached.kill(2)

        second.set_default = then_lose_the_third  # type: ignore[method-assign]
        with pytest.raises(PipelineError) as failed:
            promotion.promote(registry, fleet, name, "2", said.append)
        second.set_default = move  # type: ignore[method-assign]
        assert f"replica {attached.states[2].management} failed" in str(failed.value)
        assert "the other replicas were put back (2)" in str(failed.value)
        assert registry.version_for_alias(CHAMPION) == "1"
        assert registry.version_for_alias(PREVIOUS) is None
        assert [r.backend.default_version(name) for r in fleet.replicas[:2]] == ["1", "1"]
    finally:
        fleet.close()

    attached.restart(2)  # back, empty, with new keys, on the same ports
    with attached.backends()[2] as restarted:
        assert restarted.versions(name) == []
    done = subprocess.run([sys.executable, "-m", "servegate.cli", "reconcile", name,
                           "--server", "attach"], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"SERVEGATE_TORCHSERVE_REPLICAS": attached.replicas_env()})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{name}: champion v1 restored where it was missing" in done.stdout
    assert "interrupted promotion" in done.stderr  # the pending move was reverted first
    for backend in attached.backends():
        with backend:
            assert backend.default_version(name) == "1"
    assert promotion.pending_move(registry) is None
