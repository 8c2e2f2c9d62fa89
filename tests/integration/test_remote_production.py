"""The production path, as the promotion workflow runs it: a remote `mlflow server` (its own
backend store and artifact root, on its own port) and a long-lived TorchServe started as a
separate process in its own directory, reached only by URL and keys (no shared model store).

The workflow's own steps are read from promote.yml and run with its environment, the secrets
filled in as a repository would: it starts no server of its own, promotes onto the separate one
(archives registered by URL from the tracking server's artifacts), rejects a worse challenger
imported over HTTP, and restores a champion that server lost, from the artifact store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from pipeline_env import pipeline_home

from servegate.backends._process import free_port
from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
from servegate.backends.torchserve.keys import StaticKeys
from servegate.config import TorchServeSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "promote.yml"
#: The MLflow credential a repository would hold as a secret (the test server ignores it).
TRACKING_TOKEN = "tracking-token-never-logged-7f3a"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` with its own SQLite backend and artifact root, serving artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/db.sqlite",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", url.rsplit(":", 1)[1], "--workers", "1"],
        cwd=root, stdout=(root / "server.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server not up after 120 s"
            time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def production(tracking_server, tmp_path_factory: pytest.TempPathFactory):
    """A long-lived TorchServe in its own directory, admitting archives from the tracking
    server's artifacts only; the runner gets its URLs and its key file's CONTENT (a secret)."""
    url, _ = tracking_server
    workdir = tmp_path_factory.mktemp("production") / "torchserve"
    started = subprocess.run(
        [sys.executable, "-m", "servegate.cli", "serve", "start", "--workdir", str(workdir),
         "--allow-mlflow-artifacts", "--token-expiration-min", "600"],
        env=os.environ | {"MLFLOW_TRACKING_URI": url, "SERVEGATE_HOME": str(workdir.parent)},
        capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    server = LocalTorchServe(TorchServeSettings(workdir=workdir))
    state = server.state()
    assert state is not None
    try:
        yield state
    finally:
        server.stop()


def _resolve(expression: str, inputs: dict[str, str], secrets: dict[str, str]) -> str:
    """A GitHub expression of promote.yml's env (``secrets.X``, ``a || b || 'default'``)."""
    inner = re.fullmatch(r"\$\{\{\s*(.*?)\s*\}\}", expression)
    if inner is None:
        return expression
    for term in (t.strip() for t in inner[1].split("||")):
        if term.startswith("'"):
            return term.strip("'")
        if term.startswith("secrets."):
            value = secrets.get(term.removeprefix("secrets."), "")
        elif term.startswith("github.event.inputs."):
            value = inputs.get(term.removeprefix("github.event.inputs."), "")
        else:
            value = ""
        if value:
            return value
    return ""


def workflow_env(job: dict, step: dict, inputs: dict[str, str], secrets: dict[str, str],
                 runner: Path, summary: Path) -> dict[str, str]:
    """A step's environment on a runner: its job's ``env`` and its own, resolved, this machine's
    PATH and the like, nothing of servegate's or MLflow's from the test process but the gate
    policy this test's repository keeps (a shared box's: see tests/integration/conftest.py)."""
    declared = job.get("env", {}) | step.get("env", {})
    env = {k: _resolve(str(v), inputs, secrets) for k, v in declared.items()}
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SERVEGATE_", "MLFLOW_"))} | {"MAKEFLAGS": ""}
    policy = {"SERVEGATE_GATE_POLICY": os.environ["SERVEGATE_GATE_POLICY"]}
    return base | policy | env | {"SERVEGATE_HOME": str(runner), "GITHUB_STEP_SUMMARY": str(summary)}


#: promote.yml's jobs in the order ``needs`` runs them.
JOBS = ("validate", "gate-and-promote")


