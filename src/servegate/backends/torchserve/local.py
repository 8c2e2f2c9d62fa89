"""Start, find and stop a local TorchServe in its own working directory.

Everything the server writes stays in that directory: ``config.properties`` rendered from
``serving_configs/torchserve``, ``key_file.json``, ``logs/``, the pid file and Java's temp files.
The server runs in its own process group, so stopping it leaves no worker behind.
"""

from __future__ import annotations

import os
import ssl
import string
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath

import httpx

from servegate._atomic import atomic_write_text
from servegate._resources import serving_configs_dir
from servegate.backends._local import LocalServer
from servegate.backends._process import (
    StopOutcome,
    alive,
    free_port,
    identity_mismatch,
    stop_recorded,
)
from servegate.backends.torchserve.client import Endpoints, TorchServeClient
from servegate.backends.torchserve.exposure import (
    TRUSTSTORE,
    TRUSTSTORE_PASSWORD,
    build_truststore,
    check_exposure,
)
from servegate.config import TorchServeSettings, inherited_environment
from servegate.errors import ServerError, ServerNotRunning, ServerStartError
from servegate.tls import client_context

KEY_FILE = "key_file.json"
#: Answers (embeddings of a full batch as JSON) may be larger than requests.
MAX_RESPONSE_SIZE = 8 << 20


@dataclass(frozen=True)
class ServerState:
    """What ``server.json`` records of a running local server."""

    pid: int
    workdir: str
    model_store: str
    inference: str
    management: str
    metrics: str
    key_file: str | None
    #: The launcher's start time and command line, checked before anything is signalled
    #: (None in state files written before they were recorded).
    create_time: float | None = None
    cmdline: list[str] | None = None
    #: The server's own certificate (https): its clients here pin it.
    tls_cert: str | None = None
    #: The operator opted in to plain HTTP on a network address (``--insecure-http``).
    insecure_http: bool = False
    #: What else it was started with (to say which options a later ``start`` did not apply).
    allowed_url_prefixes: list[str] | None = None
    token_expiration_min: float | None = None
    trust_ca: str | None = None

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.inference, self.management, self.metrics)

    def client(self, timeout: float = 120.0) -> TorchServeClient:
        """A client of this server: its certificate pinned when it serves https."""
        return TorchServeClient(self.endpoints, Path(self.key_file) if self.key_file else None,
                                timeout=timeout, verify=client_context(self.tls_cert),
                                allow_insecure_http=self.insecure_http)


def render_config(settings: TorchServeSettings, ports: dict[str, int], model_store: PurePath, *,
                  config_dir: PurePath | None = None, gpus: int | None = None) -> str:
    """``config.properties`` from the template (loopback, token auth, ``allowed_urls``), and
    the host's GPUs as ``number_of_gpu`` (0 on a CPU-only host).

    For a server elsewhere (a container), ``model_store`` and ``config_dir`` (where
    ``log4j2.xml`` and ``metrics.yaml`` are; default: the templates' own directory) are paths
    there, and ``gpus`` its GPU count."""
    from servegate.devices import gpu_count

    templates = serving_configs_dir() / "torchserve"
    template = string.Template((templates / "config.properties").read_text(encoding="utf-8"))
    store = model_store.resolve() if isinstance(model_store, Path) else model_store
    configs = config_dir if config_dir is not None else templates
    return template.substitute(
        host=settings.host,
        scheme=settings.scheme,
        trust_vmargs=trust_vmargs(settings, Path(model_store).parent),
        inference_port=ports["inference"],
        management_port=ports["management"],
        metrics_port=ports["metrics"],
        grpc_inference_port=ports["grpc_inference"],
        grpc_management_port=ports["grpc_management"],
        model_store=store,
        allowed_urls=allowed_urls(settings),
        metrics_config=configs / "metrics.yaml",
        job_queue_size=100,
        max_request_size=settings.max_request_size,
        max_response_size=MAX_RESPONSE_SIZE,
        log4j_config=configs / "log4j2.xml",
    ) + (f"token_expiration_min={settings.token_expiration_min:g}\n"
         if settings.token_expiration_min else "") \
        + f"number_of_gpu={gpu_count() if gpus is None else gpus}\n" + tls_properties(settings)


