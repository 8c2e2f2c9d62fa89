"""Typed settings. Environment variables (``SERVEGATE_*``), CLI options and MLproject parameters
all map onto these models; nothing is read at import time."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from servegate.parity_limits import MAX_REDUCED_ACCURACY_DROP

#: Artifacts ``auto`` may keep in one archive, each serving the shapes it is fastest at
#: (``compilers/routing.py``); a second is kept only when it lowers the worst slowdown by 5%.
DEFAULT_MAX_ARTIFACTS = 2
#: More would multiply archive size and start-up for little (and the subsets to search).
MOST_ARTIFACTS = 4


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Settings):
    """TorchServe's per-model batching and worker settings (written to model-config.yaml)."""

    batch_size: PositiveInt = 8
    max_batch_delay_ms: int = Field(2, ge=0)
    min_workers: PositiveInt = 1
    max_workers: PositiveInt = 1
    #: Workers per GPU for a CUDA artifact (min = max workers = this x the host's GPUs).
    workers_per_gpu: PositiveInt = 1
    #: Intra-op threads of each worker (0: the handler's rule, the cores left to the frontend
    #: divided among the workers); recorded in the archive's spec (``servegate tune`` searches it).
    threads_per_worker: int = Field(0, ge=0)
    response_timeout_s: PositiveInt = 120
    startup_timeout_s: PositiveInt = 120

    @model_validator(mode="after")
    def _delay_fills_batches(self) -> BatchingConfig:
        # Measured on TorchServe 0.12: maxBatchDelay 0 is taken as its 100 ms default, so a
        # lone request waits 100 ms for a batch that never fills.
        if self.batch_size > 1 and self.max_batch_delay_ms == 0:
            raise ValueError("max_batch_delay_ms must be at least 1 when batch_size > 1: "
                             "TorchServe treats 0 as its 100 ms default")
        if self.max_workers < self.min_workers:  # `workers` sets min_workers: max follows it
            # (TorchServe ignores a model-config whose maxWorkers is below its minWorkers)
            object.__setattr__(self, "max_workers", self.min_workers)
        return self

    def model_config_yaml(self, device: str = "cpu", gpus: int | None = None) -> dict[str, Any]:
        """TorchServe's model-config.yaml. A ``cuda`` artifact runs ``workers_per_gpu`` workers on
        each of the host's GPUs (``gpus``, default ``devices.gpu_count()``, at least 1):
        ``deviceType: gpu`` and ``deviceIds`` 0..n-1, which TorchServe assigns round-robin."""
        config: dict[str, Any] = {
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "responseTimeout": self.response_timeout_s,
            "startupTimeout": self.startup_timeout_s,
        }
        if device == "cuda":
            if gpus is None:
                from servegate.devices import gpu_count

                gpus = gpu_count()
            n = max(1, gpus)
            config["minWorkers"] = config["maxWorkers"] = self.workers_per_gpu * n
            config["deviceType"] = "gpu"
            config["deviceIds"] = list(range(n))
        else:
            config["deviceType"] = "cpu"
        return config


