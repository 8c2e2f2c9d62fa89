"""The whole pipeline through `make deploy` (the promotion workflow's command): real MLflow on
SQLite in a temp dir, real TorchServe, real Locust, short load phases."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from pipeline_env import pipeline_home

from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# Short load phases on a shared 2-core box; the comparison with the champion keeps its default
# (a bootstrap interval over the rounds: tests/unit/test_load_comparison.py).
FAST = ["-P", "load_seconds=3", "-P", "load_users=4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    """An MLflow store and a servegate home of our own; the server is stopped afterwards."""
    with pipeline_home(tmp_path_factory.mktemp("pipeline")) as (home, server):
        yield home, server


def deploy(*params: str, report_dir: Path | None = None,
           compiler: str = "eager") -> subprocess.CompletedProcess[str]:
    """`make deploy DEPLOY_ARGS=...`, the promotion workflow's command on a local server (the
    workflow itself, attached to a separate server, runs in test_remote_production.py);
    ``eager`` unless asked: ``auto`` compiles every candidate, ~40 s here."""
    args = ["make", "-s", "deploy",
            f"DEPLOY_ARGS={shlex.join([*FAST, '-P', f'compiler={compiler}', *params])}"]
    if report_dir is not None:
        args.append(f"REPORT_DIR={report_dir}")
    # the shared box's policy named here too: the module's first run is a module fixture, set up
    # before the per-test fixture that sets it for every other test (conftest.py)
    policy = {"SERVEGATE_GATE_POLICY": str(Path(__file__).with_name("gate-policy-shared-box.toml"))}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"MAKEFLAGS": ""} | policy)


def backend_of(server: LocalTorchServe) -> TorchServeBackend:
    state = server.state()
    assert state is not None, "no TorchServe running after the pipeline"
    return TorchServeBackend.from_state(state)


def alias(name: str, alias_name: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias_name).version)
    except mlflow.exceptions.MlflowException:
        return None


def last_parent_run():
    runs = mlflow.search_runs(experiment_names=["servegate-deploy"], output_format="list",
                              filter_string="attributes.run_name LIKE 'deploy-%'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0]


def register_shuffled_champion(digits) -> str:
    """A bad challenger of the same kind: the digits network with its output rows rolled
    (accuracy collapses), logged in MLflow 3's default format as a user would."""
    import user_models

    mlflow.set_experiment("servegate-tests")
    return user_models.log_pytorch(user_models.shuffled(digits.module), digits.eval_x[:2], "digits")


def eval_file(home: Path, digits) -> str:
    """The user's held-out set for a model registered outside servegate."""
    path = home / "digits_eval.npz"
    np.savez(path, x=digits.eval_x, y=digits.eval_y)
    return str(path)


class DefaultEndpointProbe:
    """Hammers the default endpoint in the background and records every status."""

    def __init__(self, backend: TorchServeBackend, body: dict) -> None:
        self.url = backend.endpoint("digits")
        self.headers = {"Content-Type": "application/json"}
        self.keys = backend.client.keys
        self.body = body
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                headers = self.headers | self.keys.header("inference")
                self.statuses.append(client.post(self.url, json=self.body, headers=headers).status_code)
                time.sleep(0.02)

    def __enter__(self) -> DefaultEndpointProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def first_run(env) -> tuple[subprocess.CompletedProcess[str], Any]:
    """The module's first `make deploy` (``auto``) and its MLflow run: the champion v1 every
    test here builds on, whichever of them runs first or alone."""
    home, _ = env
    result = deploy(report_dir=home / "report1", compiler="auto")
    return result, last_parent_run() if result.returncode == 0 else None


