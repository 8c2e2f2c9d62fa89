"""The small interface every serving backend implements (TorchServe, TF Serving, fakes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class VersionInfo:
    """One served version of a model."""

    name: str
    version: str
    is_default: bool
    ready_workers: int
    workers: int


@dataclass(frozen=True)
class ReplicaAccess:
    """One replica's inference API, for a load generator that spreads over a fleet."""

    inference_url: str
    #: That replica's own key (TorchServe makes each server's keys at start). Not in repr.
    inference_key: str | None = field(repr=False)


@dataclass(frozen=True)
class ServerAccess:
    """How clients other than the backend reach the server's inference API (Locust, curl)."""

    #: Base URL of the inference API (TorchServe's inference address, TF Serving's REST URL).
    inference_url: str
    #: The key sent as a Bearer token, or None without token auth. Never logged (not in repr).
    inference_key: str | None = field(repr=False)
    #: A shell expression printing that key (for a curl shown to a person), or None.
    key_shell: str | None
    #: For people: which server, attached or local, and how archives reach it.
    where: str
    #: The PEM file an ``https://`` inference URL is verified against (Locust, curl's
    #: ``--cacert``), or None for the system's CAs.
    ca_bundle: str | None = None
    #: A fleet's replicas (``backends.torchserve.fleet``), which Locust spreads its requests
    #: over; empty for one server (``inference_url`` then).
    replicas: tuple[ReplicaAccess, ...] = ()


@runtime_checkable
class ServingBackend(Protocol):
    """Deploy versions, route the default, predict. Every method raises ``ServerError`` subclasses."""

    kind: str

    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1,
               source_uri: str | None = None, sha256: str | None = None) -> None:
        """Serve ``artifact`` (logged at the artifact URI ``source_uri``, from which a server
        on another host fetches it) as a NEW version of ``name`` that takes no default traffic
        yet (unless it is the first version); return once it answers predictions. With
        ``sha256``, the bytes at the exact place the server loads them from (its store, the URL
        it fetches, its model root) are hashed first: a mismatch is an ``IntegrityError`` and
        nothing is registered."""

    def set_default(self, name: str, version: str) -> None:
        """Route the default endpoint of ``name`` to ``version``."""

    def undeploy(self, name: str, version: str) -> None:
        """Stop serving ``version`` of ``name`` (never the default while others exist)."""

    def versions(self, name: str) -> list[VersionInfo]:
        """The versions of ``name`` being served (empty if none)."""

    def default_version(self, name: str) -> str | None:
        """The version the default endpoint of ``name`` routes to (None: not served)."""

    def names(self) -> list[str]:
        """The model names the server serves."""

    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        """One prediction through the standard REST endpoint; returns the decoded JSON."""

    def endpoint(self, name: str, version: str | None = None) -> str:
        """The standard REST URL of the default (or one) version."""

    def ping(self) -> bool:
        """One cheap round trip to the server (True when it answered)."""

    def access(self) -> ServerAccess:
        """How Locust and a person's curl reach the inference API."""

    def close(self) -> None:
        """Release the client's connections (the server keeps running)."""