class RequestLimits(_Settings):
    """What one request may carry before the handler answers 413."""

    max_body_bytes: PositiveInt = 1 << 20
    max_instances: PositiveInt = 64
    #: Values one instance of an input with a ``-1`` dimension may hold (default: the body limit
    #: over 16, as the handlers derive it for archives that do not record it).
    max_instance_elements: PositiveInt = Field(
        default_factory=lambda data: max(1, data["max_body_bytes"] // 16))


#: Room for the HTTP envelope around a body the handler accepts (headers are not counted by
#: TorchServe's limit; multipart/KServe wrappers add a little).
ENVELOPE_MARGIN_BYTES = 16 << 10
#: Bodies up to this many times the handlers' limit reach the handler, which answers a readable
#: 413 (JSON). Past TorchServe's own ``max_request_size`` its frontend (Netty) answers 413 with an
#: EMPTY body and, to a client that sent ``Connection: close`` (urllib), resets the connection
#: while the body is still being sent (measured on 0.12.0: 4 MB bodies against a 1 MiB limit).
#: Cost, measured: a 4 MiB body refused by the handler takes ~70 ms of server CPU (14 by the
#: frontend), and 64 such requests at once raised the frontend's RSS to 1.5 GB (0.2 GB).
READABLE_OVERSIZE_FACTOR = 4


def server_request_size(limits: RequestLimits | None = None) -> int:
    """TorchServe's ``max_request_size``: ``READABLE_OVERSIZE_FACTOR`` times the handlers' body
    limit plus a small margin, so that a client sending up to that gets the handler's JSON 413."""
    return READABLE_OVERSIZE_FACTOR * (limits or RequestLimits()).max_body_bytes + ENVELOPE_MARGIN_BYTES


def experiment_name() -> str:
    """The MLflow experiment runs go to (``MLFLOW_EXPERIMENT_NAME``, default servegate-deploy)."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "servegate-deploy")


def report_dir_from_env() -> Path | None:
    """Where a copy of the gate report goes (``SERVEGATE_REPORT_DIR``), or None."""
    value = os.environ.get("SERVEGATE_REPORT_DIR")
    return Path(value) if value else None


ARTIFACT_HOSTS_ENV = "SERVEGATE_ARTIFACT_HOSTS"


def artifact_hosts() -> tuple[str, ...]:
    """Hosts besides the tracking server that artifact and dataset URIs may name, and so receive
    the tracking credentials (``SERVEGATE_ARTIFACT_HOSTS``: comma-separated ``host[:port]`` or
    ``https://host[:port]``; set by the operator, never by a payload)."""
    value = os.environ.get(ARTIFACT_HOSTS_ENV, "")
    return tuple(h.strip().rstrip("/") for h in value.split(",") if h.strip())


def allow_insecure_http() -> bool:
    """The operator lets keys travel over plain HTTP to other hosts
    (``SERVEGATE_ALLOW_INSECURE_HTTP=1``, for a network they trust); off by default."""
    from servegate.tls import ALLOW_INSECURE_HTTP_ENV

    return os.environ.get(ALLOW_INSECURE_HTTP_ENV, "").lower() in ("1", "true", "yes")


def tracking_ca_bundle() -> str | None:
    """The CA bundle MLflow verifies an https tracking server with
    (MLflow's own ``MLFLOW_TRACKING_SERVER_CERT_PATH``), or None."""
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None


def allow_unverified_restore() -> bool:
    """The operator lets a champion without a recorded sha256 be restored
    (``SERVEGATE_ALLOW_UNVERIFIED_RESTORE=1``); off by default."""
    return os.environ.get("SERVEGATE_ALLOW_UNVERIFIED_RESTORE", "").lower() in ("1", "true", "yes")


def container_engine() -> str:
    """The container engine servegate's image commands talk to: ``DOCKER_HOST`` as the docker
    SDK reads it (e.g. ``unix:///run/podman/podman.sock``); empty: the SDK's default socket."""
    return os.environ.get("DOCKER_HOST", "")


def gate_policy_path() -> Path:
    """The gate policy file every ``PipelineConfig`` is checked against (``servegate.policy``):
    ``SERVEGATE_GATE_POLICY`` (an operator's file, an absolute path), else the repository's
    ``serving_configs/gate-policy.toml``. Never a run's parameter: a payload cannot choose it."""
    from servegate.policy import policy_path

    return policy_path(os.environ)


#: ``true``: reports name the servers by the settings holding their addresses, never show them
#: (the promotion workflow keeps those addresses as secrets); ``false``: show them without
#: userinfo and query. Unset: ``true`` on GitHub Actions (``GITHUB_ACTIONS=true``).
REDACT_HOSTS_ENV = "SERVEGATE_REDACT_HOSTS"
#: The settings whose values locate a server or its models (secrets in the promotion workflow).
SERVER_ADDRESS_SETTINGS = (
    "SERVEGATE_TORCHSERVE_MANAGEMENT_URL", "SERVEGATE_TORCHSERVE_INFERENCE_URL",
    "SERVEGATE_TORCHSERVE_METRICS_URL", "SERVEGATE_TORCHSERVE_MODEL_STORE",
    "SERVEGATE_TORCHSERVE_KEY_FILE", "SERVEGATE_TFSERVING_URL", "SERVEGATE_TFSERVING_GRPC",
    "SERVEGATE_TFSERVING_MODEL_ROOT", "SERVEGATE_TFSERVING_SERVER_ROOT", "MLFLOW_TRACKING_URI")


def redact_hosts() -> bool:
    """Whether reports hide the servers' addresses (``SERVEGATE_REDACT_HOSTS``)."""
    from servegate.errors import ConfigError

    value = os.environ.get(REDACT_HOSTS_ENV, "").strip().lower()
    if not value:
        return os.environ.get("GITHUB_ACTIONS") == "true"
    if value not in ("true", "false", "1", "0"):
        raise ConfigError(f"{REDACT_HOSTS_ENV} must be true or false, got {value!r}")
    return value in ("true", "1")


def server_address_settings() -> dict[str, str]:
    """The set ``SERVER_ADDRESS_SETTINGS``, by name (what a report names instead of a host)."""
    return {name: os.environ[name] for name in SERVER_ADDRESS_SETTINGS if os.environ.get(name)}


def tracking_uri_setting() -> str:
    """``MLFLOW_TRACKING_URI`` as set (empty when unset: MLflow then uses its default store)."""
    return os.environ.get("MLFLOW_TRACKING_URI", "")


def s3_endpoint() -> str | None:
    """An S3-compatible store's endpoint (``MLFLOW_S3_ENDPOINT_URL``), or None for AWS."""
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def inside_mlflow_run() -> bool:
    """Started by ``mlflow run`` (``MLFLOW_RUN_ID`` / ``MLFLOW_EXPERIMENT_ID`` are set): the run's
    experiment is already chosen."""
    return "MLFLOW_RUN_ID" in os.environ or "MLFLOW_EXPERIMENT_ID" in os.environ


def ci_runner() -> tuple[str, str] | None:
    """(runner name, run id) on GitHub Actions (``GITHUB_ACTIONS``, ``RUNNER_NAME``,
    ``GITHUB_RUN_ID``), else None."""
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return None
    return os.environ.get("RUNNER_NAME", "runner"), os.environ.get("GITHUB_RUN_ID", "?")


def inherited_environment(names: tuple[str, ...]) -> dict[str, str]:
    """The variables ``names`` of this process's environment that are set (for a child's)."""
    return {name: os.environ[name] for name in names if name in os.environ}


#: What a child process that runs others' code (Locust, an archive's handler timed or primed, a
#: SavedModel timed) inherits from ours: the basics a Python process needs, nothing secret (no
#: tracking credentials, no server keys, no cloud tokens).
CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SSL_CERT_FILE",
             "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


def child_environment(**settings: str) -> dict[str, str]:
    """Such a child's whole environment: ``CHILD_ENV``, a ``PYTHONPATH`` reaching servegate
    however this process did (installed or ``src/``), and ``settings``."""
    env = inherited_environment((*CHILD_ENV, "PYTHONPATH"))
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env | settings


def home_dir() -> Path:
    """Where servegate keeps local servers and archives (``SERVEGATE_HOME``, default ``.servegate``)."""
    return Path(os.environ.get("SERVEGATE_HOME", ".servegate")).resolve()


class TorchServeSettings(_Settings):
    """A local TorchServe: its directory and addresses. Port 0 picks a free port."""

    workdir: Path = Field(default_factory=lambda: home_dir() / "torchserve")
    host: str = "127.0.0.1"
    inference_port: int = Field(0, ge=0, le=65535)
    management_port: int = Field(0, ge=0, le=65535)
    metrics_port: int = Field(0, ge=0, le=65535)
    token_auth: bool = True
    ready_timeout_s: float = 180.0
    # TorchServe's default request size limit is 6.5 MB; ours follows the handlers' body limit
    # (RequestLimits.max_body_bytes): 4x it plus an envelope margin (server_request_size).
    max_request_size: PositiveInt = Field(default_factory=server_request_size)
    #: URL prefixes the server may register archives from besides its model store, e.g. an
    #: ``mlflow server``'s artifacts (``allowed_urls``: archives under these prefixes only).
    allowed_url_prefixes: tuple[str, ...] = ()
    #: Minutes a management/inference key lives (TorchServe's default: 60). A long-lived server
    #: whose clients are given its keys needs longer than the longest run.
    token_expiration_min: float | None = Field(None, gt=0)
    #: TorchServe's own TLS (``certificate_file``/``private_key_file``): PEM certificate (chain)
    #: and an unencrypted RSA key in PKCS#8; HTTP and gRPC are then served over TLS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Explicit opt-in: serve plain HTTP on an address other hosts reach (``host`` not loopback,
    #: no TLS): keys and requests cross the network readable. Token auth stays on either way.
    insecure_http: bool = False
    #: CA bundle (PEM) the server trusts when it fetches archives by ``https://`` URL (e.g. a
    #: tracking server with a private CA); it replaces Java's default CAs for those fetches.
    trust_ca: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> TorchServeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give tls_cert and tls_key together")
        return self

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self.tls_cert is not None else "http"



class TFServingSettings(_Settings):
    """A local TF Serving: its directory, loopback ports (0 = free port), batching and image.
    A pipeline run takes the batching from ``PipelineConfig.batching``."""

    workdir: Path = Field(default_factory=lambda: home_dir() / "tfserving")
    host: str = "127.0.0.1"
    rest_port: int = Field(0, ge=0, le=65535)
    grpc_port: int = Field(0, ge=0, le=65535)
    #: A run's is ``batching.batch_size`` (``PipelineConfig.tfserving_settings``); alone, its default.
    max_batch_size: PositiveInt = Field(default_factory=lambda: BatchingConfig().batch_size)
    batch_timeout_ms: float = Field(5.0, ge=0)
    xla: bool = True
    docker_image: str = "tensorflow/serving"
    ready_timeout_s: float = 120.0
    #: Explicit opt-in: serve gRPC from a binary on TCP ``grpc_port`` of EVERY interface
    #: (tensorflow_model_server has no bind-address flag), which exposes the unauthenticated
    #: ModelService (HandleReloadConfigRequest can load or unload any model) and
    #: PredictionService to the network. Off: gRPC listens on a Unix socket in the workdir.
    grpc_tcp_all_interfaces: bool = False

#: ``auto``: attach when a server is configured, else start a local one; ``attach``: a configured
#: server or a clear error (never a throwaway server); ``local``: always the local server.
ServerMode = Literal["auto", "attach", "local"]
#: The targets whose batching ``servegate tune`` (and ``tune=true``) searches.
TUNED_TARGETS = ("torchserve", "tfserving")
SERVER_MODE_ENV = "SERVEGATE_SERVER"


def server_mode(explicit: str | None = None) -> ServerMode:
    """``explicit``, else ``$SERVEGATE_SERVER``, else ``auto``."""
    from servegate.errors import ConfigError

    mode = explicit or os.environ.get(SERVER_MODE_ENV) or "auto"
    if mode not in ("auto", "attach", "local"):
        raise ConfigError(f"server must be auto, attach or local, got {mode!r}")
    return mode  # type: ignore[return-value]


def attach_refused(server: str, needed: str) -> str:
    """Why ``server=attach`` will not start a local server, and what to set instead."""
    return (f"server=attach ({SERVER_MODE_ENV}=attach, as the promotion workflow runs): refusing "
            f"to start a local {server} that would live only as long as this machine, and promote "
            f"onto it; set {needed} to the long-lived server")


def _prefixed_env(prefix: str, fields: Any) -> dict[str, str]:
    """The non-empty ``PREFIX<FIELD>`` variables naming one of ``fields``, by field name."""
    values = {k.removeprefix(prefix).lower(): v for k, v in os.environ.items()
              if k.startswith(prefix) and v}
    return {k: v for k, v in values.items() if k in fields}


class TorchServeReplica(_Settings):
    """One TorchServe of a fleet: its URLs, its own keys (each TorchServe generates its keys at
    start, so replicas never share them) and, on a shared filesystem, its model store."""

    management_url: str
    inference_url: str
    metrics_url: str = ""
    key_file: Path | None = None
    keys: SecretStr | None = None
    model_store: Path | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> TorchServeReplica:
        if self.key_file is not None and self.keys is not None:
            raise ValueError("give a replica's key_file or its keys, not both")
        return self


class TorchServeAttach(_Settings):
    """A TorchServe started elsewhere, from ``SERVEGATE_TORCHSERVE_*``: its URLs; its keys as
    the server's key file (a shared filesystem) or that file's content (a secret); and a model
    store to copy archives into, else archives are registered by URL.

    A fleet (``SERVEGATE_TORCHSERVE_REPLICAS``, ``parse_replicas``) lists several replicas
    instead; ``replicas`` then holds them and the single-server fields are unused."""

    management_url: str = ""
    inference_url: str = ""
    metrics_url: str = ""
    key_file: Path | None = None
    keys: SecretStr | None = None
    model_store: Path | None = None
    #: PEM CA bundle that ``https://`` URLs are verified against (a private CA); unset: the
    #: system's CAs.
    ca_bundle: Path | None = None
    #: The replicas of a fleet (empty: one server).
    replicas: tuple[TorchServeReplica, ...] = ()

    PREFIX: ClassVar[str] = "SERVEGATE_TORCHSERVE_"
    KEYS_ENV: ClassVar[str] = "SERVEGATE_TORCHSERVE_KEYS"
    REPLICAS_ENV: ClassVar[str] = "SERVEGATE_TORCHSERVE_REPLICAS"

    @classmethod
    def from_env(cls) -> TorchServeAttach | None:
        """The attached server or fleet, or None when neither
        ``SERVEGATE_TORCHSERVE_MANAGEMENT_URL`` nor ``..._REPLICAS`` is set."""
        from servegate.errors import ConfigError

        env = _prefixed_env(cls.PREFIX, set(cls.model_fields) - {"replicas"})
        replicas = os.environ.get(cls.REPLICAS_ENV, "").strip()
        if replicas:
            if "management_url" in env or "inference_url" in env:
                raise ConfigError(f"give {cls.REPLICAS_ENV} or {cls.PREFIX}MANAGEMENT_URL/"
                                  "..._INFERENCE_URL, not both")
            for shared in ("key_file", "keys", "model_store", "metrics_url"):
                if shared in env:
                    raise ConfigError(
                        f"{cls.PREFIX}{shared.upper()} names one server; a fleet's replicas each "
                        f"have their own (TorchServe makes its keys at start): give them per "
                        f"replica in {cls.REPLICAS_ENV} as JSON")
            try:
                return cls(replicas=parse_replicas(replicas), **env)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise ConfigError(f"{cls.REPLICAS_ENV}: {exc}") from exc
        if "management_url" not in env:
            return None
        if "inference_url" not in env:
            raise ConfigError(f"attaching to TorchServe needs {cls.PREFIX}INFERENCE_URL too")
        if "key_file" in env and "keys" in env:
            raise ConfigError(f"give {cls.PREFIX}KEY_FILE or {cls.KEYS_ENV}, not both")
        return cls(**env)


def parse_replicas(text: str, resolve: Any = None) -> tuple[TorchServeReplica, ...]:
    """The replicas of ``SERVEGATE_TORCHSERVE_REPLICAS``, in one of three forms:

    - JSON, a list of objects with ``TorchServeReplica``'s fields (``management_url``,
      ``inference_url``, and each replica's ``key_file`` or ``keys`` and ``model_store``);
    - a comma list of ``MANAGEMENT_URL=INFERENCE_URL`` pairs (replicas without token auth, e.g.
      pods behind a mesh policy: keys need the JSON form);
    - ``dns:MANAGEMENT_URL=INFERENCE_URL`` whose host names a Kubernetes headless Service: one
      replica per address its A records give (``resolve(host)``, default the stdlib's
      ``getaddrinfo``), each with the pair's scheme and ports.

    ``ConfigError`` for anything else, for duplicates and for an empty list."""
    import json

    from servegate.errors import ConfigError

    text = text.strip()
    try:
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"not valid JSON: {exc}") from exc
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ConfigError("the JSON form is a list of objects")
            replicas = tuple(TorchServeReplica(**item) for item in items)
        elif text.startswith("dns:"):
            management, inference = _url_pair(text.removeprefix("dns:"))
            replicas = tuple(TorchServeReplica(management_url=_with_host(management, address),
                                               inference_url=_with_host(inference, address))
                             for address in _resolve_service(management, inference, resolve))
        else:
            replicas = tuple(TorchServeReplica(management_url=m, inference_url=i)
                             for m, i in (_url_pair(p) for p in text.split(",") if p.strip()))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from exc
    if not replicas:
        raise ConfigError("no replica given")
    seen = [r.management_url.rstrip("/") for r in replicas]
    if len(set(seen)) != len(seen):
        raise ConfigError("a replica is listed twice: " + ", ".join(sorted(
            {u for u in seen if seen.count(u) > 1})))
    return replicas


def _url_pair(text: str) -> tuple[str, str]:
    """``MANAGEMENT_URL=INFERENCE_URL``, both ``http(s)://host:port`` URLs."""
    from urllib.parse import urlsplit

    from servegate.errors import ConfigError

    management, sep, inference = text.strip().partition("=")
    if not sep:
        raise ConfigError(f"{text.strip()!r} is not MANAGEMENT_URL=INFERENCE_URL")
    for url in (management, inference):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
                or parts.password or parts.query or parts.fragment:
            raise ConfigError(f"{url.strip()!r} is not an http(s)://host[:port] URL")
    return management.strip().rstrip("/"), inference.strip().rstrip("/")


def _resolve_service(management: str, inference: str, resolve: Any) -> list[str]:
    """The IPv4 addresses of the pair's host (one host for both URLs), sorted, no duplicates."""
    import socket
    from urllib.parse import urlsplit

    from servegate.errors import ConfigError

    host = urlsplit(management).hostname or ""
    if urlsplit(inference).hostname != host:
        raise ConfigError("the dns: form names one Service host for both URLs")
    if resolve is None:
        def resolve(name: str) -> list[str]:
            try:
                infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                raise ConfigError(f"cannot resolve {name}: {exc}") from exc
            return [str(info[4][0]) for info in infos]
    addresses = sorted(set(resolve(host)))
    if not addresses:
        raise ConfigError(f"{host} resolves to no address")
    return addresses


def _with_host(url: str, address: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = address + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class TFServingAttach(_Settings):
    """A TF Serving started elsewhere, from ``SERVEGATE_TFSERVING_*``: REST URL, gRPC target
    and the model root it reads (a directory, or a URI TensorFlow's filesystems write: gs://,
    s3:// with tensorflow-io, hdfs://) as this process sees it and as the server sees it."""

    url: str
    grpc: str | None = None
    model_root: str | None = None
    server_root: str | None = None
    #: PEM CA bundle: set, gRPC goes over TLS (an SSL channel credential) verified against it,
    #: and an ``https://`` REST URL (a TLS-terminating proxy) is verified against it too.
    ca_bundle: Path | None = None

    PREFIX: ClassVar[str] = "SERVEGATE_TFSERVING_"

    @classmethod
    def from_env(cls) -> TFServingAttach | None:
        """The attached server, or None when ``SERVEGATE_TFSERVING_URL`` is unset."""
        env = _prefixed_env(cls.PREFIX, cls.model_fields)
        return cls(**env) if "url" in env else None


class SLOs(_Settings):
    """Load-gate thresholds: absolute, and relative to the champion measured in the same run."""

    p95_ms: float = Field(250.0, gt=0)
    p99_ms: float = Field(500.0, gt=0)
    min_rps: float = Field(20.0, ge=0)
    max_error_rate: float = Field(0.0, ge=0, le=1)
    max_regression_pct: float = Field(50.0, ge=0)
    #: Latency differences below this are noise on a shared box, whatever the percentage says.
    regression_floor_ms: float = Field(10.0, ge=0)


class ParityThresholds(_Settings):
    """Accuracy-gate thresholds: served vs reference, challenger vs champion."""

    parity_atol: float = Field(1e-4, ge=0)
    #: Regression and tensor outputs: largest error relative to the reference (absolute below 1).
    parity_rtol: float = Field(1e-4, ge=0)
    min_top1_agreement: float = Field(0.999, ge=0, le=1)
    max_accuracy_drop: float = Field(MAX_REDUCED_ACCURACY_DROP, ge=0, le=1)
    #: Regression: the challenger's RMSE and MAE may exceed the champion's by this fraction.
    max_metric_regression: float = Field(0.05, ge=0)
    #: Classification without labels: top-1 agreement required between challenger and champion.
    min_champion_agreement: float = Field(0.95, ge=0, le=1)


class LoadSettings(_Settings):
    """Locust settings of the load gate. With a champion, its phases and the challenger's
    alternate ``rounds`` times (``seconds`` split between them), so drift on a shared machine
    hits both alike."""

    users: PositiveInt = 8
    seconds: float = Field(8.0, gt=0)
    rounds: PositiveInt = 2
    #: Locust processes on this host (Locust's master and this many workers when more than
    #: one): one process tops out near one core's worth of requests; users are spread over them.
    processes: PositiveInt = 1

    @model_validator(mode="after")
    def _a_user_per_process(self) -> LoadSettings:
        if self.processes > self.users:
            raise ValueError(f"load_processes ({self.processes}) cannot exceed load_users "
                             f"({self.users}): a process without a user loads nothing")
        return self


class ImagePreprocessing(_Settings):
    """An image model's preprocessing (``image-classification``): what the worker resizes to and
    how it normalises, recorded as ``image`` in the archive's ``servegate.json`` (read as plain
    JSON by ``handlers/image_classifier.py``)."""

    size: tuple[int, int] = (224, 224)
    mode: Literal["L", "RGB"] = "RGB"
    scale: float = 1 / 255
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])

    @model_validator(mode="after")
    def _channels_match(self) -> ImagePreprocessing:
        channels = 1 if self.mode == "L" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"image mean and std need {channels} values for mode {self.mode}")
        return self


