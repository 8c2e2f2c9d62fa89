"""Transport security of the servers servegate reaches over a network.

- ``is_loopback``: whether an address stays on this host (``127.0.0.0/8``, ``::1``,
  ``localhost``); everything else, ``0.0.0.0`` included, is a network.
- ``client_context``: the TLS context a client verifies a server with: a CA bundle (an attached
  server), or a local server's own certificate, pinned (trusted as it is, whoever signed it,
  and still checked against the host name or IP address).
- ``require_private_channel``: servegate never sends a key over plain HTTP to an address off
  this host unless the operator opted in (``SERVEGATE_ALLOW_INSECURE_HTTP``); the refusal says
  what to do instead.
- ``check_server_pair``: a certificate and key TorchServe can load: PEM files, an RSA key in
  PKCS#8 (its HTTP frontend reads RSA keys only; its gRPC servers read PKCS#8 only).

Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from servegate.errors import ConfigError

#: The opt-in that lets keys travel over plain HTTP to another host.
ALLOW_INSECURE_HTTP_ENV = "SERVEGATE_ALLOW_INSECURE_HTTP"
#: DER of the rsaEncryption OID (1.2.840.113549.1.1.1), as a PKCS#8 RSA key carries it.
_RSA_OID = bytes.fromhex("06092a864886f70d010101")
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


def is_loopback(host: str | None) -> bool:
    """``host`` (an address or a name, brackets allowed) never leaves this machine."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(url: str) -> str:
    """The host of ``url`` (no port, no userinfo), or ``""``."""
    return urlsplit(url).hostname or ""


def client_context(ca_bundle: str | Path | None) -> ssl.SSLContext | bool:
    """How a client verifies a server: ``True`` (the system's CAs) without a bundle, else a
    context trusting only the certificates of ``ca_bundle``: CAs, or a server's own certificate
    (pinned: ``VERIFY_X509_PARTIAL_CHAIN``, Python 3.13's default). Host names and IP addresses
    are always checked against the certificate."""
    if ca_bundle is None or str(ca_bundle) == "":
        return True
    path = Path(ca_bundle)
    try:
        context = ssl.create_default_context(cafile=str(path))
    except FileNotFoundError as exc:
        raise ConfigError(f"CA bundle {path} does not exist") from exc
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"CA bundle {path} holds no usable PEM certificate: {exc}") from exc
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def require_private_channel(url: str, what: str, *, allow_insecure: bool) -> None:
    """``ConfigError`` when ``what`` (a key) would go over plain HTTP to another host, unless
    the operator allowed it. ``https://`` and loopback addresses always pass."""
    parts = urlsplit(url)
    if parts.scheme == "https" or is_loopback(parts.hostname) or allow_insecure:
        return
    raise ConfigError(
        f"refusing to send {what} over plain HTTP to {parts.hostname}:{parts.port or 80}, where "
        "anyone on the path can read it: serve TorchServe over TLS (`servegate serve start "
        "--tls-cert ... --tls-key ...`) and give its https:// URLs (with "
        "SERVEGATE_TORCHSERVE_CA_BUNDLE for a private CA), or, on a network you trust, set "
        f"{ALLOW_INSECURE_HTTP_ENV}=1")


def _pem_blocks(path: Path, what: str) -> list[tuple[str, bytes]]:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not a readable PEM file: {exc}") from exc
    blocks = []
    for kind, body in _PEM_BLOCK.findall(text):
        try:
            blocks.append((kind, base64.b64decode("".join(body.split()), validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{what} {path}: a {kind} block is not base64") from exc
    return blocks


def check_server_pair(cert: Path, key: Path) -> None:
    """``ConfigError`` unless ``cert`` holds PEM certificates and ``key`` an unencrypted RSA key
    in PKCS#8 PEM, the form TorchServe 0.12 loads for both HTTP and gRPC."""
    if not any(kind == "CERTIFICATE" for kind, _ in _pem_blocks(cert, "TLS certificate")):
        raise ConfigError(f"TLS certificate {cert} holds no PEM CERTIFICATE block")
    keys = _pem_blocks(key, "TLS key")
    convert = (f"convert it with `openssl pkcs8 -topk8 -nocrypt -in {key} -out key.pk8.pem` "
               "(TorchServe reads unencrypted RSA keys in PKCS#8 PEM)")
    if not keys:
        raise ConfigError(f"TLS key {key} holds no PEM private key")
    kind, der = keys[0]
    if kind == "ENCRYPTED PRIVATE KEY":
        raise ConfigError(f"TLS key {key} is encrypted: TorchServe cannot read it; {convert}")
    if kind != "PRIVATE KEY":
        raise ConfigError(f"TLS key {key} is a {kind}: {convert}")
    if _RSA_OID not in der[:32]:
        raise ConfigError(f"TLS key {key} is not an RSA key: TorchServe 0.12 loads RSA keys only "
                          "(make one with `openssl req -newkey rsa:2048 ...`)")
