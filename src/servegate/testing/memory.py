"""``MemoryBackend``: the ``ServingBackend`` interface over a dict (or a JSON file).

``hooks`` run before a method does its work (``hooks["set_default"] = fn(name, version)``), so
a test can make a step fail, or kill the process between two steps of a promotion.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servegate._atomic import atomic_write_text
from servegate.backends.base import ServerAccess, VersionInfo
from servegate.errors import ModelNotFound, ServerRequestError


class MemoryBackend:
    kind = "memory"

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._state: dict[str, dict[str, Any]] = {}
        self.hooks: dict[str, Callable[..., None]] = {}
        self.calls: list[tuple[str, ...]] = []

    # ---- state (persisted when a path is given) ------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is not None and self.path.exists():
            self._state = json.loads(self.path.read_text(encoding="utf-8"))
        return self._state

    def _save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self._state))

    def _hook(self, method: str, *args: str) -> None:
        self.calls.append((method, *args))
        if method in self.hooks:
            self.hooks[method](*args)

    # ---- ServingBackend ---------------------------------------------------------------------------
    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1,
               source_uri: str | None = None, sha256: str | None = None) -> None:
        self._hook("deploy", name, version)
        if sha256 is not None and Path(artifact).exists():
            from servegate.integrity import verify_artifact

            verify_artifact(Path(artifact), sha256, f"{name} v{version} ({artifact})")
        model = self._load().setdefault(name, {"versions": {}, "default": None})
        model["versions"][version] = {"artifact": str(artifact), "workers": workers,
                                      "source_uri": source_uri}
        if model["default"] is None:
            model["default"] = version
        self._save()

    def set_default(self, name: str, version: str) -> None:
        self._hook("set_default", name, version)
        model = self._load().get(name)
        if model is None or version not in model["versions"]:
            raise ModelNotFound(f"make {name} v{version} the default", status=404)
        model["default"] = version
        self._save()

    def undeploy(self, name: str, version: str) -> None:
        self._hook("undeploy", name, version)
        model = self._load().get(name)
        if model is None or version not in model["versions"]:
            raise ModelNotFound(f"unregister {name} v{version}", status=404)
        if model["default"] == version and len(model["versions"]) > 1:
            raise ServerRequestError(f"unregister {name} v{version}", status=400,
                                     server_message="cannot remove the default version")
        del model["versions"][version]
        if not model["versions"]:
            del self._state[name]
        self._save()

    def versions(self, name: str) -> list[VersionInfo]:
        model = self._load().get(name)
        if model is None:
            return []
        return [VersionInfo(name, v, v == model["default"], info["workers"], info["workers"])
                for v, info in sorted(model["versions"].items(), key=lambda kv: int(kv[0]))]

    def names(self) -> list[str]:
        return sorted(self._load())

    def default_version(self, name: str) -> str | None:
        model = self._load().get(name)
        return None if model is None else model["default"]

    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        self._hook("predict", name, version or "")
        return {"name": name, "version": version or self.default_version(name)}

    def endpoint(self, name: str, version: str | None = None) -> str:
        return f"memory://{name}" + (f"/{version}" if version else "")

    def ping(self) -> bool:
        return True

    def access(self) -> ServerAccess:
        return ServerAccess(inference_url="memory://", inference_key=None, key_shell=None,
                            where="in memory")

    def close(self) -> None:
        pass