class SourceSettings(_Settings):
    """What a model source needs besides its URI (``servegate.sources.load_torch_model``).
    ``PipelineConfig`` is one: a run hands its own settings to the source."""

    #: None infers it (tensor models: from outputs and labels; hf: embedding).
    task: str | None = None
    #: hf: models: truncation in tokens (None: the model's default).
    max_length: int | None = Field(None, ge=8)
    #: The user's held-out data: a path or MLflow artifact URI (.npz, .csv, .parquet, .jsonl).
    eval_data: str | None = None
    label_column: str = "label"
    text_column: str = "text"
    #: Allow pickled artifacts (they run code when loaded).
    trust_pickle: bool = False
    #: A state_dict file's model class, ``file.py:Class``, and its constructor's arguments.
    model_class: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Class names: a file (JSON list / mapping, or one per line) or a comma list.
    labels: str | None = None
    image: ImagePreprocessing = Field(default_factory=ImagePreprocessing)

    def image_record(self) -> dict[str, Any]:
        """The image preprocessing an ``image-classification`` model records (JSON), else ``{}``."""
        return self.image.model_dump(mode="json") if self.task == "image-classification" else {}


def registered_name(model: str) -> str | None:
    """The registered model name of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    if not model.startswith("models:/"):
        return None
    path = model.removeprefix("models:/")
    return path.split("@", 1)[0] if "@" in path else path.partition("/")[0]


class PipelineConfig(SourceSettings):
    """Everything one ``mlflow run pipelines/deploy`` needs (MLproject parameters map here); the
    source's settings (``SourceSettings``) are its own fields."""

    model: str = "builtin:digits"
    #: Served and registered name; None takes it from ``models:/NAME`` or ``builtin:NAME``.
    name: str | None = None
    target: str = "torchserve"
    compiler: str = "auto"
    #: Compile caches (Inductor, Triton, TensorRT timing): ``local`` leaves torch's own caches
    #: on this host; ``shared`` keeps them under SERVEGATE_HOME per device type, restores the
    #: newest one of this device type from the MLflow experiment when empty and logs new ones
    #: there (cached compiled code runs when loaded: trust the tracking server as a pickle).
    compile_cache: Literal["local", "shared"] = "local"
    #: ``auto``: the most compiled artifacts one archive carries, each owning the shapes (batch x
    #: tokens) it serves best (routing by shape); 1 keeps the single best.
    max_artifacts: int = Field(default=DEFAULT_MAX_ARTIFACTS, ge=1, le=MOST_ARTIFACTS)
    #: A user's own TorchServe handler file, packaged with ours.
    handler: Path | None = None
    slos: SLOs = Field(default_factory=SLOs)
    parity: ParityThresholds = Field(default_factory=ParityThresholds)
    load: LoadSettings = Field(default_factory=LoadSettings)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    promote: bool = True
    #: Search the challenger's batching (``servegate tune``) on the server before it is deployed
    #: and gated, measuring at most ``tune_points`` configurations; the archive takes the winner.
    tune: bool = False
    tune_points: PositiveInt = 6
    #: Also copy the gate report here (``SERVEGATE_REPORT_DIR``).
    report_dir: Path | None = Field(default_factory=report_dir_from_env)
    torchserve: TorchServeSettings = Field(default_factory=TorchServeSettings)
    #: A local TF Serving (its batching follows ``batching``: see ``tfserving_settings``).
    tfserving: TFServingSettings = Field(default_factory=TFServingSettings)
    #: Which server the run uses (``server_mode``): a run that must promote where production is
    #: says ``attach``.
    server: ServerMode = Field(default_factory=server_mode)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str | None) -> str | None:
        from servegate.errors import ConfigError
        from servegate.naming import validate_name

        if name is None:
            return None
        try:
            return validate_name(name)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _tune_has_a_search(self) -> PipelineConfig:
        if self.tune and self.target not in TUNED_TARGETS:
            raise ValueError(f"tune searches the batching of {' and '.join(TUNED_TARGETS)}; "
                             f"{self.target}'s is not searched (drop tune=true)")
        return self

    @model_validator(mode="after")
    def _within_the_gate_policy(self) -> PipelineConfig:
        """Gates as tight as the policy file's or tighter: else ``ConfigError`` (not wrapped)."""
        from servegate.policy import load_policy

        load_policy(gate_policy_path()).enforce(self)
        return self

    @model_validator(mode="after")
    def _name_agrees_with_the_registry(self) -> PipelineConfig:
        registered = registered_name(self.model)
        if self.name is None:
            if registered is not None:
                name = registered
            elif self.model.startswith("builtin:"):
                name = self.model.removeprefix("builtin:")
            else:
                raise ValueError(f"name is required for model {self.model!r} (the served and "
                                 "registered model name)")
            from servegate.errors import ConfigError
            from servegate.naming import validate_name

            try:
                object.__setattr__(self, "name", validate_name(name))
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        elif registered is not None and registered != self.name:
            raise ValueError(
                f"model {self.model} is registered as {registered!r} but name is {self.name!r}: the "
                f"served name and the registered name must agree (omit name, or pass name={registered})")
        return self

    def tfserving_settings(self) -> TFServingSettings:
        """The local TF Serving's settings with this run's batching (batch size and delay)."""
        return self.tfserving.model_copy(update={
            "max_batch_size": self.batching.batch_size,
            "batch_timeout_ms": float(self.batching.max_batch_delay_ms)})

    @property
    def model_name(self) -> str:
        """``name``, resolved (never None after validation)."""
        assert self.name is not None
        return self.name


