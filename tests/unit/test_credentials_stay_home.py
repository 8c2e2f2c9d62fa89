"""Credentials only to their own host (issue 19, items 2 and 8): artifact and dataset URIs from a
payload, a registry or a run are checked before any request, so MLflow never sends the tracking
credentials to a host someone else named. Two real HTTP listeners on loopback record every request:
the operator's artifact host (trusted) and another port (an attacker's)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from servegate.artifact_access import check_direct, storage_uri
from servegate.errors import SourceError

TOKEN = "s3cr3t-tracking-token"


@dataclass
class Listener:
    """An HTTP server on a free loopback port that records (path, headers) of every request."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def origin(self) -> str:
        return f"127.0.0.1:{self.port}"

    def carried_a_credential(self) -> bool:
        return any(TOKEN in value for _, headers in self.requests for value in headers.values())


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    made: list[tuple[ThreadingHTTPServer, Listener]] = []
    for _ in range(2):
        record = Listener()

        class Handler(BaseHTTPRequestHandler):
            seen = record

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.seen.requests.append((self.path, dict(self.headers)))
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        record.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append((server, record))
    yield made[0][1], made[1][1]
    for server, _ in made:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listeners) -> Iterator[Path]:
    """MLflow on SQLite, the tracking token set, the first listener named as the operator's
    artifact host (``SERVEGATE_ARTIFACT_HOSTS``)."""
    import mlflow

    trusted, _ = listeners
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    monkeypatch.setenv("SERVEGATE_ARTIFACT_HOSTS", f"http://{trusted.origin}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        mlflow.create_experiment("creds", artifact_location=(tmp_path / "artifacts").as_uri())
        mlflow.set_experiment("creds")
        yield tmp_path
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


def _eval_uris(host: str) -> list[str]:
    return [f"http://{host}/api/2.0/mlflow-artifacts/artifacts/eval.npz",
            f"mlflow-artifacts://{host}/eval.npz",
            f"http://user:pw@{host}/api/2.0/mlflow-artifacts/artifacts/eval.npz"]


def test_eval_data_on_another_host_is_refused_before_any_request(tracking, listeners) -> None:
    from servegate.sources.eval_data import read_table

    trusted, attacker = listeners
    for uri in _eval_uris(attacker.origin):
        with pytest.raises(SourceError, match="refusing.*neither the tracking server") as refused:
            read_table(uri)
        assert "pw@" not in str(refused.value)  # userinfo never printed
    assert attacker.requests == []
    # the control: a trusted host is asked (and so receives the credential): the listener works
    with pytest.raises(SourceError, match="cannot download"):
        read_table(_eval_uris(trusted.origin)[0])
    assert trusted.requests and trusted.carried_a_credential()


def test_a_logged_dataset_source_on_another_host_is_refused(tracking, listeners) -> None:
    """No payload needed: the dataset recorded on the model's own run is followed the same way."""
    import mlflow

    from servegate.sources.artifact_source import register_artifact_source
    from servegate.sources.eval_data import dataset_from_run

    _, attacker = listeners
    register_artifact_source()
    for source in (f"mlflow-artifacts://{attacker.origin}/eval.npz",
                   f"http://{attacker.origin}/eval.npz"):
        dataset = mlflow.data.from_numpy(np.zeros((4, 3), np.float32), source=source, name="held")
        with mlflow.start_run() as run:
            mlflow.log_input(dataset, context="eval")
        with pytest.raises(SourceError, match="refusing"):
            dataset_from_run(run.info.run_id)
    assert attacker.requests == []


def test_a_model_version_stored_on_another_host_is_refused(tracking, listeners) -> None:
    """A registry writer points a version's storage at their host: refused before MLflow reads
    its MLmodel there."""
    from mlflow import MlflowClient

    from servegate.sources import load_torch_model

    _, attacker = listeners
    client = MlflowClient()
    client.create_registered_model("hijacked")
    client.create_model_version("hijacked", f"mlflow-artifacts://{attacker.origin}/model", run_id=None)
    with pytest.raises(SourceError, match="refusing"):
        load_torch_model("models:/hijacked/1")
    assert attacker.requests == []


def test_a_restored_archive_on_another_host_is_refused(tracking, listeners) -> None:
    """The champion's archive tag is a registry writer's too."""
    from mlflow import MlflowClient

    from servegate.promotion import restore
    from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG, Registry
    from servegate.testing import MemoryBackend

    _, attacker = listeners
    client = MlflowClient()
    client.create_registered_model("restored")
    client.create_model_version("restored", str(tracking / "artifacts"), run_id=None)
    registry = Registry.for_model("restored")
    registry.tag("1", {ARCHIVE_TAG: f"http://{attacker.origin}/restored-1.mar",
                       ARCHIVE_SHA256_TAG: "0" * 64})
    backend = MemoryBackend()
    with pytest.raises(SourceError, match="refusing"):
        restore(registry, backend, "restored", "1", 1, lambda _: None)
    assert attacker.requests == [] and backend.versions("restored") == []


@pytest.mark.parametrize("uri", [
    "ftp://example.com/eval.npz", "gopher://x/y", "javascript:alert(1)://", "data://x",
    "file://other-host/etc/passwd", "runs:/abc/../../etc/passwd", "models://profile@dbx/m/1",
    "mlflow-artifacts://evil.example/x.npz", "https://evil.example/x.npz",
    "https://127.0.0.1:9/x\\..\\y", "https://trusted.example:444/x.npz",
])
def test_unsupported_or_foreign_uris_name_the_accepted_forms(uri: str, monkeypatch) -> None:
    monkeypatch.setenv("SERVEGATE_ARTIFACT_HOSTS", "trusted.example")
    with pytest.raises(SourceError, match="Accepted: a local path"):
        check_direct(uri, what="eval_data")


@pytest.mark.parametrize("uri", [
    "/data/eval.npz", "eval.npz", "file:///data/eval.npz", "runs:/abc123/eval/x.npz",
    "models:/fraud/3", "models:/fraud@champion", "s3://bucket/eval.npz", "gs://b/x.parquet",
    "https://trusted.example/api/2.0/mlflow-artifacts/artifacts/x.npz",
    "https://TRUSTED.example:443/x.npz", "mlflow-artifacts://trusted.example/x.npz",
])
def test_local_cloud_and_trusted_uris_pass(uri: str, monkeypatch) -> None:
    import mlflow

    monkeypatch.setenv("SERVEGATE_ARTIFACT_HOSTS", "trusted.example")
    mlflow.set_tracking_uri("https://mlflow.internal:5000")
    try:
        check_direct(uri, what="eval_data")
        check_direct("https://mlflow.internal:5000/api/2.0/mlflow-artifacts/artifacts/x", what="x")
        check_direct("mlflow-artifacts:/x.npz", what="x")
        with pytest.raises(SourceError):  # same host, another port: another origin
            check_direct("https://mlflow.internal:5001/x", what="x")
    finally:
        mlflow.set_tracking_uri(None)


def test_an_http_eval_data_that_is_no_artifact_endpoint_names_the_forms(tracking, listeners) -> None:
    """Was MLflow's bare ``ValueError: not enough values to unpack`` (exit 7)."""
    from servegate.sources.eval_data import read_table

    trusted, _ = listeners
    with pytest.raises(SourceError, match="cannot download.*Accepted: a local path"):
        read_table(f"http://{trusted.origin}/")


def test_storage_uri_checks_every_hop(tracking, listeners) -> None:
    from mlflow import MlflowClient

    _, attacker = listeners
    client = MlflowClient()
    client.create_registered_model("hops")
    client.create_model_version("hops", str(tracking / "artifacts" / "m"), run_id=None)
    assert storage_uri("models:/hops/1", what="x").endswith("artifacts/m")
    client.create_model_version("hops", f"http://{attacker.origin}/m", run_id=None)
    with pytest.raises(SourceError, match="refusing"):
        storage_uri("models:/hops/2", what="x")
