"""How an archive reaches TorchServe: copied into a model store the server reads (a shared
filesystem), or registered by URL, fetched by the server itself from the artifact store.

Either way ``POST /models?url=`` gets what the server's ``allowed_urls`` admits: a store file
name, or a URL under the artifact store's prefix. A server deletes an archive it downloaded when
the version is unregistered, so orphans leave nothing behind in its store.

Given the sha256 recorded when the archive was built, each delivery hashes the bytes the server
will load, where it will load them (the file in its store; the URL, fetched as the server fetches
it: without our credentials) immediately before registration, and refuses a mismatch. What a
writer of the artifact store changes between that check and the server's own fetch is not seen:
copying into a store the server reads closes that gap.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol

from servegate._atomic import atomic_copy
from servegate.artifact_access import tracking_uri
from servegate.config import s3_endpoint
from servegate.errors import ConfigError, IntegrityError, ServerError
from servegate.integrity import artifact_sha256, stream_sha256
from servegate.naming import archive_file_name
from servegate.redact import redact_url
from servegate.tls import client_context

#: An archive placed in a model store: the server reads it as whichever user it runs as.
ARCHIVE_MODE = 0o644


class ArchiveDelivery(Protocol):
    """Puts an archive where the server can register it from."""

    #: For people: how archives reach this server.
    description: str

    def locate(self, archive: Path, name: str, version: str, source_uri: str | None,
               sha256: str | None = None) -> str:
        """The ``url`` to register ``archive`` (logged at ``source_uri``) with, its bytes there
        checked against ``sha256`` when given (``IntegrityError``)."""


class ModelStoreCopy:
    """Copy the archive into the server's model store (atomically); register it by file name."""

    def __init__(self, model_store: Path) -> None:
        if not Path(model_store).is_dir():
            raise ConfigError(f"model store {model_store} is not a directory")
        self.model_store = Path(model_store)
        self.description = f"copied into the model store {self.model_store}"

    def locate(self, archive: Path, name: str, version: str, source_uri: str | None,
               sha256: str | None = None) -> str:
        file_name = archive_file_name(name, version)
        target = self.model_store / file_name
        if archive.resolve() != target.resolve():
            atomic_copy(archive, target)
            # readable by the server's user, which need not be ours (a container, another
            # account on a shared filesystem); writable by us only
            target.chmod(ARCHIVE_MODE)
        if sha256 is not None:
            placed = artifact_sha256(target)
            if placed != sha256:
                target.unlink(missing_ok=True)
                raise IntegrityError(f"{name} v{version}: {target} hashes to {placed}, but {sha256} "
                                     "was recorded when it was built; removed, not registered")
        return file_name


class ArtifactUrl:
    """Register by the archive's HTTP(S) URL in the artifact store; the server downloads it."""

    description = "registered by URL from the artifact store"

    def __init__(self, tracking_uri: str | None = None, *,
                 verify: bool | str | ssl.SSLContext = True, timeout_s: float = 120.0) -> None:
        self._tracking_uri = tracking_uri
        #: TLS verification of the check's fetch (True, a context, or a CA bundle path).
        self.verify = client_context(verify) if isinstance(verify, str) else verify
        self.timeout_s = timeout_s

    def locate(self, archive: Path, name: str, version: str, source_uri: str | None,
               sha256: str | None = None) -> str:
        from servegate.artifact_urls import fetch_url

        if not source_uri:
            raise ConfigError(f"{name} v{version}: registering by URL needs the archive's artifact "
                              "URI (it was not logged to MLflow)")
        expected = archive_file_name(name, version)
        if not source_uri.rstrip("/").endswith("/" + expected):
            raise ConfigError(f"{redact_url(source_uri)} is not {expected}: the server names the archive it "
                              "downloads after the URL")
        url = fetch_url(source_uri, self._tracking_uri or tracking_uri(),
                        s3_endpoint())
        if sha256 is not None:
            served = self._fetched_sha256(url, f"{name} v{version}")
            if served != sha256:
                raise IntegrityError(f"{name} v{version}: the archive the server would fetch hashes "
                                     f"to {served}, but {sha256} was recorded when it was built; "
                                     "not registered")
        return url

    def _fetched_sha256(self, url: str, what: str) -> str:
        """sha256 of ``url`` fetched as the server fetches it: plain GET, no credentials."""
        import httpx

        try:
            with httpx.stream("GET", url, timeout=self.timeout_s, verify=self.verify,
                              follow_redirects=True) as response:
                response.raise_for_status()
                return stream_sha256(response.iter_bytes(1 << 20))
        except httpx.HTTPError as exc:
            raise ServerError(f"{what}: cannot fetch {redact_url(url)} to check it before the "
                              f"server does: {exc}") from exc
