"""Issue 11: crash-safe promotion, locks, signals, process identity, registry errors, secure
defaults. MLflow on SQLite in a temp dir; the server is ``servegate.testing.MemoryBackend``
(a real TorchServe is used in tests/integration/test_promotion_safety.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE
from pydantic import ValidationError
from typer.testing import CliRunner

from servegate import promotion, steps
from servegate.cli import app, exit_code
from servegate.config import PipelineConfig, TorchServeSettings
from servegate.errors import (
    Busy,
    ConfigError,
    IntegrityError,
    Interrupted,
    RegistryError,
    ServerRequestError,
)
from servegate.pipeline import DeployPipeline, rollback
from servegate.promotion import PROMOTION_TAG, REPAIR_RUN_TAG, move_champion, pending_move, repair
from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, CHAMPION, PREVIOUS, Registry
from servegate.targets import Built
from servegate.testing import MemoryBackend

SRC = Path(__file__).resolve().parents[2] / "src"
runner = CliRunner()


def versions(name: str, count: int) -> Registry:
    client = MlflowClient()
    client.create_registered_model(name)
    for _ in range(count):
        client.create_model_version(name, source="file:///nowhere")
    return Registry.for_model(name)


def served(backend: MemoryBackend, name: str, *numbers: str) -> None:
    for v in numbers:
        backend.deploy(Path("/nowhere"), name, v)


def said() -> tuple[list[str], callable]:
    lines: list[str] = []
    return lines, lines.append


# ---- crash-safe promotion ------------------------------------------------------------------------
def test_a_failing_server_step_puts_the_registry_back(mlflow_store: Path) -> None:
    registry = versions("digits", 3)
    backend = MemoryBackend()
    served(backend, "digits", "1", "2", "3")
    registry.set_alias(CHAMPION, "2")
    registry.set_alias(PREVIOUS, "1")
    backend.set_default("digits", "2")

    def refuse(name: str, version: str) -> None:
        raise ServerRequestError("set default", status=500, server_message="boom")

    backend.hooks["set_default"] = refuse
    with pytest.raises(ServerRequestError):
        move_champion(registry, backend, "digits", "3")
    assert registry.version_for_alias(CHAMPION) == "2"
    assert registry.version_for_alias(PREVIOUS) == "1"
    assert backend.default_version("digits") == "2"
    assert registry.model_tags()[PROMOTION_TAG].startswith("reverted kind=promotion from=2 to=3")
    assert pending_move(registry) is None
    # the registry moves BEFORE the server: the hook saw champion=3 already
    seen: list[str | None] = []
    backend.hooks["set_default"] = lambda n, v: seen.append(registry.version_for_alias(CHAMPION))
    move_champion(registry, backend, "digits", "3")
    assert seen == ["3"] and backend.default_version("digits") == "3"
    assert registry.version_for_alias(PREVIOUS) == "2"
    assert registry.model_tags()[PROMOTION_TAG].startswith("done kind=promotion from=2 to=3")


KILL_BETWEEN_STEPS = """
import os, signal, sys
from pathlib import Path
import mlflow
from servegate.promotion import move_champion
from servegate.registry import Registry
from servegate.targets import Built
from servegate.testing import MemoryBackend

