"""How an archive reaches TorchServe: copied into a model store the server reads (a shared
filesystem), or registered by URL, fetched by the server itself from the artifact store.

Either way ``POST /models?url=`` gets what the server's ``allowed_urls`` admits: a store file
name, or a URL under the artifact store's prefix. A server deletes an archive it downloaded when
the version is unregistered, so orphans leave nothing behind in its store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from servegate._atomic import atomic_copy
from servegate.errors import ConfigError
from servegate.packaging.mar import archive_file_name


class ArchiveDelivery(Protocol):
    """Puts an archive where the server can register it from."""

    #: For people: how archives reach this server.
    description: str

    def locate(self, archive: Path, name: str, version: str, source_uri: str | None) -> str:
        """The ``url`` to register ``archive`` (logged at ``source_uri``) with."""


class ModelStoreCopy:
    """Copy the archive into the server's model store (atomically); register it by file name."""

    def __init__(self, model_store: Path) -> None:
        if not Path(model_store).is_dir():
            raise ConfigError(f"model store {model_store} is not a directory")
        self.model_store = Path(model_store)
        self.description = f"copied into the model store {self.model_store}"

    def locate(self, archive: Path, name: str, version: str, source_uri: str | None) -> str:
        file_name = archive_file_name(name, version)
        target = self.model_store / file_name
        if archive.resolve() == target.resolve():
            return file_name
        atomic_copy(archive, target)
        return file_name


class ArtifactUrl:
    """Register by the archive's HTTP(S) URL in the artifact store; the server downloads it."""

    description = "registered by URL from the artifact store"

    def __init__(self, tracking_uri: str | None = None) -> None:
        self._tracking_uri = tracking_uri

    def locate(self, archive: Path, name: str, version: str, source_uri: str | None) -> str:
        from servegate.artifact_urls import fetch_url

        if not source_uri:
            raise ConfigError(f"{name} v{version}: registering by URL needs the archive's artifact "
                              "URI (it was not logged to MLflow)")
        expected = archive_file_name(name, version)
        if not source_uri.rstrip("/").endswith("/" + expected):
            raise ConfigError(f"{source_uri} is not {expected}: the server names the archive it "
                              "downloads after the URL")
        return fetch_url(source_uri, self._tracking_uri or _tracking_uri(),
                         os.environ.get("MLFLOW_S3_ENDPOINT_URL"))


def _tracking_uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())
