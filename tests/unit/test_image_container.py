"""``servegate image run``'s decisions (issue 21, item 1) against an in-memory engine: what is
published where, what is mounted how, as which user, and that a container that never gets ready
is removed with its logs in the error (the real engine: tests/integration/test_serving_image.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from servegate.errors import ConfigError, ServerStartError
from servegate.image import container as module
from servegate.image.container import RunOptions, run_image, stop_image


class FakeContainer:
    def __init__(self, status: str = "running", labels: dict[str, str] | None = None) -> None:
        self.id = "c0ffee" * 8
        self.status = status
        self.labels = labels or {"io.servegate.kind": "container"}
        self.removed = False
        self.stopped = False

    def reload(self) -> None:
        pass

    def logs(self, tail: int) -> bytes:
        return b"java.lang.OutOfMemoryError: the log line that says why\n"

    def remove(self, force: bool = False) -> None:
        self.removed = True

    def stop(self, timeout: int) -> None:
        self.stopped = True


class FakeContainers:
    def __init__(self, container: FakeContainer, on_run: Any = None) -> None:
        self.container = container
        self.on_run = on_run
        self.run_kwargs: dict[str, Any] = {}

    def run(self, image: str, **kwargs: Any) -> FakeContainer:
        self.run_kwargs = {"image": image, **kwargs}
        if self.on_run:
            self.on_run(kwargs)
        return self.container

    def get(self, name: str) -> FakeContainer:
        return self.container


class FakeEngine:
    def __init__(self, container: FakeContainer, on_run: Any = None) -> None:
        self.containers = FakeContainers(container, on_run)


def write_keys(kwargs: dict[str, Any]) -> None:
    """What TorchServe does at start: its key file in the mounted workdir."""
    workdir = next(host for host, bind in kwargs["volumes"].items()
                   if bind["bind"] == "/home/model-server/work")
    Path(workdir, "key_file.json").write_text(json.dumps(
        {"management": {"key": "m"}, "inference": {"key": "i"}, "API": {"key": "a"}}))


@pytest.fixture
def answering(monkeypatch: pytest.MonkeyPatch) -> None:
    """The management API answers once the key file exists."""
    from servegate.backends.torchserve.client import TorchServeClient

    monkeypatch.setattr(TorchServeClient, "list_models", lambda self: [])


def test_management_and_metrics_are_published_on_loopback_only_and_the_store_read_only(
        tmp_path: Path, answering: None) -> None:
    store = tmp_path / "store"
    store.mkdir()
    engine = FakeEngine(FakeContainer(), on_run=write_keys)
    running = run_image(RunOptions(image="sg:1", name="ts", workdir=tmp_path / "work",
                                   model_store=store, host="10.1.2.3", insecure_http=True,
                                   inference_port=18080), engine)
    ports = engine.containers.run_kwargs["ports"]
    assert ports["8080/tcp"] == ("10.1.2.3", 18080)
    assert ports["8081/tcp"][0] == "127.0.0.1" and ports["8082/tcp"][0] == "127.0.0.1"
    volumes = engine.containers.run_kwargs["volumes"]
    assert volumes[str(store.resolve())] == {"bind": "/home/model-server/model-store", "mode": "ro"}
    assert "no-new-privileges" in engine.containers.run_kwargs["security_opt"]
    variables = running.attach_environment()
    assert variables["SERVEGATE_TORCHSERVE_MODEL_STORE"] == str(store.resolve())
    assert variables["SERVEGATE_TORCHSERVE_MANAGEMENT_URL"].startswith("http://127.0.0.1:")
    assert variables["SERVEGATE_TORCHSERVE_INFERENCE_URL"] == "http://10.1.2.3:18080"
    assert variables["SERVEGATE_ALLOW_INSECURE_HTTP"] == "1"  # the opt-in carried to the run


def test_it_never_runs_as_root(tmp_path: Path, answering: None,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    chowned: list[tuple[Path, int, int]] = []
    monkeypatch.setattr(module.os, "getuid", lambda: 0)
    monkeypatch.setattr(module.os, "chown", lambda p, u, g: chowned.append((Path(p), u, g)))
    engine = FakeEngine(FakeContainer(), on_run=write_keys)
    run_image(RunOptions(image="sg:1", name="ts", workdir=tmp_path / "work"), engine)
    assert engine.containers.run_kwargs["user"] == "1000:1000"  # the image's user, not root
    assert {c[0].name for c in chowned} == {"work", "logs"} and {c[1] for c in chowned} == {1000}
    monkeypatch.setattr(module.os, "getuid", lambda: 1234)
    monkeypatch.setattr(module.os, "getgid", lambda: 99)
    run_image(RunOptions(image="sg:1", name="ts", workdir=tmp_path / "work2"), engine)
    assert engine.containers.run_kwargs["user"] == "1234:99"  # yours: it writes your workdir


def test_plain_http_on_another_hosts_address_needs_the_opt_in(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--insecure-http"):
        RunOptions(image="sg:1", name="ts", workdir=tmp_path, host="0.0.0.0")
    RunOptions(image="sg:1", name="ts", workdir=tmp_path, host="::1")  # loopback is fine


def test_a_container_that_exits_while_starting_is_removed_and_its_logs_say_why(
        tmp_path: Path) -> None:
    dead = FakeContainer(status="exited")
    with pytest.raises(ServerStartError, match="OutOfMemoryError"):
        run_image(RunOptions(image="sg:1", name="ts", workdir=tmp_path / "work"),
                  FakeEngine(dead))
    assert dead.removed


def test_one_that_never_gets_ready_is_removed_too(tmp_path: Path) -> None:
    silent = FakeContainer()  # running, but no key file ever appears
    with pytest.raises(ServerStartError, match="not ready after 1s"):
        run_image(RunOptions(image="sg:1", name="ts", workdir=tmp_path / "work",
                             ready_timeout_s=1), FakeEngine(silent))
    assert silent.removed


def test_stop_removes_only_a_container_image_run_started() -> None:
    ours = FakeContainer()
    assert stop_image("ts", FakeEngine(ours)) and ours.stopped and ours.removed
    someone_elses = FakeContainer(labels={"app": "postgres"})
    with pytest.raises(ConfigError, match="not a container servegate image run started"):
        stop_image("db", FakeEngine(someone_elses))
    assert not someone_elses.removed
