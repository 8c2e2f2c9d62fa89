"""The served bytes are the checked bytes (issue 19, item 5): each delivery hashes the archive
where the server loads it from (its store, the URL it fetches, its model root) immediately before
registration; a champion without a recorded hash is not restored unless the operator opts in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from servegate.backends.torchserve.delivery import ArtifactUrl, ModelStoreCopy
from servegate.errors import IntegrityError
from servegate.integrity import artifact_sha256


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "built" / "fraud.v3.mar"
    path.parent.mkdir()
    path.write_bytes(b"PK the archive servegate built and gated" * 100)
    return path


def test_a_store_copy_is_hashed_where_the_server_reads_it(tmp_path: Path, archive: Path,
                                                          monkeypatch) -> None:
    store = tmp_path / "store"
    store.mkdir()
    delivery = ModelStoreCopy(store)
    good = artifact_sha256(archive)
    assert delivery.locate(archive, "fraud", "3", None, good) == "fraud.v3.mar"
    # readable by a server running as another user (a container's), writable by us only
    assert (store / "fraud.v3.mar").stat().st_mode & 0o777 == 0o644
    # the copy is swapped between the copy and the check (another writer of the store)
    from servegate.backends.torchserve import delivery as module

    def tampering_copy(source: Path, target: Path) -> None:
        target.write_bytes(b"PK something else")

    monkeypatch.setattr(module, "atomic_copy", tampering_copy)
    with pytest.raises(IntegrityError, match="hashes to"):
        delivery.locate(archive, "fraud", "3", None, good)
    assert not (store / "fraud.v3.mar").exists()  # removed, never registered


@pytest.fixture
def artifact_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """An HTTP artifact store on loopback serving ``files[path]``; records Authorization."""
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = files.get(self.path)
            files.setdefault("auth-seen", b"")
            if self.headers.get("Authorization"):
                files["auth-seen"] = b"yes"
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


def test_a_url_is_hashed_as_the_server_fetches_it(archive: Path, artifact_server) -> None:
    base, files = artifact_server
    uri = f"{base}/artifacts/fraud.v3.mar"
    good = artifact_sha256(archive)
    files["/artifacts/fraud.v3.mar"] = archive.read_bytes()
    assert ArtifactUrl("http://unused").locate(archive, "fraud", "3", uri, good) == uri
    files["/artifacts/fraud.v3.mar"] = b"PK replaced in the artifact store"
    with pytest.raises(IntegrityError, match="would fetch hashes to"):
        ArtifactUrl("http://unused").locate(archive, "fraud", "3", uri, good)
    assert files["auth-seen"] == b""  # fetched as the server does: no credentials


def test_a_model_root_tree_is_hashed_in_place(tmp_path: Path) -> None:
    """TF Serving: the SavedModel tree as placed (a local root, or a root TensorFlow writes)
    hashes as ``artifact_sha256`` does; the deployer refuses a mismatch."""
    from servegate.backends.model_root import GfileRoot, LocalRoot

    tree = tmp_path / "savedmodel"
    (tree / "variables").mkdir(parents=True)
    (tree / "saved_model.pb").write_bytes(b"graph")
    (tree / "variables" / "variables.index").write_bytes(b"index")
    (tree / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    local, remote = LocalRoot(tmp_path / "root"), GfileRoot((tmp_path / "gfile").as_uri())
    for root in (local, remote):
        root.put_tree(tree, "fraud/3")
        assert root.tree_sha256("fraud/3") == artifact_sha256(tree)
    (tmp_path / "root" / "fraud" / "3" / "variables" / "variables.index").write_bytes(b"evil")
    assert local.tree_sha256("fraud/3") != artifact_sha256(tree)


def test_the_tf_deployer_refuses_a_tree_that_changed(tmp_path: Path) -> None:
    from servegate.backends.tfserving.deployer import TFServingBackend

    tree = tmp_path / "savedmodel"
    tree.mkdir()
    (tree / "saved_model.pb").write_bytes(b"graph")
    backend = TFServingBackend(client=None, model_root=tmp_path / "root")  # type: ignore[arg-type]
    backend._place(tree, "fraud", 3, artifact_sha256(tree))
    (tmp_path / "root" / "fraud" / "3" / "extra.txt").write_text("planted")
    with pytest.raises(IntegrityError, match="recorded when it was built"):
        backend._place(tree, "fraud", 3, artifact_sha256(tree))


@pytest.fixture
def registry(tmp_path: Path, archive: Path):
    """A registered version whose archive is logged (real MLflow on SQLite)."""
    import mlflow

    from servegate.registry import ARCHIVE_TAG, Registry

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        experiment = mlflow.create_experiment("bytes", artifact_location=(tmp_path / "a").as_uri())
        client = mlflow.MlflowClient()
        run = client.create_run(experiment)
        client.log_artifact(run.info.run_id, str(archive))
        client.create_registered_model("fraud")
        client.create_model_version("fraud", str(tmp_path / "a"), run_id=run.info.run_id)
        registry = Registry.for_model("fraud")
        registry.tag("1", {ARCHIVE_TAG: f"runs:/{run.info.run_id}/{archive.name}"})
        yield registry
    finally:
        mlflow.set_tracking_uri(None)


def test_a_champion_without_a_hash_is_not_restored_unless_the_operator_opts_in(
        registry, archive: Path, monkeypatch) -> None:
    from servegate.promotion import restore
    from servegate.registry import ARCHIVE_SHA256_TAG
    from servegate.testing import MemoryBackend

    backend, notes = MemoryBackend(), []
    monkeypatch.delenv("SERVEGATE_ALLOW_UNVERIFIED_RESTORE", raising=False)
    with pytest.raises(IntegrityError, match="records no servegate.archive_sha256"):
        restore(registry, backend, "fraud", "1", 1, notes.append)
    assert backend.versions("fraud") == []
    monkeypatch.setenv("SERVEGATE_ALLOW_UNVERIFIED_RESTORE", "1")
    restore(registry, backend, "fraud", "1", 1, notes.append)
    assert [v.version for v in backend.versions("fraud")] == ["1"] and "unchecked" in notes[-1]
    monkeypatch.delenv("SERVEGATE_ALLOW_UNVERIFIED_RESTORE")
    registry.tag("1", {ARCHIVE_SHA256_TAG: "f" * 64})  # recorded, but not these bytes
    with pytest.raises(IntegrityError, match="refusing to restore"):
        restore(registry, MemoryBackend(), "fraud", "1", 1, notes.append)
    registry.tag("1", {ARCHIVE_SHA256_TAG: artifact_sha256(archive)})
    fresh = MemoryBackend()
    restore(registry, fresh, "fraud", "1", 1, notes.append)
    assert [v.version for v in fresh.versions("fraud")] == ["1"]