def run_workflow(inputs: dict[str, str], secrets: dict[str, str], runner: Path,
                 summary: Path) -> subprocess.CompletedProcess[str]:
    """promote.yml's jobs, step by step as a runner runs them (`run` steps in bash -e, in the
    checkout), each step's env resolved from the inputs and the secrets; stops at the first
    failing step unless a later one runs ``if: always()``, and a failed job skips the next."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert tuple(workflow["jobs"]) == JOBS and workflow["jobs"][JOBS[1]]["needs"] == JOBS[0]
    outputs, failed = [], None
    for job_id in JOBS:
        if failed is not None:
            break
        job = workflow["jobs"][job_id]
        github_output = summary.with_name(f"{job_id}.outputs")
        github_output.write_text("")
        for step in job["steps"]:
            if "run" not in step or (failed is not None and step.get("if") != "always()"):
                continue
            env = workflow_env(job, step, inputs, secrets, runner, summary)
            done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT,
                                  env=env | {"GITHUB_OUTPUT": str(github_output)},
                                  capture_output=True, text=True, timeout=900)
            outputs.append(done)
            if done.returncode != 0 and failed is None:
                failed = done
    first = failed or outputs[-1]
    return subprocess.CompletedProcess(first.args, first.returncode,
                                       "".join(o.stdout for o in outputs),
                                       "".join(o.stderr for o in outputs))


@pytest.fixture
def report_dir() -> Iterator[Path]:
    path = ROOT / "gate-report"  # promote.yml's REPORT_DIR, relative to the checkout
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _prod_backend(state) -> TorchServeBackend:
    keys = Path(state.key_file).read_text()
    return TorchServeBackend.attach(state.inference, state.management,
                                    keys=StaticKeys(keys, "TEST_KEYS"))


def test_the_workflow_promotes_onto_the_long_lived_server_and_rejects_a_worse_model(
        tracking_server, production, digits, tmp_path: Path, report_dir: Path) -> None:
    url, mlflow_root = tracking_server
    state = production
    key_content = Path(state.key_file).read_text()
    secrets = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_TOKEN": TRACKING_TOKEN,
               "TORCHSERVE_MANAGEMENT_URL": state.management,
               "TORCHSERVE_INFERENCE_URL": state.inference, "TORCHSERVE_KEYS": key_content}
    fast = {"compiler": "eager", "load_seconds": "3"}
    summary = tmp_path / "summary.md"
    with pipeline_home(tmp_path / "runner", MLFLOW_TRACKING_URI=url) as (home, runner_server):
        runner = home / "servegate"

        first = run_workflow({"model": "builtin:digits"} | fast, secrets, runner, summary)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-4000:]
        assert "promoted" in out and runner_server.state() is None  # no server of its own
        client = MlflowClient(url)
        assert client.get_model_version_by_alias("digits", "champion").version == "1"
        with _prod_backend(state) as prod:
            assert prod.default_version("digits") == "1"
        # the archive went by URL: the server downloaded it into its own store
        assert sorted(p.name for p in Path(state.model_store).glob("*.mar")) == ["digits.v1.mar"]
        report = (report_dir / "gate_report.md").read_text()
        assert "network round trip" in report and "attached to" in report
        # the servers' addresses are the workflow's secrets: the report names them, never shows them
        for address in (state.management, state.inference, url):
            assert address.removeprefix("http://") not in report, address
        assert "$SERVEGATE_TORCHSERVE_INFERENCE_URL/predictions/digits" in report  # the curl
        assert "to HIDDEN-HOST: network round trip" in report
        assert summary.with_name("validate.outputs").read_text() == "model-name=digits\n"
        assert "Decision: promoted" in summary.read_text()
        load_run = mlflow.search_runs(experiment_names=["servegate-deploy"], output_format="list",
                                      filter_string="attributes.run_name = 'gate-load'")[0]
        assert load_run.data.metrics["network_rtt_p50_ms"] > 0
        assert load_run.data.params["load.target"] == state.inference.removeprefix("http://")

        # a worse challenger, imported over HTTP with held-out data logged there too
        import user_models

        mlflow.set_experiment("servegate-tests")
        worse = user_models.log_pytorch(user_models.shuffled(digits.module), digits.eval_x[:2], "digits")
        np.savez(tmp_path / "holdout.npz", x=digits.eval_x, y=digits.eval_y)
        with mlflow.start_run() as data_run:
            mlflow.log_artifact(str(tmp_path / "holdout.npz"), artifact_path="eval")
        eval_uri = f"runs:/{data_run.info.run_id}/eval/holdout.npz"
        # the server lost the champion (a restart without its models): the run restores it
        with _prod_backend(state) as prod:
            prod.undeploy("digits", "1")

        second = run_workflow({"model": f"models:/digits/{worse}", "eval_data": eval_uri} | fast,
                              secrets, runner, summary)
        out = second.stdout + second.stderr
        assert second.returncode != 0, out[-4000:]  # make exits 2 whatever the run's code
        assert "restoring champion v1" in out and "digits v2 rejected" in out
        assert runner_server.state() is None
        assert client.get_model_version_by_alias("digits", "champion").version == "1"
        assert client.get_model_version("digits", worse).tags["servegate.gate"] == "failed"
        with _prod_backend(state) as prod:
            assert [(v.version, v.is_default) for v in prod.versions("digits")] == [("1", True)]
            rows = digits.eval_x[:40]
            answer = prod.predict("digits", {"instances": rows.tolist()})
        served = [int(p["label"]) for p in answer["predictions"]]
        assert np.mean(np.array(served) == digits.eval_y[:40]) > 0.8  # the champion, not the worse one
        assert "Decision: rejected" in summary.read_text()
        # the withdrawn challenger took its downloaded archive with it
        assert sorted(p.name for p in Path(state.model_store).glob("*.mar")) == ["digits.v1.mar"]

    # no secret reached the terminal, the run logs, the tracking store or its artifacts
    keys = json.loads(key_content)
    secret_values = [TRACKING_TOKEN, keys["management"]["key"], keys["inference"]["key"]]
    places = [out, first.stdout + first.stderr, *(p.read_text(errors="replace")
                                                  for p in (runner / "logs").glob("*.log"))]
    places += [p.read_bytes().decode("latin-1") for p in mlflow_root.rglob("*") if p.is_file()
               and p.stat().st_size < 5_000_000]
    for secret in secret_values:
        assert not any(secret in place for place in places), "a secret was written"


def test_the_workflow_refuses_to_promote_onto_a_throwaway_server(tmp_path: Path,
                                                                 report_dir: Path) -> None:
    """No server secrets: the request check fails before anything is installed, and the deploy
    command itself (run without that check) refuses to start a local server."""
    summary = tmp_path / "summary.md"
    runner = tmp_path / "runner"
    done = run_workflow({"model": "builtin:digits"}, {}, runner, summary)
    assert done.returncode == 2
    assert "MLFLOW_TRACKING_URI" in done.stderr and "TORCHSERVE_MANAGEMENT_URL" in done.stderr
    assert not (runner / "torchserve").exists()

    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate-and-promote"]
    deploy = next(s for s in job["steps"] if "make deploy" in s.get("run", ""))
    env = workflow_env(job, deploy, {"model": "builtin:digits", "compiler": "eager"},
                       {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}, runner, summary)
    refused = subprocess.run(["bash", "-e", "-c", deploy["run"]], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0
    assert "refusing to start a local TorchServe" in refused.stdout + refused.stderr
    assert not (runner / "torchserve" / "server.json").exists()