def _flag(value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        from servegate.errors import ConfigError

        raise ConfigError(f"expected true or false, got {value!r}")
    return text in ("true", "1", "yes")


def _number_list(kind: type) -> Any:
    def convert(value: Any) -> list[Any]:
        if isinstance(value, (list, tuple)):
            return [kind(v) for v in value]
        return [kind(float(v)) if kind is int else kind(v) for v in str(value).split(",") if v.strip()]
    return convert


def _json_object(value: Any) -> dict[str, Any]:
    import json

    if isinstance(value, dict):
        return value
    parsed = json.loads(str(value) or "{}")
    if not isinstance(parsed, dict):
        raise ValueError(f"a JSON object, got {type(parsed).__name__}")
    return parsed


def _empty_is_none(kind: Callable[[Any], Any] = str) -> Any:
    return lambda value: None if value in ("", None) else kind(value)


def _whole(value: Any) -> int:
    return int(float(value))  # MLflow passes an MLproject float parameter as e.g. "8.0"


class RunParameter(NamedTuple):
    """One run parameter: where ``PipelineConfig`` keeps it (``path``), how its text becomes that
    field's value (``convert``), the type its CLI option and MLproject parameter carry (``kind``:
    ``str``, ``int`` or ``float``; MLproject declares both numbers ``float``), and the value that
    stands for the field's default where that default is None or read from the environment."""

    path: tuple[str, ...]
    convert: Callable[[Any], Any]
    kind: type = str
    unset: str | int = ""


#: Each run parameter (as the MLproject, the workflow and ``mlflow deployments -C`` name it, and
#: ``servegate run --NAME``). Defaults are ``PipelineConfig``'s: see ``run_parameter_default``.
RUN_PARAMETERS: dict[str, RunParameter] = {
    "model": RunParameter(("model",), str),
    "name": RunParameter(("name",), _empty_is_none()),
    "task": RunParameter(("task",), lambda v: None if v in ("", "auto", None) else str(v),
                         unset="auto"),
    "eval_data": RunParameter(("eval_data",), _empty_is_none()),
    "label_column": RunParameter(("label_column",), str),
    "text_column": RunParameter(("text_column",), str),
    "labels": RunParameter(("labels",), _empty_is_none()),
    "trust_pickle": RunParameter(("trust_pickle",), _flag),
    "model_class": RunParameter(("model_class",), _empty_is_none()),
    "model_kwargs": RunParameter(("model_kwargs",), _json_object),
    "handler": RunParameter(("handler",), _empty_is_none(lambda v: Path(v).expanduser().resolve())),
    "image_size": RunParameter(("image", "size"), _number_list(int)),
    "image_mode": RunParameter(("image", "mode"), str),
    "image_mean": RunParameter(("image", "mean"), _number_list(float)),
    "image_std": RunParameter(("image", "std"), _number_list(float)),
    "max_length": RunParameter(("max_length",), lambda v: _whole(v) or None, int, unset=0),
    "target": RunParameter(("target",), str),
    "compiler": RunParameter(("compiler",), str),
    "compile_cache": RunParameter(("compile_cache",), str),
    "max_artifacts": RunParameter(("max_artifacts",), _whole, int),
    "p95_ms": RunParameter(("slos", "p95_ms"), float, float),
    "p99_ms": RunParameter(("slos", "p99_ms"), float, float),
    "min_rps": RunParameter(("slos", "min_rps"), float, float),
    "max_error_rate": RunParameter(("slos", "max_error_rate"), float, float),
    "max_regression_pct": RunParameter(("slos", "max_regression_pct"), float, float),
    "parity_atol": RunParameter(("parity", "parity_atol"), float, float),
    "parity_rtol": RunParameter(("parity", "parity_rtol"), float, float),
    "max_metric_regression": RunParameter(("parity", "max_metric_regression"), float, float),
    "min_top1_agreement": RunParameter(("parity", "min_top1_agreement"), float, float),
    "max_accuracy_drop": RunParameter(("parity", "max_accuracy_drop"), float, float),
    "load_users": RunParameter(("load", "users"), _whole, int),
    "load_seconds": RunParameter(("load", "seconds"), float, float),
    "load_rounds": RunParameter(("load", "rounds"), _whole, int),
    "load_processes": RunParameter(("load", "processes"), _whole, int),
    "batch_size": RunParameter(("batching", "batch_size"), _whole, int),
    "max_batch_delay_ms": RunParameter(("batching", "max_batch_delay_ms"), _whole, int),
    "workers": RunParameter(("batching", "min_workers"), _whole, int),
    "workers_per_gpu": RunParameter(("batching", "workers_per_gpu"), _whole, int),
    "threads": RunParameter(("batching", "threads_per_worker"), _whole, int),
    "promote": RunParameter(("promote",), _flag),
    "tune": RunParameter(("tune",), _flag),
    "tune_points": RunParameter(("tune_points",), _whole, int),
    "server": RunParameter(("server",), lambda v: server_mode(str(v) or None)),
}

#: Defaults read from the environment when a config is made: a parameter's default is then its
#: ``unset`` value (``server=""``: ``$SERVEGATE_SERVER``, else auto).
_ENVIRONMENT_DEFAULTS: tuple[Callable[..., Any], ...] = (server_mode, report_dir_from_env)


def run_parameter_field(name: str) -> FieldInfo:
    """The ``PipelineConfig`` field (or nested settings' field) that run parameter ``name`` sets."""
    model: Any = PipelineConfig
    *parents, leaf = RUN_PARAMETERS[name].path
    for key in parents:
        model = model.model_fields[key].annotation
    return model.model_fields[leaf]


def run_parameter_default(name: str) -> Any:
    """Run parameter ``name``'s default as its CLI option and MLproject parameter carry it (a
    ``kind`` value: lists as comma text, flags as true/false, JSON as text), made from
    ``PipelineConfig``'s default: the one place defaults are written. Reads no environment."""
    parameter = RUN_PARAMETERS[name]
    field = run_parameter_field(name)
    if field.default_factory in _ENVIRONMENT_DEFAULTS:
        return parameter.unset
    value = field.get_default(call_default_factory=True)
    if value is None:
        return parameter.unset
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        import json

        return json.dumps(value)
    return parameter.kind(value)


def config_from_parameters(parameters: dict[str, Any]) -> PipelineConfig:
    """A ``PipelineConfig`` from run parameters by name (``RUN_PARAMETERS``), as text or values;
    unset parameters keep their defaults. An unknown name or a value that does not convert is a
    ``ConfigError`` naming it; the result is validated (gate policy included)."""
    from pydantic import ValidationError

    from servegate.errors import ConfigError

    unknown = sorted(set(parameters) - set(RUN_PARAMETERS))
    if unknown:
        raise ConfigError(f"unknown parameters {', '.join(unknown)}; known: "
                          f"{', '.join(RUN_PARAMETERS)}")
    values: dict[str, Any] = {}
    for name, value in parameters.items():
        path, convert = RUN_PARAMETERS[name].path, RUN_PARAMETERS[name].convert
        try:
            converted = convert(value)
        except (TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"parameter {name}={value!r}: {exc}") from exc
        if converted is None and len(path) == 1 and name not in ("name", "task", "max_length"):
            continue  # empty: the default
        target = values
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = converted
    try:
        return PipelineConfig(**values)
    except ValidationError as exc:
        raise ConfigError("invalid parameters: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())) from exc
