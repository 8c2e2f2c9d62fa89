"""Where a model server can fetch an MLflow artifact by itself: its HTTP(S) URL.

A server on another host registers archives by URL (TorchServe's ``POST /models?url=``), so the
archive must be reachable over HTTP(S) without MLflow's client:

- ``mlflow-artifacts:/PATH`` (an ``mlflow server`` serving artifacts, whatever store is behind it:
  a directory, S3, GCS, Azure) → ``TRACKING/api/2.0/mlflow-artifacts/artifacts/PATH``;
- ``mlflow-artifacts://HOST:PORT/PATH`` → the same on that host;
- ``http(s)://`` artifact roots → as they are;
- ``s3://BUCKET/KEY`` → ``https://BUCKET.s3.amazonaws.com/KEY``, or ``ENDPOINT/BUCKET/KEY`` with
  ``MLFLOW_S3_ENDPOINT_URL`` (MinIO and other S3 stores): the server reads it with its own
  credentials (TorchServe signs S3 requests when started with ``s3_sse_kms=true``) or a bucket
  policy.

Anything else (a local directory, ``s3://`` read with the runner's credentials) cannot be
fetched by the server: ``ConfigError`` says what to configure instead.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from servegate.errors import ConfigError

ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


def fetch_url(artifact_uri: str, tracking_uri: str, s3_endpoint: str | None = None) -> str:
    """The HTTP(S) URL a server fetches ``artifact_uri`` from (see the module docstring)."""
    parts = urlsplit(artifact_uri)
    if parts.scheme in ("http", "https"):
        return artifact_uri
    if parts.scheme == "s3" and parts.netloc:
        key = quote(parts.path.lstrip("/"), safe="/")
        if s3_endpoint:
            return f"{s3_endpoint.rstrip('/')}/{parts.netloc}/{key}"
        return f"https://{parts.netloc}.s3.amazonaws.com/{key}"
    if parts.scheme == "mlflow-artifacts":
        path = quote(parts.path.lstrip("/"), safe="/")
        if parts.netloc:
            scheme = "https" if tracking_uri.startswith("https://") else "http"
            return f"{scheme}://{parts.netloc}{ARTIFACTS_API}/{path}"
        tracking = urlsplit(tracking_uri)
        if tracking.scheme not in ("http", "https"):
            raise ConfigError(f"{artifact_uri} is served by an MLflow tracking server, but "
                              f"MLFLOW_TRACKING_URI is {tracking.scheme or 'a path'}")
        base = f"{tracking.scheme}://{tracking.netloc}{tracking.path.rstrip('/')}"
        return f"{base}{ARTIFACTS_API}/{path}"
    raise ConfigError(
        f"the archive {artifact_uri} cannot be fetched by a server on another host: registering by "
        "URL needs an artifact store served over HTTP(S) (`mlflow server` serves its artifacts, "
        "whatever store is behind it), or set SERVEGATE_TORCHSERVE_MODEL_STORE to a directory "
        "the server reads, to copy archives there instead")


def artifacts_prefix(tracking_uri: str) -> str:
    """The URL prefix of every artifact an ``mlflow server`` at ``tracking_uri`` serves."""
    tracking = urlsplit(tracking_uri)
    if tracking.scheme not in ("http", "https"):
        raise ConfigError(f"{tracking_uri} is not an MLflow tracking server URL (http or https)")
    return f"{tracking.scheme}://{tracking.netloc}{tracking.path.rstrip('/')}{ARTIFACTS_API}/"


def allowed_url_pattern(prefix: str, suffix: str = ".mar") -> str:
    """A TorchServe ``allowed_urls`` regular expression: archives under ``prefix`` only (no
    query, no fragment, no ``..`` segment)."""
    if not re.match(r"^(https?|file)://", prefix):
        raise ConfigError(f"allowed URL prefix must start with http://, https:// or file://: {prefix!r}")
    if not prefix.endswith("/"):
        prefix += "/"
    return f"{re.escape(prefix)}(?!.*\\.\\./)[^?#]*{re.escape(suffix)}"
