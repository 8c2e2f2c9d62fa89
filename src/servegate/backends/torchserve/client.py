"""A client of TorchServe's management and inference REST APIs (token auth aware).

TorchServe's error answers become servegate exceptions that keep the server's message
(``errors.py``); transport failures become ``ServerNotRunning`` with the cause attached.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from servegate.artifact_urls import has_userinfo, redact_userinfo
from servegate.backends.base import VersionInfo
from servegate.backends.torchserve.errors import raise_for_status
from servegate.backends.torchserve.keys import KeyFile, KeyKind, Keys
from servegate.errors import (
    AuthError,
    ConfigError,
    ModelNotFound,
    ServerNotRunning,
    ServerRequestError,
    ServerStartError,
)
from servegate.naming import segment, validate_name, validate_version
from servegate.tls import require_private_channel

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Endpoints:
    inference: str
    management: str
    metrics: str


def _model_path(name: str, version: str | None = None) -> str:
    """``/models/NAME[/VERSION]``, validated and quoted."""
    path = f"/models/{segment(validate_name(name))}"
    return path + (f"/{segment(validate_version(version))}" if version else "")


class TorchServeClient:
    """Management + inference calls against one TorchServe."""

    kind = "torchserve"

    def __init__(self, endpoints: Endpoints, keys: Keys | Path | None, *,
                 timeout: float = 120.0, verify: ssl.SSLContext | bool = True,
                 allow_insecure_http: bool = False) -> None:
        """``verify``: how https servers are verified (``tls.client_context``). Keys never go
        over plain HTTP to another host unless ``allow_insecure_http`` (``ConfigError``)."""
        if keys is not None:  # None: no key to send (a server without token auth)
            for url, kind in ((endpoints.inference, "inference key"),
                              (endpoints.management, "management key")):
                require_private_channel(url, f"TorchServe's {kind}",
                                        allow_insecure=allow_insecure_http)
        self.endpoints = endpoints
        self.keys: Keys = keys if keys is not None and not isinstance(keys, Path) else KeyFile(keys)
        #: The TLS verification of this client (Locust and curl are told the same CA bundle).
        self.verify = verify
        self._http = httpx.Client(timeout=timeout, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TorchServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ---------------------------------------------------------------------------
    def _request(self, method: str, url: str, kind: KeyKind, action: str, **kwargs: Any) -> httpx.Response:
        caller_headers = dict(kwargs.pop("headers", None) or {})  # kept for the retry too
        for attempt in (1, 2):
            headers = self.keys.header(kind) | caller_headers
            try:
                response = self._http.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                raise ServerNotRunning(f"{action}: TorchServe unreachable at {url}: {exc}") from exc
            try:
                raise_for_status(response, action)
            except AuthError as exc:
                if not self.keys.refreshable and self.keys.key(kind) is not None:
                    raise AuthError(
                        f"{action}: TorchServe refused the {kind} key given to servegate (keys "
                        "given as content are never refreshed: give the server's current key_file.json, "
                        "and run long-lived servers with a token_expiration_min longer than a run)",
                        status=exc.status, server_message=exc.server_message) from exc
                if attempt == 2 or kind == "API" or self.keys.key("API") is None:
                    raise
                self.refresh_key(kind)  # expired token: ask for a new one, retry once
                continue
            return response
        raise AssertionError("unreachable")

    def _management(self, method: str, path: str, action: str, **kwargs: Any) -> httpx.Response:
        return self._request(method, f"{self.endpoints.management}{path}", "management", action, **kwargs)

    def refresh_key(self, kind: KeyKind) -> None:
        """Ask TorchServe for a new key of that kind (its keys expire; the API key does not)."""
        self._request("POST", f"{self.endpoints.management}/token", "API",
                      f"refresh the {kind} key", params={"type": kind})

    # ---- management --------------------------------------------------------------------------
    def register(self, archive: str, *, initial_workers: int = 1, timeout_s: int = 300) -> None:
        """Register an archive of the model store (by file name) and start its workers."""
        if has_userinfo(archive):  # it would reach the server, its logs and httpx's INFO log
            raise ConfigError(f"refusing to register {redact_userinfo(archive)}: a URL given to "
                              "the server must not carry a user name or password")
        self._management(
            "POST", "/models", f"register {archive}",
            params={"url": archive, "initial_workers": initial_workers, "synchronous": "true"},
            timeout=timeout_s,
        )

    def scale(self, name: str, version: str, *, min_workers: int, max_workers: int | None = None,
              timeout_s: int = 300) -> None:
        params = {"min_worker": min_workers, "max_worker": max_workers or min_workers,
                  "synchronous": "true"}
        self._management("PUT", _model_path(name, version), f"scale {name} v{version}",
                         params=params, timeout=timeout_s)

    def set_default(self, name: str, version: str) -> None:
        self._management("PUT", f"{_model_path(name, version)}/set-default",
                         f"make {name} v{version} the default")

    def unregister(self, name: str, version: str) -> None:
        self._management("DELETE", _model_path(name, version), f"unregister {name} v{version}")

    def describe(self, name: str, version: str | None = "all") -> list[dict[str, Any]]:
        """Describe ``version`` of ``name`` ("all" versions; None: the default one)."""
        path = _model_path(name, version if version and version != "all" else None)
        if version == "all":
            path += "/all"
        response = self._management("GET", path, f"describe {name}")
        body = response.json()
        return body if isinstance(body, list) else [body]

    def list_models(self) -> list[str]:
        names: list[str] = []
        token: str | None = None
        while True:
            params = {"limit": 100} | ({"next_page_token": token} if token else {})
            body = self._management("GET", "/models", "list models", params=params).json()
            names += [m["modelName"] for m in body.get("models", [])]
            token = body.get("nextPageToken")
            if not token:
                return names

    def versions(self, name: str) -> list[VersionInfo]:
        try:
            described = self.describe(name)
        except ModelNotFound:
            return []
        default = self.default_version(name)
        return [
            VersionInfo(
                name=name,
                version=str(d["modelVersion"]),
                is_default=str(d["modelVersion"]) == default,
                ready_workers=sum(1 for w in d.get("workers", []) if w.get("status") == "READY"),
                workers=len(d.get("workers", [])),
            )
            for d in described
        ]

    def default_version(self, name: str) -> str | None:
        try:
            described = self.describe(name, None)
        except ModelNotFound:
            return None
        return str(described[0]["modelVersion"]) if described else None

    def wait_ready(self, name: str, version: str, *, min_ready: int = 1, timeout_s: float = 180) -> None:
        """Block until ``version`` has ``min_ready`` READY workers (``/ping`` is not readiness)."""
        deadline = time.monotonic() + timeout_s
        last = "not described yet"
        while time.monotonic() < deadline:
            try:
                info = next((v for v in self.versions(name) if v.version == version), None)
                if info is not None and info.ready_workers >= min_ready:
                    return
                last = f"{info.ready_workers if info else 0} READY workers"
            except ServerNotRunning as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ServerStartError(f"{name} v{version} not ready after {timeout_s:.0f}s ({last})")

    # ---- inference ---------------------------------------------------------------------------
    def predict_url(self, name: str, version: str | None = None) -> str:
        suffix = f"/{segment(validate_version(version))}" if version else ""
        return f"{self.endpoints.inference}/predictions/{segment(validate_name(name))}{suffix}"

    def predict_raw(self, name: str, body: bytes, version: str | None = None,
                    content_type: str = "application/json") -> httpx.Response:
        """POST raw bytes; the answer is returned whatever its status (for tests and gates)."""
        headers = self.keys.header("inference") | {"Content-Type": content_type}
        try:
            return self._http.post(self.predict_url(name, version), content=body, headers=headers)
        except httpx.TransportError as exc:
            raise ServerNotRunning(f"predict {name}: TorchServe unreachable: {exc}") from exc

    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        """One prediction from a JSON-able payload; raises on any non-2xx answer."""
        response = self._request(
            "POST", self.predict_url(name, version), "inference", f"predict {name}",
            content=json.dumps(payload).encode(), headers=dict(JSON_HEADERS),
        )
        return response.json()

    def health(self) -> None:
        """``/ping`` with the inference key (token auth covers it); raises why it failed."""
        self._request("GET", f"{self.endpoints.inference}/ping", "inference", "ping", timeout=5)

    def ping(self) -> bool:
        try:
            self.health()
        except (ServerNotRunning, ServerRequestError):
            return False
        return True

    def metrics_text(self) -> str:
        try:
            response = self._http.get(f"{self.endpoints.metrics}/metrics", timeout=10)
        except httpx.TransportError as exc:
            raise ServerNotRunning(f"TorchServe metrics unreachable: {exc}") from exc
        raise_for_status(response, "read metrics")
        return response.text
