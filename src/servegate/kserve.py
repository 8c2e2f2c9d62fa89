"""``servegate export kserve NAME[@alias]``: KServe manifests and the storage TorchServe reads.

Written to one directory::

    servingruntime.yaml            ServingRuntime ``servegate-torchserve``: servegate's TorchServe
                                   image (a parameter), TorchServe itself on port 8080 (no KServe
                                   wrapper in front), the KServe v1 and v2 routes TorchServe serves
    inferenceservice.yaml          the champion, 100% of the traffic
    inferenceservice-canary.yaml   the same service with the challenger as its new revision at
                                   ``canaryTrafficPercent`` (when a challenger is registered)
    storage/v<N>/config/config.properties, storage/v<N>/config/readiness.json,
    storage/v<N>/model-store/<name>.v<N>.mar
                                   one storage tree per version: upload each to
                                   ``<storage_uri>/v<N>``, which KServe mounts at /mnt/models

Archives come from the registry (``servegate.archive``), checked against the sha256 recorded when
they were built, as a restore checks them. Readiness is a real prediction: an exec probe posts
the archive's own warm-up sample to the model in the pod and wants a 200 with predictions.

Token auth is OFF in the pod (``disable_token_authorization``), by design: TorchServe makes its
keys at random when it starts, so the replicas of one InferenceService never share a key, and
neither Knative's probes nor KServe's clients can send one (pytorch/serve#3301). What protects
the endpoint instead: the management API listens on the pod's loopback only and the model API is
off (models load at start from the store, nothing can register another); the service is
cluster-local (``networking.knative.dev/visibility``) unless exported with ``public``; and
authentication belongs to the mesh in front (an Istio ``AuthorizationPolicy`` on the predictor's
pods, a NetworkPolicy): docs/fleet.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from servegate.archive_fetch import fetch_verified_archive
from servegate.artifact_urls import MATCH_NOTHING
from servegate.config import server_request_size
from servegate.errors import ConfigError, PipelineError
from servegate.naming import validate_name, validate_version
from servegate.registry import CHALLENGER, CHAMPION, Registry

RUNTIME = "servegate-torchserve"
MOUNT = "/mnt/models"
INFERENCE_PORT = 8080
MANAGEMENT_PORT = 8081
METRICS_PORT = 8082
#: The readiness probe: one real prediction through the v1 route, from inside the pod.
READINESS_SCRIPT = (
    "import json,sys,urllib.request as u;"
    "b=open(sys.argv[1],'rb').read();"
    "r=u.urlopen(u.Request(sys.argv[2],data=b,headers={'Content-Type':'application/json'}),timeout=4);"
    "sys.exit(0 if r.status==200 and 'predictions' in json.load(r) else 1)")
Protocol = Literal["v1", "v2"]
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


@dataclass(frozen=True)
class KServeOptions:
    """How the InferenceService runs: image, where the storage trees are uploaded, resources."""

    image: str
    storage_uri: str
    namespace: str = "default"
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0
    protocol: Protocol = "v1"
    canary_percent: int = 10
    min_replicas: int = 1
    max_replicas: int = 3
    #: Reachable from outside the cluster (else ``cluster-local``).
    public: bool = False

    def __post_init__(self) -> None:
        if not self.image or any(c.isspace() for c in self.image):
            raise ConfigError(f"image must be an image reference, got {self.image!r}")
        if not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", self.storage_uri):
            raise ConfigError(f"storage_uri must be a URI KServe's storage initializer reads "
                              f"(s3://, gs://, pvc://, https://...), got {self.storage_uri!r}")
        if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", self.namespace):
            raise ConfigError(f"namespace {self.namespace!r} is not a Kubernetes namespace name")
        for what, value in (("cpu", self.cpu), ("memory", self.memory)):
            if not _QUANTITY.match(value):
                raise ConfigError(f"{what} must be a Kubernetes quantity (e.g. 500m, 2Gi), got {value!r}")
        if self.gpus < 0 or not 0 < self.canary_percent < 100:
            raise ConfigError("gpus must be at least 0 and canary_percent between 1 and 99")
        if self.protocol not in ("v1", "v2"):
            raise ConfigError(f"protocol must be v1 or v2, got {self.protocol!r}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError("replicas: 1 <= min_replicas <= max_replicas")


def service_name(name: str) -> str:
    """A DNS-1035 label for the InferenceService (model names may hold ``_`` and capitals)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    label = label if label and label[0].isalpha() else f"m-{label}"
    return label[:45].rstrip("-")


