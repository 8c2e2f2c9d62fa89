"""servegate's handlers and TorchServe backend against a real TorchServe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from servegate.backends._process import group_processes
from servegate.backends.torchserve import LocalTorchServe
from servegate.config import BatchingConfig, TorchServeSettings
from servegate.errors import ModelNotFound

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _probabilities(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def served(torchserve, build_archive):
    """digits v1 served with batch size 8 and a 50 ms batch delay (so that batches form)."""
    _, state, backend = torchserve
    batching = BatchingConfig(batch_size=8, max_batch_delay_ms=50)
    backend.deploy(build_archive("1", name="batched", batching=batching), "batched", "1")
    return state, backend


def test_served_output_equals_in_process_output(served, digits) -> None:
    _, backend = served
    x = digits.eval_x[:16]
    answer = backend.predict("batched", {"instances": x.tolist()})
    served_probs = np.array([p["probabilities"] for p in answer["predictions"]])
    np.testing.assert_allclose(served_probs, _probabilities(digits.reference(x)), atol=1e-5)


def test_requests_without_a_valid_token_are_rejected(served, digits) -> None:
    state, backend = served
    body = json.dumps({"inputs": digits.eval_x[0].tolist()})
    url = backend.endpoint("batched")
    for headers in ({}, {"Authorization": "Bearer not-the-key"}):
        response = httpx.post(url, content=body, headers=headers | {"Content-Type": "application/json"})
        assert response.status_code in (400, 401, 403)
        assert "Token Authorization failed" in response.text
    ok = httpx.post(url, content=body, headers={"Content-Type": "application/json"} |
                    backend.client.keys.header("inference"))
    assert ok.status_code == 200


def test_concurrent_batch_with_bad_requests_isolates_them(served, digits) -> None:
    _, backend = served
    before = backend.client.describe("batched", "1")[0]["workers"]
    good = [json.dumps({"inputs": row.tolist()}).encode() for row in digits.eval_x[:16]]
    bad = [b"{oops", b"", json.dumps({"inputs": [1.0] * 10}).encode(),
           b'{"inputs": [' + b",".join([b"Infinity"] * 64) + b"]}",
           json.dumps({"unknown": []}).encode(), json.dumps({"inputs": ["x"] * 64}).encode(),
           json.dumps({"instances": [[0.0] * 64] * 100}).encode(), b"[[[1]]]",
           b"[" + b"0.5," * 300_000 + b"0.5]"]  # over the handler's 1 MiB body limit: 413
    bodies = [b for pair in zip(good, bad + bad, strict=False) for b in pair] + good[len(bad) * 2:]
    results: dict[int, httpx.Response] = {}
    barrier = threading.Barrier(len(bodies))
    headers = backend.client.keys.header("inference") | {"Content-Type": "application/json"}

    def send(i: int, body: bytes) -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            results[i] = client.post(backend.endpoint("batched"), content=body, headers=headers)

    threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(bodies) >= 24
    expected = _probabilities(digits.reference(digits.eval_x[:16]))
    good_index = {b: i for i, b in enumerate(good)}
    for i, body in enumerate(bodies):
        response = results[i]
        if body in good_index:
            assert response.status_code == 200, response.text
            probs = np.array(response.json()["outputs"]["probabilities"])
            np.testing.assert_allclose(probs, expected[good_index[body]], atol=1e-5)
        else:
            assert 400 <= response.status_code < 500, (body[:80], response.status_code, response.text)
            if len(body) > 1 << 20:
                assert response.status_code == 413 and "payload too large" in response.text
            error = response.json()
            assert error["error"] and "detail" in error
    after = backend.client.describe("batched", "1")[0]["workers"]
    assert [(w["pid"], w["status"]) for w in after] == [(w["pid"], "READY") for w in before]


def test_versions_register_route_and_unregister(torchserve, build_archive, digits) -> None:
    _, _, backend = torchserve
    backend.deploy(build_archive("1", name="versioned"), "versioned", "1")
    backend.deploy(build_archive("2", name="versioned"), "versioned", "2")
    versions = {v.version: v for v in backend.versions("versioned")}
    assert set(versions) == {"1", "2"}
    assert versions["1"].is_default and not versions["2"].is_default
    body = {"inputs": digits.eval_x[0].tolist()}
    assert backend.predict("versioned", body, version="2")["outputs"]["label"]
    backend.set_default("versioned", "2")
    assert backend.default_version("versioned") == "2"
    backend.undeploy("versioned", "1")
    assert [v.version for v in backend.versions("versioned")] == ["2"]
    assert backend.predict("versioned", body)["outputs"]["label"]
    with pytest.raises(ModelNotFound):
        backend.predict("versioned", body, version="1")


def test_attach_by_url_and_key_file_and_scale_workers(served, digits) -> None:
    from servegate.backends.torchserve import TorchServeBackend

    state, _ = served
    with TorchServeBackend.attach(state.inference, state.management, key_file=Path(state.key_file),
                                  model_store=Path(state.model_store)) as attached:
        assert "batched" in attached.client.list_models()
        attached.client.scale("batched", "1", min_workers=2)
        workers = attached.client.describe("batched", "1")[0]["workers"]
        assert len(workers) == 2
        attached.client.wait_ready("batched", "1", min_ready=2, timeout_s=120)
        answer = attached.predict("batched", {"inputs": digits.eval_x[0].tolist()})
        assert answer["outputs"]["label"]
        attached.client.scale("batched", "1", min_workers=1)
        assert len(attached.client.describe("batched", "1")[0]["workers"]) == 1


def test_allowed_urls_refuse_files_outside_the_model_store(served) -> None:
    state, backend = served
    response = httpx.post(f"{state.management}/models", params={"url": "file:///etc/passwd"},
                          headers=backend.client.keys.header("management"))
    assert response.status_code == 404
    assert "does not match any allowed URL" in response.text
    assert not (Path(state.model_store) / "passwd").exists()


def test_handler_stage_times_reach_prometheus(served, digits) -> None:
    _, backend = served
    backend.predict("batched", {"inputs": digits.eval_x[0].tolist()})
    text = backend.client.metrics_text()
    for metric in ("PreprocessTime", "InferenceTime", "PostprocessTime", "BatchSize"):
        assert f'{metric}{{ModelName="batched"' in text


def test_locust_file_runs_headless(served, digits, tmp_path: Path) -> None:
    state, _ = served
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps([{"inputs": row.tolist()} for row in digits.eval_x[:8]]))
    env = os.environ | {"SERVEGATE_MODEL": "batched", "SERVEGATE_KEY_FILE": str(state.key_file),
                        "SERVEGATE_SAMPLES": str(samples)}
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "torchserve.py"),
         "--headless", "-u", "4", "-r", "4", "-t", "3s", "--host", state.inference,
         "--csv", str(tmp_path / "run"), "--only-summary", "--exit-code-on-error", "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stats = (tmp_path / "run_stats.csv").read_text().splitlines()
    total = next(line for line in stats if ",Aggregated," in line).split(",")
    assert int(total[2]) > 0 and int(total[3]) == 0  # requests, failures


def test_second_server_runs_beside_the_first_and_stop_leaves_no_process(
        torchserve, build_archive, digits, tmp_path: Path) -> None:
    from servegate.backends.torchserve import TorchServeBackend

    server = LocalTorchServe(TorchServeSettings(workdir=tmp_path / "ts"))
    state = server.start()
    assert group_processes(state.pid)
    with TorchServeBackend.from_state(state) as backend:
        backend.deploy(build_archive("1", name="second"), "second", "1")
        assert backend.predict("second", {"inputs": digits.eval_x[0].tolist()})["outputs"]["label"]
    assert torchserve[0].state() is not None  # the session's server still answers
    assert server.start() == state  # idempotent: no second server
    assert server.stop()
    assert group_processes(state.pid) == []
    assert server.state() is None


@pytest.mark.parametrize("compiler", ["export", "onnx", "aoti"])
def test_compiled_archives_serve_with_parity(torchserve, build_archive, digits, compiler: str) -> None:
    from servegate.packaging.mar import read_archive_member
    from servegate.packaging.spec import ArtifactSpec

    _, _, backend = torchserve
    name = f"digits-{compiler}"
    archive = build_archive("1", name=name, compiler=compiler)
    spec = ArtifactSpec.model_validate_json(read_archive_member(archive, "servegate.json"))
    assert spec.compiler == compiler
    backend.deploy(archive, name, "1")
    x = digits.eval_x[:32]
    answer = backend.predict(name, {"instances": x.tolist()})
    served = np.array([p["probabilities"] for p in answer["predictions"]])
    np.testing.assert_allclose(served, _probabilities(digits.reference(x)), atol=1e-5)
    backend.undeploy(name, "1")
