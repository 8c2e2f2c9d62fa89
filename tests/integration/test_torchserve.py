"""servegate's handlers and TorchServe backend against a real TorchServe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from payloads import png_header, softmax
from posting import post_together

from servegate.backends._process import group_processes
from servegate.backends.torchserve import LocalTorchServe
from servegate.config import BatchingConfig, TorchServeSettings
from servegate.errors import ModelNotFound

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


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
    np.testing.assert_allclose(served_probs, softmax(digits.reference(x)), atol=1e-5)


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


# Bodies that once killed a whole batch (issue 11), each with the status it must get alone.
ISSUE_11 = {
    b"[" * 1000 + b"]" * 1000: 400,                                    # RecursionError in json
    b'{"inputs": [' + b"7" * 5000 + b"]}": 400,                        # past int's digit limit
    json.dumps({"inputs": [{"name": "x", "shape": [2**32, 2**32], "datatype": "FP32",
                            "data": []}]}).encode(): 422,              # np.prod wrapped to 0
    png_header(20000, 20000): 422,                                    # not an image model
    b'{"inputs": "\\ud800"}': 422,                                     # a lone surrogate
    json.dumps({"inputs": [True] * 64}).encode(): 422,                 # booleans are not numbers
    json.dumps({"instances": [[0.5] * 63 + [False]]}).encode(): 422,
}


def test_concurrent_batch_with_bad_requests_isolates_them(served, digits) -> None:
    _, backend = served
    before = backend.client.describe("batched", "1")[0]["workers"]
    good = [json.dumps({"inputs": row.tolist()}).encode() for row in digits.eval_x[:16]]
    bad = [b"{oops", b"", json.dumps({"inputs": [1.0] * 10}).encode(),
           b'{"inputs": [' + b",".join([b"Infinity"] * 64) + b"]}",
           json.dumps({"unknown": []}).encode(), json.dumps({"inputs": ["x"] * 64}).encode(),
           json.dumps({"instances": [[0.0] * 64] * 100}).encode(), b"[[[1]]]",
           b"[" + b"0.5," * 300_000 + b"0.5]",  # over the handler's 1 MiB body limit: 413
           *ISSUE_11]
    bodies = [b for pair in zip(good, bad + bad, strict=False) for b in pair] + good[len(bad) * 2:]
    bodies += bad[len(good):]  # every bad body at least once
    results = post_together(backend, "batched", bodies)
    assert len(results) == len(bodies) >= 32
    assert set(bad) <= set(bodies)
    expected = softmax(digits.reference(digits.eval_x[:16]))
    good_index = {b: i for i, b in enumerate(good)}
    for i, body in enumerate(bodies):
        response = results[i]
        if body in good_index:
            assert response.status_code == 200, response.text
            probs = np.array(response.json()["outputs"]["probabilities"])
            np.testing.assert_allclose(probs, expected[good_index[body]], atol=1e-5)
        else:
            assert 400 <= response.status_code < 500, (body[:80], response.status_code, response.text)
            if len(body) > 1 << 20:  # over the handler's limit: its own 413 (JSON, checked below)
                assert response.status_code == 413
            if body in ISSUE_11:
                assert response.status_code == ISSUE_11[body], (body[:80], response.text)
            error = response.json()
            assert error["error"] and "detail" in error
    after = backend.client.describe("batched", "1")[0]["workers"]
    assert [(w["pid"], w["status"]) for w in after] == [(w["pid"], "READY") for w in before]


def test_oversize_bodies_get_a_readable_413_not_a_reset(served, digits) -> None:
    """Issue 24: a 4 MB body against the 1 MiB limit got TorchServe's empty 413, or a connection
    reset for a client that sends ``Connection: close`` (urllib). Bodies up to 4x the limit now
    reach the handler, whose 413 carries a JSON error; the worker keeps serving."""
    import urllib.error
    import urllib.request

    from servegate.config import RequestLimits

    state, backend = served
    limit = RequestLimits().max_body_bytes
    url = backend.endpoint("batched")
    headers = backend.client.keys.header("inference") | {"Content-Type": "application/json"}
    before = backend.client.describe("batched", "1")[0]["workers"]
    for size in (limit + 1, 4_000_000, 4 * limit):
        body = b'{"inputs": [' + b" " * (size - 14) + b"]}"
        assert len(body) == size
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:  # urllib: Connection: close
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413, size
        error = json.loads(refused.value.read())
        assert error["error"] == "payload too large" and f"limit of {limit} bytes" in error["detail"]
        with httpx.Client(timeout=60) as client:  # keep-alive client
            response = client.post(url, content=body, headers=headers)
        assert response.status_code == 413 and response.json()["error"] == "payload too large"
    good = httpx.post(url, content=json.dumps({"inputs": digits.eval_x[0].tolist()}), headers=headers)
    assert good.status_code == 200
    after = backend.client.describe("batched", "1")[0]["workers"]
    assert [(w["pid"], w["status"]) for w in after] == [(w["pid"], "READY") for w in before]


def test_v2_answers_echo_the_request_id(served, digits) -> None:
    _, backend = served
    headers = backend.client.keys.header("inference") | {"Content-Type": "application/json"}
    tensor = {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": digits.eval_x[0].tolist()}
    with httpx.Client(timeout=60) as client:
        ok = client.post(backend.endpoint("batched"), headers=headers,
                         content=json.dumps({"id": "a1", "inputs": [tensor]}))
        bad = client.post(backend.endpoint("batched"), headers=headers,
                          content=json.dumps({"id": "a2", "inputs": [tensor | {"shape": [2, 64]}]}))
    assert ok.status_code == 200 and ok.json()["id"] == "a1"
    assert bad.status_code == 422 and bad.json()["id"] == "a2"


def test_image_bombs_and_foreign_formats_fail_alone(torchserve, tmp_path: Path) -> None:
    """An image model, batch 8: decompression bombs, EPS and corrupt PNGs beside good images."""
    import base64
    import io

    import torch
    from PIL import Image

    from servegate.config import ImagePreprocessing
    from servegate.packaging.mar import MarContents, build_mar
    from servegate.packaging.spec import ArtifactSpec

    _, _, backend = torchserve
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
                                torch.nn.Linear(72, 3)).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 8, 8)), tmp_path / "cnn.ts")
    pngs = []
    for shade in range(0, 240, 30):
        buffer = io.BytesIO()
        Image.fromarray(np.full((12, 10), shade, np.uint8)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    spec = ArtifactSpec(task="image-classification", format="torchscript", artifact="cnn.ts",
                        image=ImagePreprocessing(size=(8, 8), mode="L", mean=[0.5], std=[0.5]))
    contents = MarContents(name="imgs", version="1", artifact=tmp_path / "cnn.ts", spec=spec,
                           labels=["a", "b", "c"],
                           batching=BatchingConfig(batch_size=8, max_batch_delay_ms=50),
                           warmup={"instances": [{"b64": base64.b64encode(pngs[0]).decode()}]})
    backend.deploy(build_mar(contents, tmp_path / "store"), "imgs", "1")
    try:
        alone = [backend.predict("imgs", {"inputs": base64.b64encode(p).decode()})["outputs"]
                 for p in pngs]
        before = backend.client.describe("imgs", "1")[0]["workers"]
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
        bad = {png_header(20000, 20000): 413, png_header(7000, 7000): 413,
               json.dumps({"instances": [{"b64": base64.b64encode(eps).decode()}]}).encode(): 422,
               png_header(8, 8) + b"\x00" * 20: 422, eps: 400}
        bodies = [b for pair in zip(pngs, bad, strict=False) for b in pair] + pngs[len(bad):]
        results = post_together(backend, "imgs", bodies)
        for i, body in enumerate(bodies):
            if body in bad:
                assert results[i].status_code == bad[body], (body[:40], results[i].text)
                assert results[i].json()["error"]
            else:
                assert results[i].status_code == 200, results[i].text
                answer = results[i].json()
                np.testing.assert_allclose(answer["probabilities"],
                                           alone[pngs.index(body)]["probabilities"], atol=1e-5)
        after = backend.client.describe("imgs", "1")[0]["workers"]
        assert [(w["pid"], w["status"]) for w in after] == [(w["pid"], "READY") for w in before]
    finally:
        backend.undeploy("imgs", "1")


class _TwoInTwoOut(torch.nn.Module):
    """Float features [5] + int64 ids [3] -> (score [1], vector [4])."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.dense = torch.nn.Linear(5, 4)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, features, ids):
        vector = self.dense(features) + self.embed(ids).mean(1)
        return self.head(vector), vector