backend = MemoryBackend(Path(sys.argv[1]))
backend.hooks["set_default"] = lambda name, version: os.kill(os.getpid(), signal.SIGKILL)
move_champion(Registry.for_model("digits"), backend, "digits", "3")
"""


def kill_between_steps(mlflow_store: Path) -> tuple[Registry, MemoryBackend]:
    """v2 champion (served, default), v3 served; a process promoting v3 is SIGKILLed after the
    registry moved and before the server did."""
    registry = versions("digits", 3)
    backend = MemoryBackend(mlflow_store / "server.json")
    served(backend, "digits", "2", "3")
    registry.set_alias(CHAMPION, "2")
    script = mlflow_store / "promote.py"
    script.write_text(KILL_BETWEEN_STEPS)
    killed = subprocess.run([sys.executable, str(script), str(mlflow_store / "server.json")],
                            env=os.environ | {"PYTHONPATH": str(SRC)}, capture_output=True,
                            text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert registry.version_for_alias(CHAMPION) == "3"  # registry moved ...
    assert backend.default_version("digits") == "2"  # ... the server did not
    assert pending_move(registry) is not None
    return registry, backend


def test_a_promotion_killed_between_its_steps_is_finished_by_the_next_run(mlflow_store: Path) -> None:
    registry, backend = kill_between_steps(mlflow_store)
    lines, say = said()
    mlflow.set_experiment("t")

    class Stop(Exception):
        pass

    def stop_after_repair(run):  # the run's first step after the repair
        raise Stop

    pipeline = DeployPipeline(PipelineConfig(name="digits"), backend)
    pipeline.run_state.say = say  # type: ignore[method-assign]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steps, "source", stop_after_repair)
        with pytest.raises(Stop):
            pipeline.run()
    assert backend.default_version("digits") == "3" and registry.version_for_alias(CHAMPION) == "3"
    assert any("interrupted promotion of digits (v2 -> v3) finished" in line for line in lines)
    assert registry.model_tags()[PROMOTION_TAG].startswith("finished by repair")
    run = mlflow.search_runs(experiment_names=["t"], output_format="list")[0]
    assert "finished" in run.data.tags[REPAIR_RUN_TAG]
    assert repair(registry, backend, "digits", say) is None  # nothing left to repair


def test_a_promotion_killed_between_its_steps_is_reverted_when_the_target_is_gone(mlflow_store: Path) -> None:
    registry, backend = kill_between_steps(mlflow_store)
    backend.undeploy("digits", "3")  # e.g. the server restarted without it
    lines, say = said()
    assert repair(registry, backend, "digits", say) == "reverted"
    assert registry.version_for_alias(CHAMPION) == "2" and registry.version_for_alias(PREVIOUS) is None
    assert backend.default_version("digits") == "2"
    assert "no longer serves v3" in lines[0]


def test_rollback_reverts_an_interrupted_promotion(mlflow_store: Path) -> None:
    registry, backend = kill_between_steps(mlflow_store)
    restored, demoted = rollback(PipelineConfig(name="digits"), backend)
    assert (restored, demoted) == ("2", "3")
    assert registry.version_for_alias(CHAMPION) == "2" and backend.default_version("digits") == "2"
    assert registry.model_tags()[PROMOTION_TAG].startswith("reverted by repair")


def test_rollback_moves_registry_then_server(mlflow_store: Path) -> None:
    registry = versions("digits", 2)
    backend = MemoryBackend()
    served(backend, "digits", "1", "2")
    registry.set_alias(CHAMPION, "2")
    registry.set_alias(PREVIOUS, "1")
    backend.set_default("digits", "2")
    assert rollback(PipelineConfig(name="digits"), backend) == ("1", "2")
    assert registry.version_for_alias(CHAMPION) == "1" and registry.version_for_alias(PREVIOUS) == "2"
    assert backend.default_version("digits") == "1"


# ---- signals -------------------------------------------------------------------------------------
def test_sigterm_during_a_run_withdraws_the_challenger_and_ends_the_run_killed(
        mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = versions("digits", 2)
    backend = MemoryBackend()
    served(backend, "digits", "1")
    registry.set_alias(CHAMPION, "1")
    mlflow.set_experiment("t")
    temp_dirs: list[Path] = []

    def source(run):
        registry.set_alias("challenger", "2")
        run.challenger = "2"
        return object(), registry, "2"

    def build(run, model, registry, version, workdir):
        temp_dirs.append(workdir)
        archive = workdir / "digits.v2.mar"
        archive.write_bytes(b"archive")
        return Built(archive, "file:///nowhere/digits.v2.mar", "eager", "fp32"), None

    def gate_parity(run, *args):  # the challenger is on the server: a CI job is cancelled
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(steps, "source", source)
    monkeypatch.setattr(steps, "build", build)
    monkeypatch.setattr(steps, "gate_parity", gate_parity)
    previous_handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        DeployPipeline(PipelineConfig(name="digits"), backend).run()
    assert info.value.exit_code == 143 and exit_code(info.value) == 143
    assert signal.getsignal(signal.SIGTERM) == previous_handler  # restored afterwards
    assert [v.version for v in backend.versions("digits")] == ["1"]  # challenger withdrawn
    assert backend.default_version("digits") == "1"
    assert temp_dirs and not temp_dirs[0].exists()  # temp files removed
    assert registry.version_for_alias("challenger") is None
    assert registry.tags("2")["servegate.gate"].startswith("interrupted")
    run = mlflow.search_runs(experiment_names=["t"], output_format="list",
                             filter_string="attributes.run_name = 'deploy-digits'")[0]
    assert run.info.status == "KILLED" and run.data.tags["servegate.decision"] == "interrupted"


def test_a_signal_inside_a_critical_section_waits_for_its_end() -> None:
    from servegate.interrupts import critical, signals_as_errors

    steps: list[str] = []
    with pytest.raises(Interrupted) as info, signals_as_errors():
        with critical():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            steps.append("registry and server both moved")
        steps.append("never reached")
    assert steps == ["registry and server both moved"] and info.value.exit_code == 130


# ---- locks -----------------------------------------------------------------------------------------
HOLD = """
import sys, time
from servegate.locks import {fn}
with {fn}({arg}):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_lock(fn: str, arg: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(fn=fn, arg=arg), "holder-cmd"],
                              env=os.environ | {"PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_the_same_name_is_refused_naming_the_holder(
        mlflow_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = hold_lock("model_lock", "'digits'")
    try:
        with pytest.raises(Busy) as info:
            DeployPipeline(PipelineConfig(name="digits"), MemoryBackend()).run()
        assert info.value.holder["pid"] == holder.pid
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "holder-cmd" in message and "started" in message
        # the CLI: exit 8, the holder named, nothing deployed on its server
        server = MemoryBackend()
        monkeypatch.setattr("servegate.api.open_backend", lambda config: (server, None))
        result = runner.invoke(app, ["run", "--name", "digits"])
        assert result.exit_code == 8, result.output
        assert [c for c in server.calls if c[0] != "versions"] == []
        assert f"pid {holder.pid}" in result.output
        # another name is not blocked by it
        with pytest.raises(Busy):
            DeployPipeline(PipelineConfig(name="digits"), MemoryBackend()).run()
        from servegate.locks import model_lock

        with model_lock("other"):
            pass
    finally:
        holder.kill()
        holder.wait()
    from servegate.locks import model_lock

    with model_lock("digits"):  # released when its holder died (even by SIGKILL)
        pass


def test_a_second_server_start_in_one_directory_is_refused(tmp_path: Path) -> None:
    from servegate.backends.torchserve import LocalTorchServe

    holder = hold_lock("server_lock", repr(str(tmp_path)))
    try:
        server = LocalTorchServe(TorchServeSettings(workdir=tmp_path, ready_timeout_s=0.5))
        with pytest.raises(Busy, match=f"pid {holder.pid}"):
            server.start()
        (tmp_path / "server.json").write_text("{}")
        with pytest.raises(Busy, match=f"pid {holder.pid}"):
            server.stop()
    finally:
        holder.kill()
        holder.wait()


# ---- process identity --------------------------------------------------------------------------------
def test_a_stale_state_file_never_kills_an_unrelated_process(tmp_path: Path) -> None:
    from servegate.backends.torchserve import LocalTorchServe

    sleeper = subprocess.Popen(["setsid", "sleep", "60"])
    try:
        time.sleep(0.2)
        pid = sleeper.pid  # setsid: its own session and process group, like our servers
        for identity in ({}, {"create_time": 1.0, "cmdline": ["torchserve", "--start"]}):
            state = {"pid": pid, "workdir": str(tmp_path), "model_store": str(tmp_path),
                     "inference": "http://127.0.0.1:9", "management": "http://127.0.0.1:9",
                     "metrics": "http://127.0.0.1:9", "key_file": None} | identity
            (tmp_path / "server.json").write_text(json.dumps(state))
            result = runner.invoke(app, ["serve", "stop", "--workdir", str(tmp_path)])
            assert result.exit_code == 0, result.output
            assert "stale" in result.output and "nothing was killed" in result.output
            assert sleeper.poll() is None, "an unrelated process was killed"
            assert not (tmp_path / "server.json").exists()
            assert LocalTorchServe(TorchServeSettings(workdir=tmp_path)).state() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_recorded_process_that_is_still_ours_is_stopped(tmp_path: Path) -> None:
    from servegate.backends._process import identity, stop_recorded

    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    recorded = identity(sleeper.pid)
    stopped, stale = stop_recorded(sleeper.pid, recorded["create_time"], recorded["cmdline"], 5)
    assert stopped and stale is None and sleeper.wait(5) is not None


# ---- registry errors keep their meaning -----------------------------------------------------------
def test_only_not_found_means_no_champion(mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Registry.for_model("nothing").version_for_alias(CHAMPION) is None  # no model
    registry = versions("digits", 1)
    assert registry.version_for_alias(CHAMPION) is None  # no alias
    for code in (PERMISSION_DENIED, TEMPORARILY_UNAVAILABLE):
        def broken(*args, code=code, **kwargs):
            raise MlflowException("the registry said no", error_code=code)

        monkeypatch.setattr(registry.client, "get_model_version_by_alias", broken)
        with pytest.raises(RegistryError, match="the registry said no") as info:
            registry.version_for_alias(CHAMPION)
        assert isinstance(info.value.__cause__, MlflowException)
        assert exit_code(info.value) == 7


def test_an_mlflow_outage_during_the_champion_lookup_stops_the_run(
        mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = versions("digits", 2)
    registry.set_alias(CHAMPION, "1")
    backend = MemoryBackend()
    served(backend, "digits", "1")

    def outage(*args, **kwargs):
        raise MlflowException("503 Service Unavailable", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(registry.client, "get_model_version_by_alias", outage)
    mlflow.set_experiment("t")
    with pytest.raises(RegistryError, match="Service Unavailable"):
        steps.deploy(DeployPipeline(PipelineConfig(name="digits"), backend).run_state, registry,
                     Built(Path("/x"), "runs:/x/archive/digits.v2.mar", "eager", "fp32"), None, "2")
    assert [v.version for v in backend.versions("digits")] == ["1"]  # nothing deployed


def test_non_servegate_errors_never_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from servegate import cli

    def crash(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "app", crash)
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "status"])
    assert info.value.code == 7


# ---- archive hashes ------------------------------------------------------------------------------------
def test_a_champion_is_restored_only_from_an_archive_with_its_recorded_hash(mlflow_store: Path) -> None:
    from servegate.integrity import artifact_sha256

    registry = versions("digits", 1)
    archive = mlflow_store / "digits.v1.mar"
    archive.write_bytes(b"the archive as built")
    mlflow.set_experiment("t")
    with mlflow.start_run():
        mlflow.log_artifact(str(archive), artifact_path="archive")
        uri = f"{mlflow.get_artifact_uri('archive')}/{archive.name}"
    backend = MemoryBackend()
    registry.tag("1", {ARCHIVE_TAG: uri, ARCHIVE_SHA256_TAG: "0" * 64})
    with pytest.raises(IntegrityError, match="refusing to restore"):
        promotion.restore(registry, backend, "digits", "1", 1, print)
    assert backend.versions("digits") == []
    registry.tag("1", {ARCHIVE_SHA256_TAG: artifact_sha256(archive)})
    promotion.restore(registry, backend, "digits", "1", 1, print)
    assert [v.version for v in backend.versions("digits")] == ["1"]
    assert backend.calls[-1] == ("deploy", "digits", "1")


def test_directory_hash_is_independent_of_where_it_lies(tmp_path: Path) -> None:
    from servegate.integrity import artifact_sha256

    for root in (tmp_path / "a", tmp_path / "b" / "c"):
        (root / "variables").mkdir(parents=True)
        (root / "saved_model.pb").write_bytes(b"graph")
        (root / "variables" / "v.index").write_bytes(b"index")
    assert artifact_sha256(tmp_path / "a") == artifact_sha256(tmp_path / "b" / "c")
    (tmp_path / "a" / "variables" / "v.index").write_bytes(b"changed")
    assert artifact_sha256(tmp_path / "a") != artifact_sha256(tmp_path / "b" / "c")


# ---- names -------------------------------------------------------------------------------------------
BAD_NAMES = ["../etc", "a/../../b", "a..b", "", "1abc", "a b", "a%2f..", "x" * 129]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_the_validator_refuses_escaping_names(bad: str) -> None:
    from servegate.naming import validate_name

    with pytest.raises(ConfigError):
        validate_name(bad)


def test_every_entry_point_validates_names_and_versions(tmp_path: Path) -> None:
    from servegate.backends.tfserving import TFServingBackend, TFServingClient
    from servegate.backends.torchserve.client import Endpoints, TorchServeClient
    from servegate.naming import archive_file_name, validate_name, validate_version

    assert validate_name("all-MiniLM-L6-v2.q8") == "all-MiniLM-L6-v2.q8"
    assert validate_version(3) == "3"
    w = ["--workdir", str(tmp_path)]
    commands = [
        ["package", "builtin:digits", "--name", "../evil", "--output-dir", str(tmp_path)],
        ["package", "builtin:digits", "--version", "1/../../x", "--output-dir", str(tmp_path)],
        ["models", "register", str(tmp_path / "a.mar"), "--name", "../x", "--version", "1", *w],
        ["models", "register", str(tmp_path / "a.mar"), "--name", "x", "--version", "../1", *w],
        ["models", "list", "../x", *w], ["models", "default", "x", "1/..", *w],
        ["models", "unregister", "../x", "1", *w], ["models", "scale", "../x", "1", "2", *w],
        ["predict", "../x", "--data", "{}", *w], ["rollback", "../x", *w],
        ["run", "--name", "../x", *w],
    ]
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 5, (command, result.output)
        assert "invalid" in result.output
    with pytest.raises(ConfigError):
        archive_file_name("../x", "1")
    with pytest.raises(ConfigError):
        archive_file_name("x", "../1")
    with pytest.raises(ConfigError):
        Registry.for_model("../x")
    with pytest.raises(ConfigError):
        TorchServeClient(Endpoints("http://h", "http://h", "http://h"), None).predict_url("../x")
    with pytest.raises(ConfigError):
        TFServingClient.model_path("../x")
    with pytest.raises(ConfigError):
        TFServingBackend(TFServingClient("http://h", "h:1"), tmp_path)._place(tmp_path, "../x", 1)
    with pytest.raises(ValidationError, match="invalid model name"):
        PipelineConfig(name="a/../b")


# ---- the client's 401 retry ------------------------------------------------------------------------------
def test_the_retry_after_401_keeps_the_callers_headers(tmp_path: Path) -> None:
    from servegate.backends.torchserve.client import Endpoints, TorchServeClient

    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({"inference": {"key": "old"}, "API": {"key": "api"}}))
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/token":
            keys.write_text(json.dumps({"inference": {"key": "new"}, "API": {"key": "api"}}))
            os.utime(keys, (time.time() + 5, time.time() + 5))
            return httpx.Response(200, json={})
        if request.headers.get("Authorization") == "Bearer old":
            return httpx.Response(401, json={"message": "expired"})
        return httpx.Response(200, json={"ok": True})

    client = TorchServeClient(Endpoints("http://ts", "http://ts", "http://ts"), keys,
                              allow_insecure_http=True)  # a mock transport: nothing leaves
    client._http = httpx.Client(transport=httpx.MockTransport(handle))
    assert client.predict("digits", {"inputs": [1]}) == {"ok": True}
    first, retried = seen[0], seen[-1]
    assert first.headers["Authorization"] == "Bearer old"
    assert retried.headers["Authorization"] == "Bearer new"
    assert retried.headers["Content-Type"] == "application/json"
    assert retried.content == first.content


# ---- server processes: environment, request size, TF Serving's gRPC ----------------------------------------
def test_servers_get_a_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from servegate.backends.tfserving import LocalTFServing, TFServingSettings
    from servegate.backends.torchserve import LocalTorchServe

    secrets = {"MLFLOW_TRACKING_TOKEN": "s1", "AWS_SECRET_ACCESS_KEY": "s2",
               "GOOGLE_APPLICATION_CREDENTIALS": "s3", "AZURE_CLIENT_SECRET": "s4",
               "GITHUB_TOKEN": "s5", "DB_PASSWORD": "s6", "MY_API_SECRET_X": "s7",
               "MLFLOW_TRACKING_URI": "http://mlflow"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JAVA_HOME", "/opt/java")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    torchserve = LocalTorchServe(TorchServeSettings(workdir=tmp_path / "ts"))._environment()
    tfserving = LocalTFServing(TFServingSettings(workdir=tmp_path / "tfs"))._environment()
    for env in (torchserve, tfserving):
        assert not set(secrets) & set(env)
        assert not any(v in env.values() for v in secrets.values())
        assert "PATH" in env and env.get("LC_ALL") == "C.UTF-8"
    assert torchserve["JAVA_HOME"] == "/opt/java"
    assert torchserve["LOG_LOCATION"] == str((tmp_path / "ts" / "logs").resolve())
    assert torchserve["TMPDIR"] == torchserve["TEMP"]


def test_torchserve_request_size_follows_the_handlers_body_limit(tmp_path: Path) -> None:
    """The frontend passes bodies up to 4x the handlers' limit (+ a margin) to the handler, which
    answers a readable 413 (TorchServe's own 413 has an empty body; issue 24)."""
    from servegate.backends.torchserve.local import render_config
    from servegate.config import ENVELOPE_MARGIN_BYTES, RequestLimits

    settings = TorchServeSettings(workdir=tmp_path)
    limit = RequestLimits().max_body_bytes
    assert settings.max_request_size == 4 * limit + ENVELOPE_MARGIN_BYTES <= limit * 4.1
    ports = dict(inference=1, management=2, metrics=3, grpc_inference=4, grpc_management=5)
    text = render_config(settings, ports, tmp_path)
    assert f"max_request_size={4 * limit + ENVELOPE_MARGIN_BYTES}\n" in text


def test_tfserving_binary_serves_grpc_on_a_private_unix_socket(tmp_path: Path) -> None:
    from servegate.backends.tfserving import LocalTFServing, TFServingSettings

    local = LocalTFServing(TFServingSettings(workdir=tmp_path))
    command, target = local.binary_command("/usr/bin/tensorflow_model_server", 8500, 8501)
    socket_path = (tmp_path / "run" / "grpc.sock").resolve()
    assert "--port=0" in command  # no TCP gRPC listener (it would take every interface)
    assert f"--grpc_socket_path={socket_path}" in command
    assert not any(a.startswith("--port=") and a != "--port=0" for a in command)
    assert target == f"unix:{socket_path}"
    assert (socket_path.parent.stat().st_mode & 0o777) == 0o700
    deep = LocalTFServing(TFServingSettings(workdir=tmp_path / ("d" * 120)))
    _, deep_target = deep.binary_command("tfs", 8500, 8501)
    assert len(deep_target) < 108 and deep_target.startswith("unix:/")
    exposed = LocalTFServing(TFServingSettings(workdir=tmp_path, grpc_tcp_all_interfaces=True))
    command, target = exposed.binary_command("tfs", 8500, 8501)
    assert "--port=8500" in command and target == "127.0.0.1:8500"
    assert not any(a.startswith("--grpc_socket_path") for a in command)
