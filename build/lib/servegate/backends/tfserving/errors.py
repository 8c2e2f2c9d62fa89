"""TF Serving's error answers (REST bodies, gRPC status codes) as servegate exceptions that keep
the server's message; the HTTP equivalent of a gRPC code becomes the error's ``status``."""

from __future__ import annotations

from typing import Any

import httpx

from servegate.errors import ModelNotFound, ServerError, ServerNotRunning, ServerRequestError

#: Messages with which TF Serving answers an unknown version or label (with status 400 or 404).
NOT_FOUND_MESSAGES = ("Unrecognized servable version label", "Servable not found")

GRPC_TO_HTTP = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
                "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
                "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499,
                "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def rest_error(response: httpx.Response, action: str) -> ServerError:
    """The servegate error of a REST error answer (``ModelNotFound`` for an unknown model,
    version or label)."""
    try:
        body = response.json()
        message = str(body.get("error", body)) if isinstance(body, dict) else str(body)
    except ValueError:
        message = response.text.strip()
    status = response.status_code
    if status == 404 or message.startswith(NOT_FOUND_MESSAGES):
        return ModelNotFound(action, status=status, server_message=message)
    return ServerRequestError(action, status=status, server_message=message)


def translate_rpc_error(exc: Any, action: str, target: str) -> ServerError:
    """A ``grpc.RpcError`` as a servegate error (status = the HTTP equivalent of its code)."""
    code = exc.code().name if exc.code() is not None else "UNKNOWN"
    details = exc.details() or ""
    if code == "UNAVAILABLE" and ("connect" in details.lower() or "unreachable" in details.lower()):
        return ServerNotRunning(f"{action}: TF Serving gRPC unreachable at {target}: {details}")
    status = GRPC_TO_HTTP.get(code, 500)
    error = ModelNotFound if code == "NOT_FOUND" else ServerRequestError
    return error(action, status=status, server_message=f"{code}: {details}")
