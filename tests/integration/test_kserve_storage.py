"""Issue 21.3 against a real TorchServe: the storage tree `servegate export kserve` writes
(``config/config.properties``, ``model-store/*.mar``) started the way its ServingRuntime starts
it, the ports only moved to free ones (the pod's 8080-8082 and 7070/7071 may be taken here):
the model loads at start, the readiness probe's own command passes on a real prediction, KServe
v1 and v2 requests are answered without a token, and neither the model API nor the management
API is reachable from outside the pod's loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from servegate.backends._process import free_port, group_processes
from servegate.kserve import INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT, READINESS_SCRIPT, RUNTIME

pytestmark = pytest.mark.integration


def test_the_exported_storage_serves_as_the_runtime_starts_it(tmp_path: Path, build_archive,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    from servegate.integrity import artifact_sha256
    from servegate.kserve import KServeOptions, export, serving_runtime
    from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, CHAMPION, Registry

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    archive = build_archive("1", name="podmodel", store=tmp_path / "built")
    MlflowClient().create_registered_model("podmodel")
    mlflow.set_experiment("kserve")
    with mlflow.start_run():
        mlflow.log_artifact(str(archive), artifact_path="archive")
        logged = f"{mlflow.get_artifact_uri('archive')}/{archive.name}"
    MlflowClient().create_model_version("podmodel", source=logged)
    registry = Registry.for_model("podmodel")
    registry.tag("1", {ARCHIVE_TAG: logged, ARCHIVE_SHA256_TAG: artifact_sha256(archive)})
    registry.set_alias(CHAMPION, "1")
    options = KServeOptions(image="servegate-torchserve:test", storage_uri="pvc://models/podmodel")
    export("podmodel", options, tmp_path / "out")
    mlflow.set_tracking_uri(None)

    storage = tmp_path / "out" / "storage" / "v1"
    ports = {INFERENCE_PORT: free_port("127.0.0.1"), MANAGEMENT_PORT: free_port("127.0.0.1"),
             METRICS_PORT: free_port("127.0.0.1"), 7070: free_port("127.0.0.1"),
             7071: free_port("127.0.0.1")}
    config = (storage / "config" / "config.properties").read_text()
    for pod_port, port in ports.items():
        config = re.sub(rf"(?<=[:=]){pod_port}\b", str(port), config)
    (storage / "config" / "config.properties").write_text(config)
    args = serving_runtime(options)["spec"]["containers"][0]["args"]
    args = [a.replace("/mnt/models", str(storage)) for a in args]
    assert args[0] == "torchserve" and RUNTIME == "servegate-torchserve"
    workdir = tmp_path / "pod"
    (workdir / "logs").mkdir(parents=True)
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HOME": str(workdir), "TMPDIR": str(workdir), "TEMP": str(workdir),
           "LOG_LOCATION": str(workdir / "logs"), "METRICS_LOCATION": str(workdir / "logs")}
    process = subprocess.Popen([str(Path(sys.executable).parent / "torchserve"), *args[1:]],
                               cwd=workdir, env=env, start_new_session=True,
                               stdout=(workdir / "stdout.log").open("wb"), stderr=subprocess.STDOUT)
    inference = f"http://127.0.0.1:{ports[INFERENCE_PORT]}"
    try:
        probe = [sys.executable, "-c", READINESS_SCRIPT, str(storage / "config" / "readiness.json"),
                 f"{inference}/v1/models/podmodel:predict"]
        deadline, ready = time.monotonic() + 180, False
        while time.monotonic() < deadline and process.poll() is None:
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                ready = True
                break
            time.sleep(1)
        assert ready, (workdir / "stdout.log").read_text()[-3000:]
        sample = json.loads((storage / "config" / "readiness.json").read_text())
        v1 = httpx.post(f"{inference}/v1/models/podmodel:predict", json=sample, timeout=30)
        assert v1.status_code == 200 and len(v1.json()["predictions"]) == len(sample["instances"])
        row = sample["instances"][0]
        v2 = httpx.post(f"{inference}/v2/models/podmodel/infer", timeout=30, json={"inputs": [
            {"name": "input-0", "shape": [1, len(row)], "datatype": "FP32", "data": row}]})
        assert v2.status_code == 200 and v2.json()["outputs"], v2.text
        # the model API is off, and the management API answers on the pod's loopback only
        management = f"http://127.0.0.1:{ports[MANAGEMENT_PORT]}"
        assert httpx.get(f"{management}/models", timeout=10).status_code == 200
        refused = httpx.post(f"{management}/models", params={"url": "podmodel.v1.mar"}, timeout=10)
        assert refused.status_code >= 400
        assert f"management_address=http://127.0.0.1:{ports[MANAGEMENT_PORT]}" in config
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 30
        while group_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_processes(process.pid) == []
