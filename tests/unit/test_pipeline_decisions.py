"""The pipeline's state machine against ``MemoryBackend`` and ``ScriptedTarget`` (real MLflow on
SQLite, no server process): first deploy, promote, reject, a champion the server lost, orphans,
rollback, a failing step and an interrupted run. The same decisions run against real TorchServe
in tests/integration."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import mlflow
import pytest
from rich.console import Console

from servegate.config import PipelineConfig
from servegate.errors import GateFailed, Interrupted, PipelineError, ServerRequestError
from servegate.pipeline import DeployPipeline, rollback
from servegate.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry
from servegate.testing import MemoryBackend, ScriptedModel, ScriptedTarget

NAME = "scripted"
GOOD, BETTER, WORSE, SLOW = (ScriptedModel(0.95, 10), ScriptedModel(0.97, 9), ScriptedModel(0.80, 10),
                             ScriptedModel(0.96, 900))


@pytest.fixture
def world(mlflow_store: Path):
    """A registry on SQLite, a servegate home, an in-memory server, and a target whose next
    runs serve GOOD, BETTER, WORSE, SLOW, GOOD in that order."""
    mlflow.set_experiment("decisions")
    backend = MemoryBackend()
    return backend, ScriptedTarget(backend, [GOOD, BETTER, WORSE, SLOW, GOOD])


def run(backend: MemoryBackend, target: ScriptedTarget, **config):
    settings = PipelineConfig(**({"model": f"builtin:{NAME}"} | config))
    return DeployPipeline(settings, backend, Console(quiet=True), target=target).run()


def served(backend: MemoryBackend) -> list[tuple[str, bool]]:
    return [(v.version, v.is_default) for v in backend.versions(NAME)]


def test_first_deploy_promotes_then_a_better_one_keeps_the_old_for_rollback(world) -> None:
    backend, target = world
    first = run(backend, target)
    assert (first.decision, first.champion_before) == ("promoted", None)
    assert served(backend) == [("1", True)]
    assert Registry.for_model(NAME).version_for_alias(CHAMPION) == "1"
    second = run(backend, target)
    assert (second.decision, second.champion_before) == ("promoted", "1")
    assert served(backend) == [("1", False), ("2", True)]
    registry = Registry.for_model(NAME)
    assert (registry.version_for_alias(CHAMPION), registry.version_for_alias(PREVIOUS)) == ("2", "1")
    assert registry.version_for_alias(CHALLENGER) is None  # a promoted challenger is the champion
    assert registry.tags("2")["servegate.gate"] == "passed"


def test_a_worse_or_slower_challenger_is_rejected_and_leaves_the_server(world) -> None:
    backend, target = world
    run(backend, target)
    run(backend, target)
    with pytest.raises(GateFailed, match="accuracy_vs_champion") as worse:
        run(backend, target)
    assert {c.name for c in worse.value.checks if not c.passed} == {"accuracy_vs_champion"}
    with pytest.raises(GateFailed, match="p95_ms"):
        run(backend, target)
    assert served(backend) == [("1", False), ("2", True)]
    registry = Registry.for_model(NAME)
    assert registry.version_for_alias(CHAMPION) == "2"
    assert registry.version_for_alias(CHALLENGER) is None
    assert registry.tags("3")["servegate.gate"] == "failed"
    assert "p95_ms" in registry.tags("4")["servegate.failed_checks"]


def test_a_champion_the_server_lost_is_restored_and_orphans_leave(world) -> None:
    backend, target = world
    run(backend, target)
    run(backend, target)
    backend.deploy(Path("/stray"), NAME, "7")  # not the registry's, not the default: an orphan
    backend.set_default(NAME, "7")
    backend.set_default(NAME, "2")
    backend.undeploy(NAME, "1")
    backend._load()[NAME]["versions"].pop("2")  # the server lost its default (a restart)
    backend._load()[NAME]["default"] = None
    with pytest.raises(GateFailed):  # WORSE: rejected, but only after the restore
        run(backend, target)
    restored = [c for c in backend.calls if c[0] == "deploy"][-2:]
    assert restored == [("deploy", NAME, "2"), ("deploy", NAME, "3")]
    assert served(backend) == [("2", True)]  # champion back and default; 7 and 3 gone
    source = backend._load()[NAME]["versions"]["2"]["source_uri"]
    assert source.endswith(f"/archive/{NAME}.v2.mar")  # from its logged artifact, hash-checked


def test_rollback_restores_the_previous_champion_on_both_sides(world) -> None:
    backend, target = world
    run(backend, target)
    run(backend, target)
    config = PipelineConfig(model=f"builtin:{NAME}")
    assert rollback(config, backend, Console(quiet=True)) == ("1", "2")
    registry = Registry.for_model(NAME)
    assert (registry.version_for_alias(CHAMPION), registry.version_for_alias(PREVIOUS)) == ("1", "2")
    assert backend.default_version(NAME) == "1"
    assert served(backend) == [("1", True), ("2", False)]  # the rolled-back one kept, for now
    target.script[0] = BETTER  # the next run promotes: v2 is then neither champion nor previous
    assert run(backend, target).decision == "promoted"
    assert served(backend) == [("1", False), ("3", True)]
    assert (registry.version_for_alias(CHAMPION), registry.version_for_alias(PREVIOUS)) == ("3", "1")


def test_a_server_failing_mid_gate_withdraws_the_challenger_and_keeps_the_champion(world) -> None:
    backend, target = world
    run(backend, target)

    def refuse(version: str) -> None:
        raise ServerRequestError(f"predict v{version}", status=503, server_message="overloaded")

    target.before_parity = refuse
    with pytest.raises(ServerRequestError, match="overloaded"):
        run(backend, target)
    assert served(backend) == [("1", True)]
    assert Registry.for_model(NAME).version_for_alias(CHAMPION) == "1"


def test_sigterm_mid_gate_withdraws_the_challenger_and_ends_the_run_killed(world) -> None:
    backend, target = world
    run(backend, target)
    target.before_load = lambda version: os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Interrupted):
        run(backend, target)
    assert served(backend) == [("1", True)]
    registry = Registry.for_model(NAME)
    assert registry.version_for_alias(CHALLENGER) is None
    assert registry.tags("2")["servegate.gate"].startswith("interrupted")
    killed = mlflow.search_runs(experiment_names=["decisions"], output_format="list",
                                filter_string="attributes.run_name = 'deploy-scripted'",
                                order_by=["attributes.start_time DESC"])[0]
    assert killed.info.status == "KILLED"


def test_gate_only_runs_leave_the_champion_serving(world) -> None:
    backend, target = world
    run(backend, target)
    result = run(backend, target, promote=False)
    assert result.decision == "passed, not promoted"
    assert backend.default_version(NAME) == "1"
    assert Registry.for_model(NAME).version_for_alias(CHAMPION) == "1"


def test_an_earlier_champion_gated_again_replaces_its_served_copy(world) -> None:
    backend, target = world
    run(backend, target)
    run(backend, target)
    target.script.insert(0, ScriptedModel(0.98, 9))  # v1 again, with a better archive
    again = run(backend, target, model=f"models:/{NAME}/1")
    assert (again.version, again.decision, again.champion_before) == ("1", "promoted", "2")
    deploys = [c for c in backend.calls if c[0] in ("deploy", "undeploy") and c[2] == "1"]
    assert deploys[-2:] == [("undeploy", NAME, "1"), ("deploy", NAME, "1")]  # the new archive
    assert served(backend) == [("1", True), ("2", False)]
    registry = Registry.for_model(NAME)
    assert (registry.version_for_alias(CHAMPION), registry.version_for_alias(PREVIOUS)) == ("1", "2")


def test_the_champion_itself_is_refused_before_anything_is_built(world) -> None:
    backend, target = world
    run(backend, target)
    calls = len(backend.calls)
    with pytest.raises(PipelineError, match="already the champion"):
        run(backend, target, model=f"models:/{NAME}@champion")
    assert [c for c in backend.calls[calls:] if c[0] in ("deploy", "undeploy", "set_default")] == []
