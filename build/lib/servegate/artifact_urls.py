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
fetched by the server: ``ConfigError`` says what to configure instead. No URL made here carries a
user name or password (``without_userinfo``).

The server admits such URLs through ``allowed_urls``: ``allowed_url_pattern`` writes one pattern
per prefix that TorchServe's Java check cannot be talked around (tested under Java itself:
``tests/java/AllowedUrls.java``).
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from servegate.errors import ConfigError

ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


def fetch_url(artifact_uri: str, tracking_uri: str, s3_endpoint: str | None = None) -> str:
    """The HTTP(S) URL a server fetches ``artifact_uri`` from (see the module docstring), never
    with a user name or password in it (see ``without_userinfo``)."""
    parts = urlsplit(artifact_uri)
    if parts.scheme in ("http", "https"):
        return without_userinfo(artifact_uri)
    if parts.scheme == "s3" and parts.netloc:
        key = quote(parts.path.lstrip("/"), safe="/")
        if s3_endpoint:
            return without_userinfo(f"{s3_endpoint.rstrip('/')}/{_host(parts)}/{key}")
        return f"https://{_host(parts)}.s3.amazonaws.com/{key}"
    if parts.scheme == "mlflow-artifacts":
        path = quote(parts.path.lstrip("/"), safe="/")
        if parts.netloc:
            scheme = "https" if tracking_uri.startswith("https://") else "http"
            return f"{scheme}://{_host(parts)}{ARTIFACTS_API}/{path}"
        tracking = urlsplit(tracking_uri)
        if tracking.scheme not in ("http", "https"):
            raise ConfigError(f"{redact_userinfo(artifact_uri)} is served by an MLflow tracking "
                              f"server, but MLFLOW_TRACKING_URI is {tracking.scheme or 'a path'}")
        base = f"{tracking.scheme}://{_host(tracking)}{tracking.path.rstrip('/')}"
        return f"{base}{ARTIFACTS_API}/{path}"
    raise ConfigError(
        f"the archive {redact_userinfo(artifact_uri)} cannot be fetched by a server on another "
        "host: registering by URL needs an artifact store served over HTTP(S) (`mlflow server` "
        "serves its artifacts, whatever store is behind it), or set "
        "SERVEGATE_TORCHSERVE_MODEL_STORE to a directory the server reads, to copy archives there "
        "instead")


def artifacts_prefix(tracking_uri: str) -> str:
    """The URL prefix of every artifact an ``mlflow server`` at ``tracking_uri`` serves (without
    the tracking URI's user name and password)."""
    tracking = urlsplit(tracking_uri)
    if tracking.scheme not in ("http", "https"):
        raise ConfigError(f"{redact_userinfo(tracking_uri)!r} is not an MLflow tracking server URL "
                          "(http or https)")
    return f"{tracking.scheme}://{_host(tracking)}{tracking.path.rstrip('/')}{ARTIFACTS_API}/"


# ---- credentials in URLs ---------------------------------------------------------------------
def _host(parts: SplitResult) -> str:
    """``parts``' authority without its userinfo (``host[:port]``)."""
    return parts.netloc.rpartition("@")[2]


def has_userinfo(url: str) -> bool:
    """Whether ``url`` names a user (and maybe a password) before its host."""
    return "@" in urlsplit(url).netloc


def without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``.

    Credentials inside ``MLFLOW_TRACKING_URI`` are for servegate's own MLflow client: a URL
    derived from it is sent to a model server, logged by httpx and written to
    ``config.properties``, so it never carries them. A server that must authenticate to the
    artifact store does so with its own credentials (or the store admits it by network policy);
    servegate's client prefers ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``.
    """
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=_host(parts))) if "@" in parts.netloc else url


def redact_userinfo(url: str) -> str:
    """``url`` for messages and logs: its userinfo, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"***@{_host(parts)}"))


# ---- TorchServe's allowed_urls ---------------------------------------------------------------
#: What a URL may hold after an allowed prefix: no "%" (Java's file: handler and HTTP servers
#: decode it), no backslash, no line terminator, query, fragment, parameter or userinfo.
PATH_CHARS = "A-Za-z0-9._~/-"
#: What a prefix may hold besides letters and digits (each escaped); refused: ``,`` (TorchServe
#: splits ``allowed_urls`` on it), ``%``, backslash, ``@`` (userinfo), ``?``, ``#``, whitespace,
#: control and non-ASCII characters, and what a URL never holds unencoded.
_PREFIX_PUNCTUATION = frozenset(":/._~-[]!$&'()*+;=")
#: Admits nothing: the value of ``allowed_urls`` when no prefix is allowed.
MATCH_NOTHING = "(?!)"


def allowed_url_pattern(prefix: str, suffix: str = ".mar") -> str:
    """A TorchServe ``allowed_urls`` regular expression that admits archives under ``prefix``
    only, however Java reads it.

    TorchServe 0.12 tests ``Pattern.compile(p, CASE_INSENSITIVE).matcher(url).matches()`` and
    then refuses only a literal ``..``; Java's ``file:`` handler decodes ``%2e%2e%2f``. So the
    pattern is case-sensitive (``(?-i:...)``), the prefix is matched literally (every character
    but letters and digits escaped with a backslash, which Java and Python read the same way), and
    the rest of the URL is made of ``PATH_CHARS`` with no ``..`` anywhere. A prefix that cannot be
    written so is refused with ``ConfigError`` naming it (its password hidden).
    """
    problem = _unexpressible(prefix)
    if problem:
        raise ConfigError(f"allowed URL prefix {redact_userinfo(prefix)!r} cannot be admitted "
                          f"safely by TorchServe's allowed_urls: {problem}")
    if not prefix.endswith("/"):
        prefix += "/"
    rest = f"(?![{PATH_CHARS}]*\\.\\.)[{PATH_CHARS}]*"
    return f"(?-i:{_java_literal(prefix)}{rest}{_java_literal(suffix)})"


def _unexpressible(prefix: str) -> str | None:
    """Why ``prefix`` cannot be an allowed_urls prefix, or None."""
    if not re.match(r"(https?|file)://", prefix):
        return "it must start with http://, https:// or file:// (in lower case)"
    odd = sorted({c for c in prefix if not (c.isascii() and c.isalnum()) and c not in _PREFIX_PUNCTUATION})
    if odd:
        return (f"it holds {', '.join(map(ascii, odd))}; a prefix may hold letters, digits and "
                f"{''.join(sorted(_PREFIX_PUNCTUATION))} only (no ',', '%', '\\', '@' user name, "
                "'?', '#', space or non-ASCII)")
    parts = urlsplit(prefix)
    if ".." in prefix:
        return "it holds '..' (TorchServe refuses every URL that does)"
    if parts.scheme == "file" and parts.netloc:
        return "a file:// prefix names no host (file:///path/; Java fetches file://HOST/ over FTP)"
    if parts.scheme != "file" and not parts.hostname:
        return "it names no host"
    try:
        _ = parts.port  # ValueError unless a number from 0 to 65535
    except ValueError:
        return "its port is not a number from 0 to 65535"
    return None


def _java_literal(text: str) -> str:
    """``text`` as a regex matching exactly it, in Java and Python alike: letters and digits as
    they are, every other (ASCII, non-space) character after a backslash. No ``\\Q...\\E``
    (a ``\\E`` inside would end it early)."""
    assert text.isascii() and text.isprintable() and " " not in text and "," not in text, text
    return "".join(c if c.isalnum() else "\\" + c for c in text)
