"""One run per registered model across runners (issue 19, item 7): the registry lease, with real
MLflow on SQLite shared by several processes that each have their own ``SERVEGATE_HOME`` (their
own ``flock`` directory), as two CI runners would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from rich.console import Console

from servegate.errors import Busy
from servegate.lease import LEASE_TAG_PREFIX, Lease, leases, live_owners, model_lease
from servegate.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _lease_experiment(mlflow_store: Path) -> None:
    mlflow.set_experiment("lease")


def _runner(tmp_path: Path, name: str, script: str) -> subprocess.Popen:
    """Another 'runner': its own process and SERVEGATE_HOME, the same tracking store."""
    env = dict(os.environ, SERVEGATE_HOME=str(tmp_path / f"home-{name}"),
               PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


HOLDER = """
    import sys
    from servegate.lease import model_lease
    with model_lease("fraud"):
        print("held", flush=True)
        sys.stdin.readline()
"""


def test_a_second_runner_is_refused_with_the_holder_named(mlflow_store: Path) -> None:
    holder = _runner(mlflow_store, "a", HOLDER)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"pid {holder.pid} on") as refused:
            with model_lease("fraud"):
                pass
        assert refused.value.holder["pid"] == holder.pid
        assert len(live_owners(Registry.for_model("fraud"))) == 1  # ours was taken back
    finally:
        holder.communicate("go\n", timeout=60)
    with model_lease("fraud") as lease:  # released: free again
        assert live_owners(Registry.for_model("fraud")) == {lease.owner}
    assert leases(Registry.for_model("fraud")) == {}


def test_a_waiting_runner_gets_the_lease_when_the_holder_releases(mlflow_store: Path) -> None:
    import threading

    holder = _runner(mlflow_store, "a", HOLDER)
    assert holder.stdout.readline().strip() == "held"
    waited: list[str] = []

    def release_later() -> None:
        time.sleep(2)
        holder.stdin.write("go\n")
        holder.stdin.flush()

    threading.Thread(target=release_later, daemon=True).start()
    with Lease(Registry.for_model("fraud"), wait_s=60, on_wait=lambda r: waited.append(r.host)) as lease:
        assert holder.wait(timeout=60) == 0  # it had let go before we held it
        assert live_owners(Registry.for_model("fraud")) == {lease.owner}
    assert len(waited) == 1


def test_a_lapsed_lease_of_a_dead_runner_blocks_nobody(mlflow_store: Path) -> None:
    registry = Registry.for_model("fraud")
    dead = Lease(registry, ttl_s=0.5)
    dead.acquire()
    dead._stop.set()  # the runner died: nothing refreshes its lease any more
    time.sleep(1.0)
    with model_lease("fraud") as lease:
        assert set(leases(registry)) == {lease.owner}  # the lapsed tag was cleaned up


CONTENDER = """
    import json, sys, time
    from servegate.lease import model_lease
    out = open(sys.argv[1] if len(sys.argv) > 1 else {log!r}, "a")
    for _ in range(3):
        with model_lease("fraud", wait_s=120):
            start = time.time()
            time.sleep(0.3)
            out.write(json.dumps([start, time.time()]) + "\\n")
            out.flush()
"""


def test_concurrent_runners_never_hold_it_at_once(mlflow_store: Path) -> None:
    """Four runners race for the lease three times each: the held intervals never overlap."""
    Registry.for_model("fraud")
    log = mlflow_store / "held.jsonl"
    runners = [_runner(mlflow_store, str(i), CONTENDER.format(log=str(log))) for i in range(4)]
    for runner in runners:
        _, err = runner.communicate(timeout=300)
        assert runner.returncode == 0, err[-2000:]
    intervals = sorted(json.loads(line) for line in log.read_text().splitlines())
    assert len(intervals) == 12
    for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
        assert start >= end, f"two runners held the lease at once: {intervals}"


def test_a_pipeline_run_is_refused_while_another_runner_holds_the_model(mlflow_store: Path) -> None:
    """Two runs of one model from two processes with separate lock directories: the second
    stops before touching the registry's versions or the server, naming the first."""
    from servegate.config import PipelineConfig
    from servegate.pipeline import DeployPipeline
    from servegate.testing import MemoryBackend, ScriptedModel, ScriptedTarget

    holder = _runner(mlflow_store, "a", HOLDER.replace('"fraud"', '"scripted"'))
    try:
        assert holder.stdout.readline().strip() == "held"
        backend = MemoryBackend()
        target = ScriptedTarget(backend, [ScriptedModel(0.95, 10)])
        pipeline = DeployPipeline(PipelineConfig(model="builtin:scripted"), backend,
                                  Console(quiet=True), target=target)
        with pytest.raises(Busy, match=f"pid {holder.pid}"):
            pipeline.run()
        assert backend.calls == [] and backend.versions("scripted") == []
        assert mlflow.MlflowClient().search_model_versions("name='scripted'") == []
    finally:
        holder.communicate("go\n", timeout=60)


def test_repair_leaves_a_move_whose_runner_holds_the_lease(mlflow_store: Path) -> None:
    from servegate.promotion import PROMOTION_TAG, Move, repair
    from servegate.registry import CHAMPION
    from servegate.testing import MemoryBackend

    client = mlflow.MlflowClient()
    client.create_registered_model("fraud")
    for _ in range(2):
        client.create_model_version("fraud", str(mlflow_store), run_id=None)
    registry = Registry.for_model("fraud")
    backend = MemoryBackend()
    for version in ("1", "2"):
        backend.deploy(mlflow_store, "fraud", version)
    registry.set_alias(CHAMPION, "2")  # the live runner moved the registry, not yet the server
    live = Lease(registry)
    live.acquire()  # (in this process, but under another owner id than the repairing run's)
    registry.set_model_tag(PROMOTION_TAG, Move("promotion", "1", "2", None, live.owner)
                           .in_progress_tag())
    from servegate import lease as lease_module

    held = lease_module._held.pop("fraud")  # the repairing run is not that owner
    try:
        notes: list[str] = []
        assert repair(registry, backend, "fraud", notes.append) == "left"
        assert registry.version_for_alias(CHAMPION) == "2" and "still holds" in notes[0]
    finally:
        lease_module._held["fraud"] = held
        live.release()
    assert repair(registry, backend, "fraud", notes.append) == "finished"  # lapsed: repaired
    assert [v.version for v in backend.versions("fraud") if v.is_default] == ["2"]
    assert LEASE_TAG_PREFIX + live.owner not in registry.model_tags()