def tls_properties(settings: TorchServeSettings) -> str:
    """TorchServe's own TLS: its certificate and key for the HTTP addresses (``https://``) and
    for gRPC (``enable_grpc_ssl``); nothing without a certificate."""
    if settings.tls_cert is None or settings.tls_key is None:
        return ""
    cert = _properties_value(str(settings.tls_cert.resolve()))
    key = _properties_value(str(settings.tls_key.resolve()))
    return f"certificate_file={cert}\nprivate_key_file={key}\nenable_grpc_ssl=true\n"


def trust_vmargs(settings: TorchServeSettings, workdir: Path) -> str:
    """JVM options making ``<workdir>/truststore.p12`` (built from ``trust_ca`` at launch) the
    only CAs the server trusts when it fetches archives over https; empty without ``trust_ca``."""
    if settings.trust_ca is None:
        return ""
    store = _properties_value(str((workdir / TRUSTSTORE).resolve()))
    return (f" -Djavax.net.ssl.trustStore={store} -Djavax.net.ssl.trustStoreType=PKCS12"
            f" -Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}")


def allowed_urls(settings: TorchServeSettings) -> str:
    """``allowed_urls`` as written in ``config.properties``: archives under each allowed URL
    prefix (``artifact_urls.allowed_url_pattern``), and no other URL.

    No ``file://`` URL of the model store is admitted: its archives are registered by file name,
    which TorchServe never matches against ``allowed_urls``, and a ``file://`` URL of an archive
    already in the store answers 500 ("already exists"), so such a pattern could only ever admit
    a way out of the store (``%2e%2e%2f``). Java reads the file as ISO-8859-1 properties with
    backslash escapes and splits the value on ``,``: the patterns are ASCII without commas, and
    every backslash is doubled.
    """
    from servegate.artifact_urls import MATCH_NOTHING, allowed_url_pattern

    patterns = [allowed_url_pattern(prefix) for prefix in settings.allowed_url_prefixes]
    return _properties_value(",".join(patterns) or MATCH_NOTHING)


def _properties_value(text: str) -> str:
    """``text`` as a Java properties value: backslashes doubled; anything that is not printable
    ASCII (``Properties.load`` reads ISO-8859-1, and a line terminator would end the value) as
    ``\\uXXXX``; a leading space escaped (it would be dropped)."""
    escaped = "".join(c if c.isascii() and c.isprintable() and c != "\\" else
                      "\\\\" if c == "\\" else f"\\u{ord(c):04x}" for c in text)
    return "\\" + escaped if escaped.startswith(" ") else escaped


