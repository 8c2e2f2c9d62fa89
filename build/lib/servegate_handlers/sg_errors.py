"""Request-level errors of the servegate handlers.

A ``RequestError`` answers ONE request of a batch with its own 4xx/5xx status and a JSON body
``{"error": ..., "detail": ...}`` (plus the request's ``"id"`` when it sent one); the rest of the
batch is unaffected. ``as_request_error`` maps any other exception raised while reading one
request to its status (the table below); ``ModelLoadError`` stops a worker from loading (so a
broken artifact never takes traffic) and keeps its cause.

    RequestError           its own status (400 malformed, 413 too large, 422 wrong content)
    RecursionError         400 (nested too deeply)
    MemoryError            413
    ValueError, TypeError, ArithmeticError, LookupError
                           422 (content the model cannot take)
    anything else          500 (a fault of ours, not of the request)
"""

from __future__ import annotations

import http
import json


class RequestError(Exception):
    """One request could not be served; ``status`` is its HTTP status."""

    request_id: object = None  # the client's request "id", echoed in the error body

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

    def body(self, request_id: object = None) -> str:
        body: dict[str, object] = {"error": self.error, "detail": self.detail}
        if isinstance(request_id, (str, int)) and not isinstance(request_id, bool):
            body["id"] = request_id
        return json.dumps(body)


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


MAX_DETAIL_CHARS = 500


def _detail(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "..."


def as_request_error(exc: Exception, stage: str = "request") -> RequestError:
    """The ``RequestError`` that answers a request whose handling raised ``exc`` (see the table)."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, RecursionError):
        return BadRequest("nested too deeply", _detail(exc))
    if isinstance(exc, MemoryError):
        return PayloadTooLarge("too large", _detail(exc))
    if isinstance(exc, (ValueError, TypeError, ArithmeticError, LookupError)):
        return InvalidInput("invalid input", _detail(exc))
    return RequestError(500, f"{stage} failed", _detail(exc))
