"""TorchServe's error answers as servegate exceptions that keep the server's message."""

from __future__ import annotations

import httpx

from servegate.errors import AuthError, ModelNotFound, ServerRequestError


def _server_message(response: httpx.Response) -> tuple[str, str]:
    """(TorchServe's exception type, its message) from an error answer."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text.strip()
    if isinstance(body, dict):
        if "error" in body and "detail" in body:  # our handlers' per-request errors
            return "", f"{body['error']}: {body['detail']}"
        return str(body.get("type", "")), str(body.get("message") or body.get("error") or body)
    return "", str(body)


def raise_for_status(response: httpx.Response, action: str) -> None:
    """Translate a TorchServe error answer into the servegate exception tree."""
    if response.is_success:
        return
    kind, message = _server_message(response)
    status = response.status_code
    if kind == "InvalidKeyException" or status == 401:
        raise AuthError(action, status=status, server_message=message)
    if status == 404 or kind == "ModelNotFoundException" or kind == "ModelVersionNotFoundException":
        raise ModelNotFound(action, status=status, server_message=message)
    raise ServerRequestError(action, status=status, server_message=message)
