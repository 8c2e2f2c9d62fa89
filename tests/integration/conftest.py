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
#: The order modules start in on `make test`'s two integration workers (a module per worker, the
#: next to whichever is free): the longest first, so that both finish together; pytest-xdist
#: would order them by their number of tests (``--no-loadscope-reorder`` in the Makefile keeps
#: this one). Seconds on a 2-core box (one `--durations=0` run; the image's first build on a
#: fresh machine): 400, 360, 232, 230, 229, 216, 201, 165, 164, 139, 127, 98, 86, 83, 70; the
#: modules not named here take less than 30 s each and come last.
LONGEST_FIRST = (
    "test_pipeline.py", "test_serving_image.py", "test_remote_production.py",
    "test_user_models.py", "test_cross_host.py", "test_tune.py", "test_mlflow_deployments_cli.py",
    "test_image_models.py", "test_torchserve.py", "test_tune_tfserving.py", "test_pipeline_tf.py",
    "test_fleet_replicas.py", "test_promotion_interrupted.py", "test_pipeline_text.py",
    "test_text_torchserve.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules in ``LONGEST_FIRST``'s order (a stable sort: each module's tests keep theirs)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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