class LocalTorchServe(LocalServer[ServerState]):
    """A TorchServe process owned by servegate, described by ``<workdir>/server.json``."""

    state_type = ServerState
    stop_timeout_s = 30.0

    def __init__(self, settings: TorchServeSettings | None = None) -> None:
        self.settings = settings or TorchServeSettings()
        super().__init__(self.settings.workdir, self.settings.ready_timeout_s)
        self.model_store = self.workdir / "model-store"

    def _is_ours(self, state: ServerState) -> bool:
        return alive(state.pid) and identity_mismatch(state.pid, state.create_time,
                                                      state.cmdline) is None

    def _answers(self, state: ServerState) -> bool:
        return _management_answers(state)

    def _launch(self) -> ServerState:
        if not self.settings.token_auth:
            raise ServerStartError("servegate keeps TorchServe's token auth on; it cannot be disabled")
        check_exposure(self.settings)
        if self.settings.trust_ca is not None:
            build_truststore(self.settings.trust_ca, self.workdir / TRUSTSTORE)
        self.model_store.mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        (self.workdir / KEY_FILE).unlink(missing_ok=True)
        s = self.settings
        ports = {
            "inference": s.inference_port or free_port(s.host),
            "management": s.management_port or free_port(s.host),
            "metrics": s.metrics_port or free_port(s.host),
            "grpc_inference": free_port(s.host),
            "grpc_management": free_port(s.host),
        }
        config = self.workdir / "config.properties"
        # 0600 (atomic_write_text): the file names the servers' addresses and allowed URLs.
        atomic_write_text(config, render_config(s, ports, self.model_store))
        process, create_time = self._spawn(
            [_torchserve_executable(), "--start", "--foreground", "--ncs",
             "--model-store", str(self.model_store), "--ts-config", str(config)],
            self.workdir / "logs" / "stdout.log", self._environment())
        state = self._record(ServerState(
            pid=process.pid,
            workdir=str(self.workdir),
            model_store=str(self.model_store),
            inference=f"{s.scheme}://{_url_host(s.host)}:{ports['inference']}",
            management=f"{s.scheme}://{_url_host(s.host)}:{ports['management']}",
            metrics=f"{s.scheme}://{_url_host(s.host)}:{ports['metrics']}",
            key_file=str(self.workdir / KEY_FILE),
            create_time=create_time,
            tls_cert=str(s.tls_cert.resolve()) if s.tls_cert is not None else None,
            insecure_http=s.insecure_http,
            allowed_url_prefixes=list(s.allowed_url_prefixes),
            token_expiration_min=s.token_expiration_min,
            trust_ca=str(s.trust_ca.resolve()) if s.trust_ca is not None else None,
        ))
        # Up = the key file exists and the management API answers an authorised call.
        key_file = Path(state.key_file or "")
        self._wait_ready(lambda: key_file.exists() and _management_answers(state), "TorchServe",
                         self.workdir / "logs", process)
        return self._record_cmdline(state, process.pid)

    def _environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A minimal environment: no MLflow, cloud or other credentials reach the server or
        its workers (``_process.minimal_environment``); its logs in ``<workdir>/logs``."""
        return super()._environment({
            "LOG_LOCATION": str(self.workdir / "logs"),
            "METRICS_LOCATION": str(self.workdir / "logs"),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     *inherited_environment(("PATH",)).values()]),
            **(extra or {}),
        })

    def _stop_recorded(self, state: ServerState, timeout_s: float) -> StopOutcome:
        """The whole process group, only while the recorded pid's start time and command line
        match ``server.json`` (otherwise the pid was reused: nothing is killed)."""
        stopped, stale = stop_recorded(state.pid, state.create_time, state.cmdline, timeout_s)
        return StopOutcome(stopped, stale)


def unapplied_options(settings: TorchServeSettings, state: ServerState) -> list[str]:
    """The options of ``settings`` that the server already running (``state``) was not started
    with: a ``start`` returns that server as it is, so they do not apply until it restarts."""
    from urllib.parse import urlsplit

    differs: list[str] = []
    inference = urlsplit(state.inference)
    if settings.host.strip("[]") != (inference.hostname or ""):
        differs.append(f"--host {settings.host} (it listens on {inference.hostname})")
    for name, asked, url in (("inference-port", settings.inference_port, state.inference),
                             ("management-port", settings.management_port, state.management),
                             ("metrics-port", settings.metrics_port, state.metrics)):
        if asked and asked != urlsplit(url).port:
            differs.append(f"--{name} {asked} (it uses {urlsplit(url).port})")
    asked_cert = str(settings.tls_cert.resolve()) if settings.tls_cert is not None else None
    if asked_cert != state.tls_cert:
        differs.append("--tls-cert/--tls-key" if asked_cert else "no TLS (it serves https)")
    if settings.insecure_http != state.insecure_http:
        differs.append("--insecure-http")
    if settings.allowed_url_prefixes and list(settings.allowed_url_prefixes) != (
            state.allowed_url_prefixes or []):
        differs.append("--allow-url/--allow-mlflow-artifacts")
    if settings.token_expiration_min is not None and (
            settings.token_expiration_min != state.token_expiration_min):
        differs.append(f"--token-expiration-min {settings.token_expiration_min:g}")
    asked_ca = str(settings.trust_ca.resolve()) if settings.trust_ca is not None else None
    if asked_ca is not None and asked_ca != state.trust_ca:
        differs.append("--trust-ca")
    return differs


def _url_host(host: str) -> str:
    """``host`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _management_answers(state: ServerState) -> bool:
    """The management API answers an authorised call (a dead frontend with a live launcher
    doesn't). ``ServerStartError`` at once when it answers with a certificate that does not
    verify (waiting would not change it)."""
    with state.client(timeout=5) as client:
        try:
            client.list_models()
            return True
        except (ServerNotRunning, httpx.HTTPError) as exc:
            if (refused := _certificate_refused(exc)) is not None:
                raise ServerStartError(
                    f"TorchServe answers at {state.management}, but its certificate "
                    f"{state.tls_cert} does not verify there ({refused.verify_message}): it must "
                    "name that host (subjectAltName)") from exc
            return False
        except ServerError:
            return True  # it answered, if only with an error


def _certificate_refused(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc``, if that is what it is."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _torchserve_executable() -> str:
    candidate = Path(sys.executable).parent / "torchserve"
    if candidate.exists():
        return str(candidate)
    raise ServerStartError("torchserve is not installed in this environment (pip install servegate[torch])")
