"""TorchServe's token authorisation keys, read from its ``key_file.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from servegate.errors import AuthError, ServerNotRunning

KeyKind = Literal["management", "inference", "API"]


class KeyFile:
    """Reads keys from ``key_file.json``, re-reading it whenever the server rewrites it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: float | None = None
        self._keys: dict[str, str] = {}

    def key(self, kind: KeyKind) -> str | None:
        """The current key of that kind, or None when the server runs without token auth."""
        if self.path is None:
            return None
        try:
            stamp = self.path.stat().st_mtime
        except FileNotFoundError as exc:
            raise ServerNotRunning(f"TorchServe key file not found: {self.path}") from exc
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._keys = {k: str(v["key"]) for k, v in data.items() if "key" in v}
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise AuthError("unreadable TorchServe key file", status=0,
                                server_message=str(exc)) from exc
            self._stamp = stamp
        return self._keys.get(kind)

    def header(self, kind: KeyKind) -> dict[str, str]:
        key = self.key(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}