def config_properties(name: str, version: str, *, gpus: int = 0) -> str:
    """TorchServe's ``config.properties`` inside the pod (see the module docstring)."""
    store = f"{MOUNT}/model-store"
    return "\n".join([
        "# servegate's TorchServe inside a KServe predictor pod (servegate export kserve).",
        "# Inference on the pod's port; management and gRPC on its loopback only; no model API.",
        f"inference_address=http://0.0.0.0:{INFERENCE_PORT}",
        f"management_address=http://127.0.0.1:{MANAGEMENT_PORT}",
        f"metrics_address=http://0.0.0.0:{METRICS_PORT}",
        "grpc_inference_address=127.0.0.1",
        "grpc_inference_port=7070",
        "grpc_management_address=127.0.0.1",
        "grpc_management_port=7071",
        f"model_store={store}",
        f"load_models={_archive(name, version)}",
        "enable_model_api=false",
        f"allowed_urls={MATCH_NOTHING}",
        "# Token auth off: replicas make their own random keys and KServe cannot send one",
        "# (pytorch/serve#3301); the mesh authenticates instead (docs/fleet.md).",
        "disable_token_authorization=true",
        "metrics_mode=prometheus",
        "default_workers_per_model=1",
        f"max_request_size={server_request_size()}",
        f"max_response_size={8 << 20}",
        "decode_input_request=false",
        "install_py_dep_per_model=false",
        "enable_envvars_config=false",
        "async_logging=true",
        f"number_of_gpu={gpus}",
        "vmargs=-Xmx1g -XX:+ExitOnOutOfMemoryError",
        "",
    ])


def _archive(name: str, version: str) -> str:
    from servegate.naming import archive_file_name

    return archive_file_name(name, version)


