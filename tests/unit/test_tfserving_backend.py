"""The TF Serving backend's REST/gRPC clients and its deploy state machine, against
``FakeTFServing`` (a FAKE server: real HTTP + gRPC on 127.0.0.1, real protos, real SavedModels
served in process), plus the reload request built from the real ModelService protos."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from servegate.backends import model_root, tfserving  # noqa: E402
from servegate.backends.base import ServingBackend  # noqa: E402
from servegate.backends.tfserving import (  # noqa: E402
    CANARY,
    HOW_TO_PROVIDE,
    STABLE,
    LocalTFServing,
    ModelEntry,
    TFServingBackend,
    TFServingClient,
    TFServingSettings,
    build_reload_request,
    open_tfserving,
    translate_rpc_error,
)
from servegate.backends.tfserving import local as tfs_local  # noqa: E402
from servegate.errors import (  # noqa: E402
    ConfigError,
    ModelNotFound,
    ServerNotRunning,
    ServerRequestError,
    ServerStartError,
)
from servegate.packaging.savedmodel import export_savedmodel, to_png_bytes  # noqa: E402
from servegate.sources.digits_keras import builtin_digits_keras  # noqa: E402
from servegate.testing.tfserving_fake import FakeTFServing  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    """Two different Keras models exported as v1 and v2 (their answers tell the routes apart)."""
    export_root = tmp_path_factory.mktemp("exports")
    champion = builtin_digits_keras(epochs=8, seed=0)
    challenger = builtin_digits_keras(epochs=2, seed=1)
    v1 = export_savedmodel(champion, export_root, "digits", 1)
    v2 = export_savedmodel(challenger, export_root, "digits", 2)
    return {"1": (champion, v1.path), "2": (challenger, v2.path)}


@pytest.fixture
def fake():
    with FakeTFServing(load_delay_s=0.3) as server:
        yield server


@pytest.fixture
def backend(fake: FakeTFServing, tmp_path: Path):
    with TFServingBackend(TFServingClient(fake.rest_url, fake.grpc_target), tmp_path / "root",
                          ready_timeout_s=30) as b:
        yield b


def _probabilities(answer: dict) -> np.ndarray:
    if "predictions" in answer:
        return np.asarray([p["probabilities"] for p in answer["predictions"]], dtype=np.float32)
    return np.asarray(answer["outputs"]["probabilities"], dtype=np.float32)


def test_reload_request_is_built_from_the_real_model_service_protos() -> None:
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = build_reload_request([ModelEntry("digits", "/m/digits", (1, 2),
                                               {STABLE: 1, CANARY: 2})])
    assert isinstance(request, model_management_pb2.ReloadConfigRequest)
    again = model_management_pb2.ReloadConfigRequest.FromString(request.SerializeToString())
    model = again.config.model_config_list.config[0]
    assert (model.name, list(model.model_version_policy.specific.versions)) == ("digits", [1, 2])
    assert dict(model.version_labels) == {"stable": 1, "canary": 2}
    assert hasattr(model_service_pb2_grpc.ModelServiceStub, "__init__")


def test_deploy_label_promote_reject_state_machine(backend, fake, models) -> None:
    assert isinstance(backend, ServingBackend) and backend.kind == "tfserving"
    champion, v1 = models["1"]
    challenger, v2 = models["2"]
    x = champion.eval_x[:16]

    backend.deploy(v1, "digits", "1")  # first version: AVAILABLE, then labelled stable
    assert backend.labels("digits") == {STABLE: 1}
    assert [(v.version, v.is_default, v.ready_workers) for v in backend.versions("digits")] == [
        ("1", True, 1)]
    assert backend.endpoint("digits").endswith("/v1/models/digits/labels/stable:predict")

    backend.deploy(v2, "digits", "2")  # challenger: canary; stable untouched
    assert backend.labels("digits") == {STABLE: 1, CANARY: 2}
    assert backend.default_version("digits") == "1"
    assert fake.reloads == 4  # serve, wait, then label: two reloads per deploy
    default = _probabilities(backend.predict("digits", {"instances": x.tolist()}))
    assert np.abs(default - champion.reference(x)).max() <= 1e-5  # NOT the highest version
    canary = _probabilities(backend.client.predict("digits", {"inputs": x.tolist()}, label=CANARY))
    assert np.abs(canary - challenger.reference(x)).max() <= 1e-5
    by_version = _probabilities(backend.predict("digits", {"instances": x.tolist()}, version="2"))
    assert np.array_equal(by_version, canary)

    backend.set_default("digits", "2")  # promote: stable moves, canary leaves, v1 stays loaded
    assert backend.labels("digits") == {STABLE: 2}
    assert [(v.version, v.is_default) for v in backend.versions("digits")] == [
        ("1", False), ("2", True)]
    promoted = _probabilities(backend.predict("digits", {"instances": x.tolist()}))
    assert np.abs(promoted - challenger.reference(x)).max() <= 1e-5

    backend.deploy(v1, "digits", "3")  # another challenger, then rejected
    assert backend.labels("digits") == {STABLE: 2, CANARY: 3}
    backend.undeploy("digits", "3")
    assert backend.labels("digits") == {STABLE: 2}
    assert [v.version for v in backend.versions("digits")] == ["1", "2"]
    assert backend.client.grpc_status("digits")["3"] == "END"
    with pytest.raises(ConfigError, match="stable version"):
        backend.undeploy("digits", "2")
    backend.set_default("digits", "1")  # roll back: instant, v1 never left
    assert backend.default_version("digits") == "1"
    # the file the server would restart from says the same
    assert backend.entry("digits") == ModelEntry("digits", f"{backend.server_root}/digits", (1, 2),
                                                 {STABLE: 1})


def test_deploy_places_versions_atomically_and_immutably(backend, models, monkeypatch) -> None:
    _, v1 = models["1"]
    _, v2 = models["2"]
    seen: list[list[str]] = []
    real_rename = os.rename

    def watching_rename(src, dst):
        seen.append(sorted(os.listdir(Path(dst).parent)))
        return real_rename(src, dst)

    monkeypatch.setattr(model_root.os, "rename", watching_rename)
    backend.deploy(v1, "digits", "1")
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].startswith(".incoming-1-")
    assert sorted(os.listdir(backend.model_root / "digits")) == ["1"]
    assert (backend.model_root / "digits" / "1" / "assets.extra").is_dir()
    with pytest.raises(ConfigError, match="immutable"):
        backend.deploy(v2, "digits", "1")
    with pytest.raises(ConfigError, match="not a SavedModel"):
        backend.deploy(v1.parent, "digits", "4")
    with pytest.raises(ConfigError, match="integers"):
        backend.deploy(v1, "digits", "v5")


def test_a_model_root_on_another_filesystem_is_written_through_tensorflow(
        fake: FakeTFServing, models, tmp_path: Path) -> None:
    """No shared directory: the runner writes the root as a URI (here file://, the same code
    path as gs:// or s3://), the server reads it under its own name for it (server_root)."""
    champion, v1 = models["1"]
    _, v2 = models["2"]
    shared = tmp_path / "bucket" / "models"
    client = TFServingClient(fake.rest_url, fake.grpc_target)
    with TFServingBackend(client, f"file://{shared}", server_root=str(shared),
                          ready_timeout_s=30) as remote:
        assert isinstance(remote.root, model_root.GfileRoot) and remote.model_root is None
        remote.deploy(v1, "digits", "1")
        remote.deploy(v2, "digits", "2")
        assert sorted(os.listdir(shared / "digits")) == ["1", "2"]
        assert remote.entry("digits") == ModelEntry("digits", f"{shared}/digits", (1, 2),
                                                    {STABLE: 1, CANARY: 2})
        assert "labels/stable" in remote.endpoint("digits")
        assert remote.next_version("digits") == 3
        with pytest.raises(ConfigError, match="immutable"):
            remote.deploy(v2, "digits", "1")
        remote.set_default("digits", "2")
        remote.undeploy("digits", "1")
        assert [v.version for v in remote.versions("digits")] == ["2"]
    # the state lives beside the models, where the next runner reads it
    with TFServingBackend(TFServingClient(fake.rest_url, fake.grpc_target), f"file://{shared}",
                          server_root=str(shared)) as again:
        assert again.default_version("digits") == "2"


def test_a_server_that_lost_our_versions_gets_them_back(models, tmp_path: Path) -> None:
    champion, v1 = models["1"]
    _, v2 = models["2"]
    root = tmp_path / "root"
    with FakeTFServing() as first, TFServingBackend(
            TFServingClient(first.rest_url, first.grpc_target), root) as backend:
        backend.deploy(v1, "digits", "1")
    with FakeTFServing(load_delay_s=0.2) as restarted, TFServingBackend(
            TFServingClient(restarted.rest_url, restarted.grpc_target), root) as backend:
        assert backend.versions("digits") == [] and backend.labels("digits") == {STABLE: 1}
        assert backend.next_version("digits") == 2
        backend.deploy(v2, "digits", "2")
        assert backend.labels("digits") == {STABLE: 1, CANARY: 2}
        x = champion.eval_x[:4]
        answer = backend.predict("digits", {"instances": x.tolist()})
        assert np.abs(_probabilities(answer) - champion.reference(x)).max() <= 1e-5
        assert backend.next_version("digits") == 3


def test_rest_and_grpc_predict_in_every_form(backend, models) -> None:
    champion, v1 = models["1"]
    backend.deploy(v1, "digits", "1")
    x = champion.eval_x[:4]
    reference = champion.reference(x)
    rows = backend.predict("digits", {"instances": [{"inputs": r} for r in x.tolist()]})
    assert [p["labels"][0] for p in rows["predictions"]] == [str(c) for c in reference.argmax(-1)]
    images = [{"b64": base64.b64encode(p).decode()} for p in to_png_bytes(x)]
    answer = backend.predict("digits", {"signature_name": "serving_images", "instances": images})
    assert len(answer["predictions"]) == 4
    columns = backend.predict("digits", {"signature_name": "serving_images",
                                         "inputs": {"image_bytes": images}}, version="1")
    assert np.array_equal(np.asarray(columns["outputs"]["classes"])[:, 0],
                          [p["classes"][0] for p in answer["predictions"]])
    out = backend.predict_grpc("digits", {"inputs": x})
    assert np.abs(out["probabilities"] - reference).max() <= 1e-5
    assert [b.decode() for b in out["labels"][:, 0]] == [str(c) for c in reference.argmax(-1)]
    out = backend.predict_grpc("digits", {"image_bytes": np.asarray(to_png_bytes(x), object)},
                               version="1", signature="serving_images")
    assert out["probabilities"].shape == (4, 10)
    metadata = backend.client.metadata("digits", 1)
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_images"} <= set(signatures)
    assert ":tensorflow:serving:request_count" in backend.client.metrics_text()


def test_server_errors_become_servegate_errors(backend, fake, models, tmp_path: Path) -> None:
    _, v1 = models["1"]
    backend.deploy(v1, "digits", "1")
    client = backend.client
    with pytest.raises(ModelNotFound, match="Servable not found"):
        client.predict("digits", {"instances": [[0.0] * 64]}, version=7)
    with pytest.raises(ModelNotFound, match="Unrecognized servable version label"):
        client.predict("digits", {"instances": [[0.0] * 64]}, label="nope")
    with pytest.raises(ModelNotFound):
        client.status("absent")
    assert backend.versions("absent") == []
    with pytest.raises(ServerRequestError) as info:
        client.predict("digits", {"instances": [[0.0] * 3]})
    assert info.value.status == 400
    with pytest.raises(ConfigError, match="instances"):
        client.predict("digits", {"rows": []})
    with pytest.raises(ModelNotFound, match="NOT_FOUND"):
        client.predict_grpc("digits", {"inputs": np.zeros((1, 64), np.float32)}, version=9)
    # TF Serving refuses a label on a version that is not AVAILABLE
    with pytest.raises(ServerRequestError, match="not currently available"):
        client.reload_config([ModelEntry("digits", str(backend.model_root / "digits"), (1, 8),
                                         {STABLE: 1, CANARY: 8})])
    # a version that fails to load ends with the server's message, not a timeout
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a graph")
    with pytest.raises(ServerStartError, match="failed to load"):
        backend.deploy(broken, "digits", "6")
    assert backend.entry("digits").versions == (1,)  # it left the configuration again
    dead = TFServingClient("http://127.0.0.1:9", "127.0.0.1:9", timeout=2)
    with pytest.raises(ServerNotRunning, match="unreachable"):
        dead.status("digits")
    with pytest.raises(ServerNotRunning, match="unreachable"):
        dead.grpc_status("digits")
    dead.close()


def test_grpc_codes_map_to_http_statuses() -> None:
    import grpc

    class Error(grpc.RpcError):
        def __init__(self, code, details):
            self._code, self._details = code, details

        def code(self):
            return self._code

        def details(self):
            return self._details

    cases = [(grpc.StatusCode.NOT_FOUND, ModelNotFound, 404),
             (grpc.StatusCode.INVALID_ARGUMENT, ServerRequestError, 400),
             (grpc.StatusCode.RESOURCE_EXHAUSTED, ServerRequestError, 429),
             (grpc.StatusCode.UNAVAILABLE, ServerRequestError, 503)]
    for code, error, status in cases:
        translated = translate_rpc_error(Error(code, "queue full"), "predict", "h:1")
        assert type(translated) is error and translated.status == status
    down = translate_rpc_error(Error(grpc.StatusCode.UNAVAILABLE, "failed to connect"), "x", "h:1")
    assert isinstance(down, ServerNotRunning)


def test_no_server_says_exactly_how_to_provide_one(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(tfserving.ENV_URL, raising=False)
    monkeypatch.setattr(tfs_local.shutil, "which", lambda name: None)
    with pytest.raises(ServerNotRunning) as info:
        open_tfserving(TFServingSettings(workdir=tmp_path))
    message = str(info.value)
    assert message == HOW_TO_PROVIDE
    for needle in ("SERVEGATE_TFSERVING_URL", "SERVEGATE_TFSERVING_GRPC",
                   "SERVEGATE_TFSERVING_MODEL_ROOT", "tensorflow_model_server",
                   "tensorflow/serving"):
        assert needle in message
    monkeypatch.setenv(tfserving.ENV_URL, "http://127.0.0.1:9")
    monkeypatch.setenv(tfserving.ENV_MODEL_ROOT, str(tmp_path))
    with pytest.raises(ServerNotRunning, match="no TF Serving answers"):
        open_tfserving()
    monkeypatch.delenv(tfserving.ENV_MODEL_ROOT)
    with pytest.raises(ConfigError, match="MODEL_ROOT"):
        open_tfserving()


def test_attach_by_environment(monkeypatch, fake, models, tmp_path: Path) -> None:
    champion, v1 = models["1"]
    monkeypatch.setenv(tfserving.ENV_URL, fake.rest_url)
    monkeypatch.setenv(tfserving.ENV_GRPC, fake.grpc_target)
    monkeypatch.setenv(tfserving.ENV_MODEL_ROOT, str(tmp_path))
    with open_tfserving() as backend:
        backend.deploy(v1, "digits", "1")
        answer = backend.predict("digits", {"instances": champion.eval_x[:2].tolist()})
        assert len(answer["predictions"]) == 2


def test_local_server_flags(tmp_path: Path) -> None:
    local = LocalTFServing(TFServingSettings(workdir=tmp_path, max_batch_size=4))
    flags = local.flags(8500, 8501, "/models")
    assert flags[:2] == ["--port=8500", "--rest_api_port=8501"]
    assert "--model_config_file=/models/models.config" in flags
    assert "--batching_parameters_file=/models/batching.config" in flags
    assert "--xla_cpu_compilation_enabled=true" in flags
    assert (tmp_path / "models" / "batching.config").read_text().startswith("max_batch_size")
    assert local.state() is None and not local.stop()


def test_local_server_from_a_binary_on_path(monkeypatch, models, tmp_path: Path) -> None:
    """LocalTFServing with a `tensorflow_model_server` on PATH (here: the fake behind a script):
    started in its own process group, recorded, reused, driven, stopped with its group."""
    champion, v1 = models["1"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "tensorflow_model_server"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m servegate.testing.tfserving_fake "
                      '"$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(tfserving.ENV_URL, raising=False)
    local = LocalTFServing(TFServingSettings(workdir=tmp_path / "tfs", ready_timeout_s=60))
    state = local.start()
    try:
        assert state.how == "binary" and local.state() == state
        assert state.per_model_batching  # started so: each version brings its batching
        with open_tfserving(local.settings) as backend:  # reuses the recorded server
            assert backend.client.rest_url == state.rest_url
            backend.deploy(v1, "digits", "1")
            answer = backend.predict("digits", {"instances": champion.eval_x[:2].tolist()})
            assert len(answer["predictions"]) == 2
    finally:
        assert local.stop()
    assert local.state() is None and not local.state_path.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(int(state.ident), 0)  # the whole process group is gone


def test_local_server_through_docker(monkeypatch, fake, tmp_path: Path) -> None:
    """The `docker run tensorflow/serving` path: loopback ports, the model root mounted at
    /models, the config files named as the container sees them; `docker stop` on stop."""
    rest_port = int(fake.rest_url.rsplit(":", 1)[1])  # the fake answers as the container would
    grpc_port = int(fake.grpc_target.rsplit(":", 1)[1])
    calls: list[list[str]] = []

    def run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="c0ffee\n", stderr="")

    monkeypatch.setattr(tfs_local.shutil, "which", lambda name: None)
    monkeypatch.setattr(tfs_local, "docker_has_image", lambda image: True)
    monkeypatch.setattr(tfs_local.subprocess, "run", run)
    local = LocalTFServing(TFServingSettings(workdir=tmp_path, rest_port=rest_port,
                                             grpc_port=grpc_port))
    state = local.start()
    assert (state.how, state.ident, state.server_root) == ("docker", "c0ffee", "/models")
    command = calls[0]
    assert command[:4] == ["docker", "run", "-d", "--rm"]
    assert f"127.0.0.1:{rest_port}:8501" in command and f"127.0.0.1:{grpc_port}:8500" in command
    assert f"{tmp_path / 'models'}:/models" in command
    assert command[command.index("--entrypoint") + 1] == "tensorflow_model_server"
    assert "--model_config_file=/models/models.config" in command
    assert "--port=8500" in command and "--rest_api_port=8501" in command
    assert TFServingBackend.from_state(state).server_root == "/models"
    assert local.stop() and calls[-1] == ["docker", "stop", "c0ffee"]


def test_locustfile_posts_both_forms(fake, backend, models, tmp_path: Path) -> None:
    champion, v1 = models["1"]
    backend.deploy(v1, "digits", "1")
    samples = tmp_path / "samples.json"
    samples.write_text(str(champion.eval_x[:3].tolist()))
    locust = shutil.which("locust", path=str(Path(sys.executable).parent))
    assert locust is not None
    env = dict(os.environ, SERVEGATE_MODEL="digits", SERVEGATE_LABEL="stable",
               SERVEGATE_SAMPLES=str(samples))
    run = subprocess.run([locust, "-f", str(REPO / "loadtests" / "tfserving.py"), "--headless",
                          "-u", "2", "-r", "2", "-t", "2s", "--host", fake.rest_url,
                          "--only-summary", "--stop-timeout", "2"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "/v1/models/digits/labels/stable:predict" in run.stderr + run.stdout
    assert fake.request_count["digits"] > 10
