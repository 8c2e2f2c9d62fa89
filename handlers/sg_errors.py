"""Request-level errors of the servegate handlers.

A ``RequestError`` answers ONE request of a batch with its own 4xx/5xx status and a JSON body
``{"error": ..., "detail": ...}``; the rest of the batch is unaffected. ``ModelLoadError`` stops a
worker from loading (so a broken artifact never takes traffic) and keeps its cause.
"""

from __future__ import annotations

import http
import json


class RequestError(Exception):
    """One request could not be served; ``status`` is its HTTP status."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(f"{status} {error}: {detail}" if detail else f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail

    @property
    def phrase(self) -> str:
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"

    def body(self) -> str:
        return json.dumps({"error": self.error, "detail": self.detail})


class BadRequest(RequestError):
    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(400, error, detail)


class PayloadTooLarge(RequestError):
    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(413, error, detail)


class InvalidInput(RequestError):
    """Well-formed request whose content cannot be fed to the model (shape, dtype, NaN...)."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(422, error, detail)


class ModelLoadError(RuntimeError):
    """The archive's model could not be loaded or warmed up."""
