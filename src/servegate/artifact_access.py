"""Which artifact and dataset URIs servegate fetches, and fetching them.

MLflow's HTTP artifact repository attaches the tracking credentials (``MLFLOW_TRACKING_USERNAME``/
``_PASSWORD``/``_TOKEN``) to whatever host an ``http(s)://`` or ``mlflow-artifacts://HOST/`` URI
names, and the URIs servegate follows were written by others: a workflow payload (``eval_data``),
a registry entry (a version's storage location, its tags), a run (the source of a logged dataset).
So each URI is resolved (``models:/`` and ``runs:/`` to where they are stored) and checked BEFORE
any request is made:

- local paths and ``file://``: read as they are;
- ``mlflow-artifacts:/PATH`` and ``http(s)://`` / ``mlflow-artifacts://`` URIs whose host and port
  are the tracking server's (``MLFLOW_TRACKING_URI``) or named by the operator in
  ``SERVEGATE_ARTIFACT_HOSTS``: fetched through MLflow;
- cloud stores (``s3://``, ``gs://``, ...): fetched with the cloud's own credentials, which only
  its own endpoints receive;
- anything else: ``SourceError`` naming the URI and the forms that are accepted.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from servegate.errors import SourceError

#: Schemes fetched with a cloud provider's own credentials (sent to that provider only).
CLOUD_SCHEMES = ("s3", "gs", "wasbs", "abfss", "hdfs")
ACCEPTED_FORMS = (
    "a local path or file://, runs:/RUN_ID/PATH, models:/NAME/VERSION[/PATH], models:/NAME@ALIAS, "
    "mlflow-artifacts:/PATH, http(s):// or mlflow-artifacts:// on the tracking server's host "
    "(or a host in SERVEGATE_ARTIFACT_HOSTS), or a cloud store (" + ", ".join(
        f"{s}://" for s in CLOUD_SCHEMES) + ")")
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: models:/ -> runs:/ -> storage: more hops than this is a loop someone wrote on purpose.
_MAX_HOPS = 4


def origin(url: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) or mlflow-artifacts URL, lower-cased, userinfo dropped; None
    when it names no host."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme == "mlflow-artifacts":  # MLflow speaks the tracking server's scheme to it
        scheme = "https" if tracking_uri().startswith("https://") else "http"
    return parts.hostname.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def trusted_origins() -> set[tuple[str, int]]:
    """The tracking server's (host, port), and the operator's ``SERVEGATE_ARTIFACT_HOSTS``."""
    from servegate.config import artifact_hosts

    trusted = set()
    tracking = tracking_uri()
    if urlsplit(tracking).scheme in ("http", "https") and (own := origin(tracking)):
        trusted.add(own)
    for host in artifact_hosts():
        entry = host if "://" in host else f"https://{host}"
        if (allowed := origin(entry)) is not None:
            trusted.add(allowed)
            if "://" not in host and urlsplit(entry).port is None:
                trusted.add((allowed[0], _DEFAULT_PORTS["http"]))
    return trusted


def tracking_uri() -> str:
    """The tracking server (or store) MLflow talks to."""
    import mlflow

    return str(mlflow.get_tracking_uri())


def _refused(uri: str, what: str, why: str) -> SourceError:
    from servegate.redact import redact_url

    return SourceError(f"{what}: refusing {redact_url(uri)}: {why}. Accepted: {ACCEPTED_FORMS}")


def _resolve_once(uri: str) -> str | None:
    """Where a ``models:/`` or ``runs:/`` URI is stored (None for any other URI)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "models":
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        base, path = ModelsArtifactRepository.split_models_uri(uri)
        underlying = ModelsArtifactRepository.get_underlying_uri(base)
    elif scheme == "runs":
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        underlying, path = RunsArtifactRepository.get_underlying_uri(uri), ""
    else:
        return None
    return f"{underlying.rstrip('/')}/{path}" if path else underlying


def storage_uri(uri: str, *, what: str) -> str:
    """Where ``uri`` is stored, after checking every hop (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    current = uri
    for _ in range(_MAX_HOPS):
        check_direct(current, what=what)
        try:
            resolved = _resolve_once(current)
        except (MlflowException, OSError, ValueError) as exc:
            raise SourceError(f"cannot load {current} from MLflow ({what}: resolving where it is "
                              f"stored): {exc}") from exc
        if resolved is None:
            return current
        current = resolved
    raise _refused(uri, what, f"it resolves through more than {_MAX_HOPS} models:/ or runs:/ hops")


def check_direct(uri: str, *, what: str) -> None:
    """Refuse ``uri`` unless it is local, a cloud store, ``models:/``/``runs:/`` (resolved by the
    caller) or served by a trusted host; never makes a request."""
    if "\\" in uri or any(ord(c) < 0x20 for c in uri):
        raise _refused(uri, what, "it holds a backslash or a control character")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise _refused(uri, what, "a file:// URI must not name a host")
        return
    if scheme in ("models", "runs"):
        if parts.netloc:
            raise _refused(uri, what, f"a {scheme}:// URI naming a host or profile is not followed")
        if ".." in parts.path.split("/"):
            raise _refused(uri, what, "it holds a '..' segment")
        return
    if scheme in CLOUD_SCHEMES:
        return
    if scheme == "mlflow-artifacts" and not parts.netloc:
        if urlsplit(tracking_uri()).scheme not in ("http", "https"):
            raise _refused(uri, what, "mlflow-artifacts:/ needs an http(s) MLFLOW_TRACKING_URI "
                                      "(an `mlflow server` serving artifacts)")
        return
    if scheme in ("http", "https", "mlflow-artifacts"):
        host = origin(uri)
        if host is None or host not in trusted_origins():
            raise _refused(uri, what, "its host is neither the tracking server nor one named in "
                                      "SERVEGATE_ARTIFACT_HOSTS, and MLflow would send it the "
                                      "tracking credentials")
        return
    raise _refused(uri, what, f"unsupported scheme {scheme!r}")


def download(uri: str, dst: Path, *, what: str) -> Path:
    """Download ``uri`` (a file or a directory) into ``dst`` through MLflow once every hop is
    checked; any failure is a ``SourceError`` naming the URI."""
    import mlflow

    storage_uri(uri, what=what)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as exc:  # MLflow raises MlflowException, OSError, ValueError, requests' errors
        from servegate.redact import redact_url

        raise SourceError(f"{what}: cannot download {redact_url(uri)}: {type(exc).__name__}: "
                          f"{exc}. Accepted: {ACCEPTED_FORMS}") from exc
