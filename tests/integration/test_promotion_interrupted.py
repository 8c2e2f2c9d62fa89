"""Issue 11 against a real TorchServe and MLflow on SQLite: SIGTERM during a run, and the server's
environment. A promotion SIGKILLed between its registry and server steps (a real SIGKILL of a real
process, MLflow on SQLite) is repaired or reverted in tests/unit/test_promotion_safety.py: the
server side of that repair is the backend's ``set_default``, which every promotion here runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from pipeline_env import pipeline_home

from servegate.backends._process import group_processes
from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
from servegate.config import TorchServeSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FAST = ["--compiler", "eager", "--load-seconds", "2", "--load-users", "2", "--load-rounds", "1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("safety")
    (home / "tmp").mkdir()
    # this checkout's code in the subprocesses, whatever is installed
    pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "src")) if p)
    with pipeline_home(home, TMPDIR=str(home / "tmp"), PYTHONPATH=pythonpath) as (home, server):
        yield home, server


def servegate_run(*args: str, wrapper: str | None = None) -> subprocess.Popen[str]:
    code = (wrapper or "") + "\nfrom servegate.cli import main\nimport sys\nmain(['run', *sys.argv[1:]])\n"
    return subprocess.Popen([sys.executable, "-c", code, *FAST, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def alias(name: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias("digits", name).version)
    except mlflow.exceptions.MlflowException:
        return None


def backend_of(server: LocalTorchServe) -> TorchServeBackend:
    state = server.state()
    assert state is not None
    return TorchServeBackend.from_state(state)


def test_sigterm_during_a_run_cleans_up(env) -> None:
    home, server = env
    first = servegate_run()
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert alias("champion") == "1"
    run = servegate_run()
    assert run.stdout is not None
    seen = []
    for line in run.stdout:  # wait until the challenger is on the server and under gate
        seen.append(line)
        if "gate: load" in line:
            break
    else:
        pytest.fail("".join(seen)[-3000:])
    time.sleep(1)
    run.send_signal(signal.SIGTERM)  # a cancelled CI job
    rest, _ = run.communicate(timeout=180)
    output = "".join(seen) + rest
    assert run.returncode == 143, output[-3000:]
    assert "interrupted by SIGTERM" in output
    with backend_of(server) as backend:
        assert [v.version for v in backend.versions("digits")] == ["1"]  # challenger withdrawn
        assert backend.default_version("digits") == "1"
    assert alias("champion") == "1" and alias("challenger") is None
    parent = mlflow.search_runs(experiment_names=["servegate-deploy"], output_format="list",
                                filter_string="attributes.run_name = 'deploy-digits'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert parent.info.status == "KILLED"
    assert not list((home / "tmp").glob("servegate-*")), "temp files left behind"


def test_no_secret_reaches_torchserve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"MLFLOW_TRACKING_TOKEN": "tok-1", "AWS_SECRET_ACCESS_KEY": "aws-2",
               "GOOGLE_APPLICATION_CREDENTIALS": "/g-3", "SOME_SERVICE_PASSWORD": "pw-4"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    server = LocalTorchServe(TorchServeSettings(workdir=tmp_path / "ts"))
    state = server.start()
    try:
        processes = group_processes(state.pid)
        assert any("java" in " ".join(p.cmdline()) for p in processes)  # the frontend too
        for process in processes:
            environ = Path(f"/proc/{process.pid}/environ").read_bytes()
            for key, value in secrets.items():
                assert key.encode() not in environ and value.encode() not in environ, process
    finally:
        assert server.stop()
