"""``TorchServeBackend``: the ``ServingBackend`` of TorchServe (archives in, versions out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servegate.backends.base import ServerAccess, VersionInfo
from servegate.backends.torchserve.client import Endpoints, TorchServeClient
from servegate.backends.torchserve.delivery import ArchiveDelivery, ArtifactUrl, ModelStoreCopy
from servegate.backends.torchserve.keys import Keys
from servegate.backends.torchserve.local import ServerState
from servegate.tls import client_context


class TorchServeBackend:
    """Deploy archives into a TorchServe: through its model store, or by URL."""

    kind = "torchserve"

    def __init__(self, client: TorchServeClient, delivery: ArchiveDelivery | Path, *,
                 ready_timeout_s: float = 180, attached: bool = False,
                 ca_bundle: str | None = None) -> None:
        self.client = client
        self.delivery = ModelStoreCopy(delivery) if isinstance(delivery, Path) else delivery
        self.ready_timeout_s = ready_timeout_s
        self.attached = attached
        #: What the client verifies https with, for Locust and curl (None: the system's CAs).
        self.ca_bundle = ca_bundle

    @classmethod
    def from_state(cls, state: ServerState) -> TorchServeBackend:
        return cls(state.client(), Path(state.model_store), ca_bundle=state.tls_cert)

    @classmethod
    def attach(cls, inference_url: str, management_url: str, *, keys: Keys | Path | None,
               model_store: Path | None = None, metrics_url: str = "",
               ca_bundle: Path | None = None, allow_insecure_http: bool = False,
               tracking_ca_bundle: str | None = None) -> TorchServeBackend:
        """A TorchServe started elsewhere: its URLs and keys; archives are copied into
        ``model_store`` when given (a shared filesystem), else registered by URL. ``https://``
        URLs are verified against ``ca_bundle`` (else the system's CAs); the keys go over plain
        HTTP to another host only with ``allow_insecure_http`` (``ConfigError`` otherwise). The
        check of an archive before the server fetches it from the tracking server verifies that
        server against ``tracking_ca_bundle`` (MLflow's ``MLFLOW_TRACKING_SERVER_CERT_PATH``)."""
        endpoints = Endpoints(inference_url.rstrip("/"), management_url.rstrip("/"),
                              metrics_url.rstrip("/"))
        delivery: ArchiveDelivery = (ModelStoreCopy(model_store) if model_store else
                                     ArtifactUrl(verify=client_context(tracking_ca_bundle)))
        client = TorchServeClient(endpoints, keys, verify=client_context(ca_bundle),
                                  allow_insecure_http=allow_insecure_http)
        return cls(client, delivery, attached=True,
                   ca_bundle=str(ca_bundle) if ca_bundle is not None else None)

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
            + self.client.endpoints.management + f" (archives {self.delivery.description})",
            ca_bundle=self.ca_bundle)

    def set_default(self, name: str, version: str) -> None:
        self.client.set_default(name, version)

    def undeploy(self, name: str, version: str) -> None:
        self.client.unregister(name, version)

    def versions(self, name: str) -> list[VersionInfo]:
        return self.client.versions(name)

    def default_version(self, name: str) -> str | None:
        return self.client.default_version(name)

    def names(self) -> list[str]:
        return self.client.list_models()

    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        return self.client.predict(name, payload, version)

    def endpoint(self, name: str, version: str | None = None) -> str:
        return self.client.predict_url(name, version)