def serving_runtime(options: KServeOptions) -> dict[str, Any]:
    """The ``ServingRuntime`` (``serving.kserve.io/v1alpha1``)."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": RUNTIME, "namespace": options.namespace,
                     "labels": {"app.kubernetes.io/managed-by": "servegate"}},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(METRICS_PORT),
                            "prometheus.kserve.io/path": "/metrics"},
            # chosen by name only (runtime: servegate-torchserve), never auto-selected
            "supportedModelFormats": [{"name": "pytorch", "version": "1", "autoSelect": False}],
            "protocolVersions": ["v1", "v2"],
            "containers": [{
                "name": "kserve-container",
                "image": options.image,
                "args": ["torchserve", "--start", "--foreground", "--ncs",
                         f"--model-store={MOUNT}/model-store",
                         f"--ts-config={MOUNT}/config/config.properties"],
                "env": [{"name": "TMPDIR", "value": "/tmp"}, {"name": "TEMP", "value": "/tmp"},
                        {"name": "LOG_LOCATION", "value": "/tmp/logs"},
                        {"name": "METRICS_LOCATION", "value": "/tmp/logs"}],
                "workingDir": "/tmp",
                "ports": [{"containerPort": INFERENCE_PORT, "protocol": "TCP"}],
                "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": _resources(options),
            }],
        },
    }


def _resources(options: KServeOptions) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": options.cpu, "memory": options.memory}
    if options.gpus:
        limits["nvidia.com/gpu"] = str(options.gpus)
    return {"requests": dict(limits), "limits": limits}


def inference_service(name: str, version: str, options: KServeOptions, *,
                      canary: bool = False) -> dict[str, Any]:
    """The ``InferenceService`` (``serving.kserve.io/v1beta1``) serving ``version`` of ``name``;
    ``canary``: as the new revision taking ``canary_percent`` of the traffic."""
    labels = {"app.kubernetes.io/managed-by": "servegate", "servegate.model": service_name(name),
              "servegate.version": validate_version(version)}
    if not options.public:
        # the first is read in Knative mode (Istio ingress), the second by the other ingresses
        labels["networking.knative.dev/visibility"] = "cluster-local"
        labels["networking.kserve.io/visibility"] = "cluster-local"
    predictor: dict[str, Any] = {
        "minReplicas": options.min_replicas,
        "maxReplicas": options.max_replicas,
        "model": {
            "runtime": RUNTIME,
            "modelFormat": {"name": "pytorch"},
            "protocolVersion": options.protocol,
            "storageUri": f"{options.storage_uri.rstrip('/')}/v{version}",
            "resources": _resources(options),
            "readinessProbe": {
                "exec": {"command": [
                    "python3", "-c", READINESS_SCRIPT, f"{MOUNT}/config/readiness.json",
                    f"http://127.0.0.1:{INFERENCE_PORT}/v1/models/{validate_name(name)}:predict"]},
                "initialDelaySeconds": 5, "periodSeconds": 10, "timeoutSeconds": 5,
                "failureThreshold": 3},
        },
    }
    if canary:
        predictor["canaryTrafficPercent"] = options.canary_percent
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": service_name(name), "namespace": options.namespace, "labels": labels,
                     # canaryTrafficPercent splits traffic between Knative revisions
                     "annotations": {"serving.kserve.io/deploymentMode": "Knative"}},
        "spec": {"predictor": predictor},
    }


@dataclass(frozen=True)
class Exported:
    directory: Path
    champion: str
    challenger: str | None
    files: list[Path]


def export(name: str, options: KServeOptions, out: Path, *, alias: str = CHAMPION,
           registry: Registry | None = None) -> Exported:
    """Write the manifests and storage trees of ``name``'s ``alias`` (the champion by default)
    and, when ``alias`` is the champion, of its registered challenger as the canary."""
    validate_name(name)
    registry = registry or Registry.for_model(name)
    version = registry.version_for_alias(alias)
    if version is None:
        raise PipelineError(f"{name} has no version with the alias {alias!r}")
    challenger = registry.version_for_alias(CHALLENGER) if alias == CHAMPION else None
    challenger = None if challenger == version else challenger
    out.mkdir(parents=True, exist_ok=True)
    files = [_write_yaml(out / "servingruntime.yaml", serving_runtime(options)),
             _write_yaml(out / "inferenceservice.yaml", inference_service(name, version, options))]
    files += _storage(registry, name, version, options, out / "storage" / f"v{version}")
    if challenger is not None:
        files.append(_write_yaml(out / "inferenceservice-canary.yaml",
                                 inference_service(name, challenger, options, canary=True)))
        files += _storage(registry, name, challenger, options, out / "storage" / f"v{challenger}")
    return Exported(out, version, challenger, files)


def _write_yaml(path: Path, manifest: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path


def _storage(registry: Registry, name: str, version: str, options: KServeOptions,
             root: Path) -> list[Path]:
    """``config/config.properties``, ``config/readiness.json`` and ``model-store/<archive>``."""
    from servegate.packaging.mar import WARMUP_FILE, read_archive_member

    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "model-store").mkdir(exist_ok=True)
    archive = root / "model-store" / _archive(name, version)
    fetch_verified_archive(registry, name, version, archive, what="export")
    try:
        sample = json.loads(read_archive_member(archive, WARMUP_FILE))
    except KeyError as exc:
        raise PipelineError(f"{name} v{version}: its archive has no {WARMUP_FILE} for the "
                            "readiness probe (built before servegate recorded one)") from exc
    properties = root / "config" / "config.properties"
    properties.write_text(config_properties(name, version, gpus=options.gpus), encoding="utf-8")
    readiness = root / "config" / "readiness.json"
    readiness.write_text(json.dumps(sample), encoding="utf-8")
    return [properties, readiness, archive]