def test_first_run_promotes_and_the_default_endpoint_serves_it(env, digits, first_run) -> None:
    home, server = env
    result, run = first_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "promoted" in result.stdout
    assert "compiler candidates" in result.stdout + result.stderr
    assert alias("digits", "champion") == "1"
    with backend_of(server) as backend:
        assert backend.default_version("digits") == "1"
        answer = backend.predict("digits", {"inputs": digits.eval_x[0].tolist()})
        assert answer["outputs"]["label"] in [str(i) for i in range(10)]
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert {"report/gate_report.md", "report/gate_report.html", "report/latency_throughput.png",
            "report/parity.png"} <= artifacts
    children = mlflow.search_runs(experiment_names=["servegate-deploy"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert {c.info.run_name for c in children} == {"source", "package", "deploy", "gate-parity",
                                                   "gate-load"}
    package_run = next(c for c in children if c.info.run_name == "package")
    assert package_run.data.params["compiler"] == "auto"
    chosen = package_run.data.params["compiler.chosen"]
    from servegate.compilers import auto_candidates

    assert chosen in auto_candidates()  # what this host offers (bf16 ones where the CPU has bf16)
    table = {a.path for a in MlflowClient().list_artifacts(package_run.info.run_id)}
    assert "compiler_candidates.json" in table
    assert "endpoint: http://127.0.0.1:" in result.stdout
    curl = next(line for line in result.stdout.splitlines() if line.startswith("curl "))
    pasted = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
    assert '"label"' in pasted.stdout, pasted.stdout + pasted.stderr
    assert "Bearer $(" in curl  # the token is read from the key file, not printed
    report = (home / "report1" / "gate_report.md").read_text()
    assert "Decision: promoted" in report


def test_bad_challenger_is_rejected_while_the_champion_keeps_serving(env, digits, first_run) -> None:
    home, server = env
    assert first_run[0].returncode == 0, "the first run did not promote v1"
    bad_version = register_shuffled_champion(digits)
    with backend_of(server) as backend:
        with DefaultEndpointProbe(backend, {"inputs": digits.eval_x[0].tolist()}) as probe:
            result = deploy("-P", f"model=models:/digits/{bad_version}",
                            "-P", f"eval_data={eval_file(home, digits)}")
        assert result.returncode != 0
        assert "accuracy_vs_champion" in result.stdout + result.stderr
        assert probe.statuses and set(probe.statuses) == {200}
        assert backend.default_version("digits") == "1"
        assert bad_version not in {v.version for v in backend.versions("digits")}
    assert alias("digits", "champion") == "1"
    tags = MlflowClient().get_model_version("digits", bad_version).tags
    assert tags["servegate.gate"] == "failed"
    assert "accuracy_vs_champion" in tags["servegate.failed_checks"]
    assert last_parent_run().info.status == "FAILED"


def test_rollback_leaves_one_server_serving_the_previous_champion(env, first_run) -> None:
    home, server = env
    assert first_run[0].returncode == 0, "the first run did not promote v1"
    pid_before = server.state().pid
    promoted = deploy()
    assert promoted.returncode == 0, promoted.stdout[-2000:] + promoted.stderr[-2000:]
    new = alias("digits", "champion")
    assert new not in (None, "1") and alias("digits", "previous-champion") == "1"

    rolled = subprocess.run([str(ROOT / ".venv" / "bin" / "servegate"), "rollback", "digits"],
                            capture_output=True, text=True, timeout=300)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert alias("digits", "champion") == "1"
    assert server.state().pid == pid_before  # the same server throughout
    with backend_of(server) as backend:
        assert backend.default_version("digits") == "1"
        served = sorted(v.version for v in backend.versions("digits"))
    assert served == sorted({new, "1"})  # the rejected challenger left; the rolled-back one stays
    # (orphans after a rollback, re-gating an earlier champion and refusing the champion itself:
    # test_pipeline_decisions, in seconds)


def test_promotion_workflow_runs_the_command_this_test_runs() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "promote.yml").read_text())
    triggers = workflow.get("on") or workflow.get(True)
    assert {"workflow_dispatch", "repository_dispatch"} <= set(triggers)
    job = workflow["jobs"]["gate-and-promote"]
    assert job["environment"] == "production"
    commands = " ".join(step.get("run", "") for step in job["steps"])
    assert "make deploy DEPLOY_ARGS=" in commands and "REPORT_DIR=" in commands
    assert "-P model=$MODEL" in commands
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and "GITHUB_STEP_SUMMARY" in commands
