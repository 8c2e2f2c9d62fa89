"""``TorchServeBackend``: the ``ServingBackend`` of TorchServe (archives in, versions out)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from servegate.backends.base import VersionInfo
from servegate.backends.torchserve.client import Endpoints, TorchServeClient
from servegate.backends.torchserve.local import ServerState
from servegate.errors import ConfigError
from servegate.packaging.mar import archive_file_name


class TorchServeBackend:
    """Deploy archives into a TorchServe whose model store we can write to."""

    kind = "torchserve"

    def __init__(self, client: TorchServeClient, model_store: Path, *, ready_timeout_s: float = 180) -> None:
        self.client = client
        self.model_store = Path(model_store)
        self.ready_timeout_s = ready_timeout_s

    @classmethod
    def from_state(cls, state: ServerState) -> TorchServeBackend:
        return cls(state.client(), Path(state.model_store))

    @classmethod
    def attach(cls, inference_url: str, management_url: str, *, key_file: Path | None,
               model_store: Path, metrics_url: str = "") -> TorchServeBackend:
        """A TorchServe started elsewhere: its URLs, its key file and its model store."""
        if not model_store.is_dir():
            raise ConfigError(f"model store {model_store} is not a directory")
        endpoints = Endpoints(inference_url.rstrip("/"), management_url.rstrip("/"),
                              metrics_url.rstrip("/"))
        return cls(TorchServeClient(endpoints, key_file), model_store)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TorchServeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _place_archive(self, artifact: Path, name: str, version: str) -> str:
        """Put the archive into the model store atomically; return its store file name."""
        file_name = archive_file_name(name, version)
        target = self.model_store / file_name
        if artifact.resolve() == target.resolve():
            return file_name
        with tempfile.NamedTemporaryFile(dir=self.model_store, prefix=".incoming-", delete=False) as tmp:
            with open(artifact, "rb") as src:
                shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, target)
        return file_name

    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1) -> None:
        file_name = self._place_archive(artifact, name, version)
        self.client.register(file_name, initial_workers=workers)
        self.client.wait_ready(name, version, min_ready=workers, timeout_s=self.ready_timeout_s)

    def set_default(self, name: str, version: str) -> None:
        self.client.set_default(name, version)

    def undeploy(self, name: str, version: str) -> None:
        self.client.unregister(name, version)

    def versions(self, name: str) -> list[VersionInfo]:
        return self.client.versions(name)

    def default_version(self, name: str) -> str | None:
        return self.client.default_version(name)

    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        return self.client.predict(name, payload, version)

    def endpoint(self, name: str, version: str | None = None) -> str:
        return self.client.predict_url(name, version)