def test_two_input_two_output_export_serves_in_chunks_of_max_batch(torchserve, tmp_path: Path) -> None:
    """servegate.json schema 2 (inputs, outputs, max_batch) through a real TorchServe: batches of
    8 requests x 16 rows run in chunks of the export-time bound of 16 rows."""
    from servegate.packaging.mar import MarContents, build_mar
    from servegate.packaging.spec import ArtifactSpec, InputSpec, OutputSpec

    _, _, backend = torchserve
    torch.manual_seed(0)
    model = _TwoInTwoOut().eval()
    rng = np.random.default_rng(0)
    features = rng.standard_normal((8, 16, 5)).astype(np.float32)
    ids = rng.integers(0, 10, (8, 16, 3))
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(model, (torch.from_numpy(features[0]), torch.from_numpy(ids[0])),
                                  dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, tmp_path / "model.pt2")
    spec = ArtifactSpec(schema_version=2, task="tensor", format="exported_program",
                        artifact="model.pt2", max_batch=16,
                        inputs=[InputSpec(name="features", shape=[5]),
                                InputSpec(name="ids", shape=[3], dtype="int64")],
                        outputs=[OutputSpec(name="score", shape=[1]),
                                 OutputSpec(name="vector", shape=[4])])
    warmup = {"instances": [{"features": features[0, 0].tolist(), "ids": ids[0, 0].tolist()}]}
    contents = MarContents(name="two", version="1", artifact=tmp_path / "model.pt2", spec=spec,
                           batching=BatchingConfig(batch_size=8, max_batch_delay_ms=100),
                           warmup=warmup)
    backend.deploy(build_mar(contents, tmp_path / "store"), "two", "1")
    try:
        bodies = [json.dumps({"instances": [{"features": f, "ids": i} for f, i in
                                            zip(features[k].tolist(), ids[k].tolist(), strict=True)]}
                             ).encode() for k in range(8)]
        bodies.append(json.dumps({"instances": [{"features": [0.0] * 5}]}).encode())
        results = post_together(backend, "two", bodies)
        with torch.inference_mode():
            score, vector = model(torch.from_numpy(features.reshape(-1, 5)),
                                  torch.from_numpy(ids.reshape(-1, 3)))
        for k in range(8):
            assert results[k].status_code == 200, results[k].text
            rows = results[k].json()["predictions"]
            np.testing.assert_allclose([r["score"] for r in rows],
                                       score.numpy()[k * 16:(k + 1) * 16], atol=1e-5)
            np.testing.assert_allclose([r["vector"] for r in rows],
                                       vector.numpy()[k * 16:(k + 1) * 16], atol=1e-5)
        assert results[8].status_code == 422 and "'ids'" in results[8].json()["detail"]
    finally:
        backend.undeploy("two", "1")


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
    with TorchServeBackend.attach(state.inference, state.management, keys=Path(state.key_file),
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


def test_allowed_urls_refuse_files_outside_the_model_store(served, build_archive) -> None:
    """No file URL registers, however encoded: a real archive lies beside the store, so a way out
    (Java's file: handler decodes %2e%2e%2f) would answer 200. Secrets in the workdir are 0600."""
    state, backend = served
    store, workdir = Path(state.model_store), Path(state.workdir)
    build_archive("1", name="outside", store=workdir)  # <workdir>/outside.v1.mar, beside the store
    before = sorted(p.name for p in store.iterdir())
    urls = ["file:///etc/passwd", f"file://{store}/%2e%2e%2foutside.v1.mar",
            f"file://{store}/%2E%2e%2Foutside.v1.mar", f"file://{store}/..%2foutside.v1.mar",
            f"file://{store}/..\\outside.v1.mar", f"file://{store}/a\r/../../outside.v1.mar",
            f"file://{store}/%252e%252e%252foutside.v1.mar", f"FILE://{store}/%2e%2e%2Foutside.v1.mar"]
    answers = {}
    try:
        for url in urls:
            response = httpx.post(f"{state.management}/models",
                                  params={"url": url, "synchronous": "true"},
                                  headers=backend.client.keys.header("management"), timeout=120)
            answers[url] = (response.status_code, response.json().get("message", ""))
    finally:
        if "outside" in backend.client.list_models():
            backend.client.unregister("outside", "1")
    refused = ("does not match any allowed URL", "Relative path is not allowed")
    assert all(code == 404 and any(r in message for r in refused)
               for code, message in answers.values()), answers
    assert sorted(p.name for p in store.iterdir()) == before
    for secret in (workdir / "config.properties", Path(state.key_file or "")):
        assert secret.stat().st_mode & 0o777 == 0o600, secret


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
         "--headless", "-u", "4", "-r", "4", "-t", "10s", "--host", state.inference,
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
    np.testing.assert_allclose(served, softmax(digits.reference(x)), atol=1e-5)
    backend.undeploy(name, "1")
