"""servegate's TorchServe image (issue 21, item 1), through a real engine's Docker API (podman's
here; Docker Engine for users): built from a locally made Debian base and this environment's
wheelhouse, run, a prediction with its key, and `make deploy` with the attach variables
promoting a version into the running container; then the champion baked into a second image."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from container_engine import container_engine, ensure_base
from pipeline_env import pipeline_home

from servegate.backends.torchserve import TorchServeBackend

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SERVEGATE = str(ROOT / ".venv" / "bin" / "servegate")
TAG = "localhost/servegate-test-torchserve:store"
BAKED_TAG = "localhost/servegate-test-torchserve:baked"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``DOCKER_HOST`` of a running engine and the base image to build from."""
    import docker

    with container_engine(tmp_path_factory.mktemp("engine")) as url:
        client = docker.DockerClient(base_url=url, timeout=600)
        base = ensure_base(client)
        yield url, base
        for name in ("sg-test-store", "sg-test-baked"):
            try:
                client.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
        try:  # its layers are the store image's plus one archive: nothing to keep
            client.images.remove(BAKED_TAG)
        except docker.errors.ImageNotFound:
            pass


def servegate(*args: str, env: dict[str, str], timeout: int = 900) -> str:
    done = subprocess.run([SERVEGATE, *args], capture_output=True, text=True, timeout=timeout,
                          env=os.environ | env, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def attach_variables(printed: str) -> dict[str, str]:
    """The ``export NAME=value`` lines ``servegate image run`` prints."""
    found = {}
    for line in printed.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            found[name] = shlex.split(value)[0]
    return found


def predict(variables: dict[str, str], name: str, rows: list[list[float]],
            key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{variables['SERVEGATE_TORCHSERVE_INFERENCE_URL']}/predictions/{name}",
                      json={"instances": rows}, headers=headers, timeout=30)


def test_the_image_serves_what_make_deploy_promotes_and_what_was_baked_in(
        engine, tmp_path: Path, digits) -> None:
    import docker

    url, base = engine
    env = {"DOCKER_HOST": url}
    built = servegate("image", "build", TAG, "--base", base, env=env)
    assert TAG in built and "MB" in built
    client = docker.DockerClient(base_url=url, timeout=600)
    config = client.images.get(TAG).attrs["Config"]
    assert config["User"] == "1000:1000"  # never root
    store = tmp_path / "store"
    store.mkdir()
    variables = attach_variables(servegate(
        "image", "run", TAG, "--name", "sg-test-store", "--workdir", str(tmp_path / "work"),
        "--model-store", str(store), env=env))
    container = client.containers.get("sg-test-store")
    published = container.attrs["NetworkSettings"]["Ports"]
    assert {published["8081/tcp"][0]["HostIp"], published["8082/tcp"][0]["HostIp"]} == {"127.0.0.1"}
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/home/model-server/model-store"]["RW"] is False  # the server cannot write it

    # make deploy, attached to the container: the new version is copied into the mounted store,
    # gated there and promoted to its default
    with pipeline_home(tmp_path / "runner", **variables, SERVEGATE_SERVER="attach"):
        deployed = subprocess.run(
            ["make", "-s", "deploy",
             "DEPLOY_ARGS=-P compiler=eager -P load_seconds=3 -P load_users=4"],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
            env=os.environ | {"MAKEFLAGS": ""})
        out = deployed.stdout + deployed.stderr
        assert deployed.returncode == 0, out[-4000:]
        assert "promoted" in out
    keys = json.loads(Path(variables["SERVEGATE_TORCHSERVE_KEY_FILE"]).read_text())
    with TorchServeBackend.attach(variables["SERVEGATE_TORCHSERVE_INFERENCE_URL"],
                                  variables["SERVEGATE_TORCHSERVE_MANAGEMENT_URL"],
                                  keys=Path(variables["SERVEGATE_TORCHSERVE_KEY_FILE"])) as served:
        assert served.default_version("digits") == "1"
    rows = digits.eval_x[:3].tolist()
    answer = predict(variables, "digits", rows, keys["inference"]["key"])
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 3 and all(len(p["probabilities"]) == 10 for p in predictions)
    refused = predict(variables, "digits", rows, None)
    assert refused.status_code in (400, 401, 403), refused.text  # token auth is on

    # the champion baked into a second image: it serves with no store mounted
    with pipeline_home(tmp_path / "runner"):
        servegate("image", "build", BAKED_TAG, "--base", base, "--model", "digits@champion",
                  env=env)
    baked = attach_variables(servegate("image", "run", BAKED_TAG, "--name", "sg-test-baked",
                                       "--workdir", str(tmp_path / "baked"), env=env))
    assert "SERVEGATE_TORCHSERVE_MODEL_STORE" not in baked
    baked_key = json.loads(Path(baked["SERVEGATE_TORCHSERVE_KEY_FILE"]).read_text())
    again = predict(baked, "digits", rows, baked_key["inference"]["key"])
    assert again.status_code == 200, again.text
    assert [p["label"] for p in again.json()["predictions"]] == \
        [p["label"] for p in predictions]
    assert "stopped" in servegate("image", "stop", "sg-test-baked", env=env)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("sg-test-baked")
