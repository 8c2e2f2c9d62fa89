"""``TorchServeBackend``: the ``ServingBackend`` of TorchServe (archives in, versions out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servegate.backends.base import ServerAccess, VersionInfo
from servegate.backends.torchserve.client import Endpoints, TorchServeClient
from servegate.backends.torchserve.delivery import ArchiveDelivery, ArtifactUrl, ModelStoreCopy
from servegate.backends.torchserve.keys import Keys
from servegate.backends.torchserve.local import ServerState


class TorchServeBackend:
    """Deploy archives into a TorchServe: through its model store, or by URL."""

    kind = "torchserve"

    def __init__(self, client: TorchServeClient, delivery: ArchiveDelivery | Path, *,
                 ready_timeout_s: float = 180, attached: bool = False) -> None:
        self.client = client
        self.delivery = ModelStoreCopy(delivery) if isinstance(delivery, Path) else delivery
        self.ready_timeout_s = ready_timeout_s
        self.attached = attached

    @classmethod
    def from_state(cls, state: ServerState) -> TorchServeBackend:
        return cls(state.client(), Path(state.model_store))

    @classmethod
    def attach(cls, inference_url: str, management_url: str, *, keys: Keys | Path | None,
               model_store: Path | None = None, metrics_url: str = "") -> TorchServeBackend:
        """A TorchServe started elsewhere: its URLs and keys; archives are copied into
        ``model_store`` when given (a shared filesystem), else registered by URL."""
        endpoints = Endpoints(inference_url.rstrip("/"), management_url.rstrip("/"),
                              metrics_url.rstrip("/"))
        delivery: ArchiveDelivery = ModelStoreCopy(model_store) if model_store else ArtifactUrl()
        return cls(TorchServeClient(endpoints, keys), delivery, attached=True)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TorchServeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1,
               source_uri: str | None = None, sha256: str | None = None) -> None:
        url = self.delivery.locate(Path(artifact), name, version, source_uri, sha256)
        self.client.register(url, initial_workers=workers)
        self.client.wait_ready(name, version, min_ready=workers, timeout_s=self.ready_timeout_s)

    def ping(self) -> bool:
        return self.client.ping()

    def access(self) -> ServerAccess:
        return ServerAccess(
            inference_url=self.client.endpoints.inference,
            inference_key=self.client.keys.key("inference"),
            key_shell=self.client.keys.shell_expression("inference"),
            where=("attached to " if self.attached else "local server at ")
            + self.client.endpoints.management + f" (archives {self.delivery.description})")

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
