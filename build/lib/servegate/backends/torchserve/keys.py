"""TorchServe's token authorisation keys: read from its ``key_file.json``, or given as that
file's JSON content (a secret of a CI job attaching to a server on another host).

TorchServe's ``POST /token`` rotates a key but does not answer with the new one: only a client
that can re-read the server's own key file may refresh. Keys given as content are never
refreshed (a refresh would lock every other client of that server out); an expired one is an
``AuthError`` that says how to provide a fresh one.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Literal, Protocol

from servegate.errors import AuthError, ConfigError, ServerNotRunning

KeyKind = Literal["management", "inference", "API"]


def parse_keys(text: str, source: str) -> dict[str, str]:
    """``{kind: key}`` from the content of a ``key_file.json`` (``{"management": {"key": ..}}``)."""
    try:
        data = json.loads(text)
        return {str(k): str(v["key"]) for k, v in data.items() if isinstance(v, dict) and "key" in v}
    except (ValueError, TypeError, AttributeError) as exc:
        raise AuthError(f"unreadable TorchServe keys ({source})", status=0,
                        server_message=type(exc).__name__) from exc


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header for ``key`` (none without token auth)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


class Keys(Protocol):
    """Where a client's keys come from."""

    #: True when a rotated key can be read back (the server's own key file).
    refreshable: bool

    def key(self, kind: KeyKind) -> str | None: ...

    def header(self, kind: KeyKind) -> dict[str, str]: ...

    def shell_expression(self, kind: KeyKind) -> str | None:
        """A shell expression printing the key (for a curl shown to a person), never the key."""


class KeyFile:
    """Reads keys from ``key_file.json``, re-reading it whenever the server rewrites it."""

    refreshable = True

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
                text = self.path.read_text(encoding="utf-8")
            except OSError as exc:
                raise AuthError("unreadable TorchServe key file", status=0,
                                server_message=str(exc)) from exc
            self._keys = parse_keys(text, str(self.path))
            self._stamp = stamp
        return self._keys.get(kind)

    def header(self, kind: KeyKind) -> dict[str, str]:
        return bearer(self.key(kind))

    def shell_expression(self, kind: KeyKind) -> str | None:
        if self.path is None:
            return None
        path = shlex.quote(str(self.path))
        return (f"$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))[\"{kind}\"][\"key\"])' "
                f"{path})")


class StaticKeys:
    """Keys given as the content of a ``key_file.json`` (from ``env_var``); never refreshed."""

    refreshable = False

    def __init__(self, content: str, env_var: str) -> None:
        self.env_var = env_var
        self._keys = parse_keys(content, f"${env_var}")
        if not {"management", "inference"} <= self._keys.keys():
            raise ConfigError(f"${env_var} must hold TorchServe's key_file.json content, with the "
                              "'management' and 'inference' keys")

    def key(self, kind: KeyKind) -> str | None:
        return self._keys.get(kind)

    def header(self, kind: KeyKind) -> dict[str, str]:
        return bearer(self.key(kind))

    def shell_expression(self, kind: KeyKind) -> str | None:
        return (f"$(python3 -c 'import json,os;print(json.loads(os.environ[\"{self.env_var}\"])"
                f"[\"{kind}\"][\"key\"])')")

    def __repr__(self) -> str:  # never the keys
        return f"StaticKeys(${self.env_var})"
