"""Real TorchServe for the integration tests: free ports, its own directory, stopped afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from servegate.backends._process import group_processes
from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
from servegate.config import TorchServeSettings

#: The policy these tests run under: the shared box's short, noisy load phases (see the file).
SHARED_BOX_POLICY = Path(__file__).with_name("gate-policy-shared-box.toml")


@pytest.fixture(autouse=True)
def shared_box_gate_policy(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every integration test (and the runs it starts) under ``SHARED_BOX_POLICY``, set as an
    operator sets a policy (``SERVEGATE_GATE_POLICY``); restored after each test."""
    monkeypatch.setenv("SERVEGATE_GATE_POLICY", str(SHARED_BOX_POLICY))
    return SHARED_BOX_POLICY


def _require_java() -> None:
    if shutil.which("java") is None:
        pytest.fail("java is not installed: `make setup` installs openjdk-17-jdk-headless")


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory: pytest.TempPathFactory):
    """A running local TorchServe and its backend; every process is gone afterwards."""
    _require_java()
    server = LocalTorchServe(TorchServeSettings(workdir=tmp_path_factory.mktemp("torchserve")))
    state = server.start()
    backend = TorchServeBackend.from_state(state)
    try:
        yield server, state, backend
    finally:
        backend.close()
        server.stop()
        assert group_processes(state.pid) == [], "TorchServe processes left behind"

