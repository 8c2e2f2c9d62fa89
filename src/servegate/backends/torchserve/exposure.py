"""Whom a local TorchServe faces: the refusal to serve plain HTTP on a network address without
the operator's opt-in, what such an address exposes, a certificate and key TorchServe can load,
and the Java trust store of the CAs it trusts when it fetches archives over https."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from servegate.config import TorchServeSettings
from servegate.errors import ConfigError, ServerStartError
from servegate.tls import check_server_pair, is_loopback

#: The Java trust store's password: integrity only (the store holds public certificates); the
#: command line shows it anyway.
TRUSTSTORE_PASSWORD = "servegate-trust"  # noqa: S105 (not a secret)
TRUSTSTORE = "truststore.p12"


def build_truststore(ca_bundle: Path, store: Path) -> int:
    """Write every certificate of the PEM ``ca_bundle`` into the PKCS#12 trust store ``store``
    with the JDK's keytool; the number of certificates (``ConfigError`` when none)."""
    keytool = shutil.which("keytool")
    if keytool is None:
        raise ServerStartError("--trust-ca needs the JDK's keytool on PATH (openjdk-17-jdk-headless)")
    try:
        blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                            ca_bundle.read_text(encoding="ascii"), re.S)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"CA bundle {ca_bundle} is not a readable PEM file: {exc}") from exc
    if not blocks:
        raise ConfigError(f"CA bundle {ca_bundle} holds no PEM certificate")
    store.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for index, block in enumerate(blocks):
            pem = Path(tmp) / f"ca{index}.pem"
            pem.write_text(block + "\n", encoding="ascii")
            done = subprocess.run(
                [keytool, "-importcert", "-noprompt", "-alias", f"ca{index}", "-file", str(pem),
                 "-keystore", str(store), "-storetype", "PKCS12",
                 "-storepass", TRUSTSTORE_PASSWORD], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise ConfigError(f"CA bundle {ca_bundle}: certificate {index + 1} was refused by "
                                  f"keytool: {(done.stdout + done.stderr).strip()[-300:]}")
    return len(blocks)


#: Addresses meaning every interface.
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]")


def exposure(settings: TorchServeSettings) -> str:
    """What other hosts reach when the server listens on ``settings.host`` (empty on loopback)."""
    if is_loopback(settings.host):
        return ""
    where = "every interface" if settings.host in WILDCARD_HOSTS else settings.host
    transport = ("over TLS" if settings.tls_cert is not None else
                 "over PLAIN HTTP: keys, requests and answers readable by anyone on the path")
    return (f"TorchServe listens on {where}, {transport}: the inference and management APIs "
            "(token auth: the keys of key_file.json), gRPC inference and management (the same "
            "keys), and the metrics API (no key: model names, request counts and latencies)")


def check_exposure(settings: TorchServeSettings) -> None:
    """``ConfigError`` when a network address would be served without TLS and without the
    operator's ``insecure_http`` opt-in, or when the certificate and key are unusable."""
    if settings.tls_cert is not None and settings.tls_key is not None:
        check_server_pair(settings.tls_cert, settings.tls_key)
        if settings.host in WILDCARD_HOSTS:
            raise ConfigError(f"with TLS, --host must be the address or name the certificate names "
                              f"(clients verify it), not the wildcard {settings.host}")
    if not is_loopback(settings.host) and settings.tls_cert is None and not settings.insecure_http:
        raise ConfigError(f"refusing to serve plain HTTP on {settings.host}: {exposure(settings)}. "
                          "Give --tls-cert and --tls-key (https), or --insecure-http on a network "
                          "you trust")
