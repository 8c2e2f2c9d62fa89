"""Open the server a pipeline run targets: attach to a configured one, or start a local one.

``server`` mode (``PipelineConfig.server``): ``auto`` attaches when ``SERVEGATE_TORCHSERVE_*`` /
``SERVEGATE_TFSERVING_*`` name a server and starts a local one otherwise; ``attach`` refuses to
start anything (a promotion workflow must promote where production is, never onto a server that
lives as long as its runner); ``local`` ignores the attach variables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servegate.config import (
    ServerMode,
    TFServingAttach,
    TorchServeAttach,
    TorchServeSettings,
    allow_insecure_http,
    attach_refused,
    tracking_ca_bundle,
)
from servegate.errors import ConfigError, ServerError

if TYPE_CHECKING:
    from servegate.backends.tfserving import TFServingBackend, TFServingSettings


def open_torchserve(settings: TorchServeSettings, mode: ServerMode = "auto") -> Any:
    """A ``TorchServeBackend``: the attached server, or the local one (started if need be);
    a ``FleetBackend`` when ``SERVEGATE_TORCHSERVE_REPLICAS`` lists a fleet."""
    from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend

    attach = TorchServeAttach.from_env() if mode != "local" else None
    if attach is not None and attach.replicas:
        return open_fleet(attach)
    if attach is not None:
        return _attached(attach.inference_url, attach.management_url, attach.key_file,
                         attach.keys, attach.model_store, attach.metrics_url, attach.ca_bundle,
                         TorchServeAttach.KEYS_ENV)
    if mode == "attach":
        raise ConfigError(attach_refused(
            "TorchServe", f"{TorchServeAttach.PREFIX}MANAGEMENT_URL, ..._INFERENCE_URL and "
                          f"{TorchServeAttach.KEYS_ENV} (its key_file.json content) or ..._KEY_FILE "
                          f"(or a fleet in {TorchServeAttach.REPLICAS_ENV})"))
    return TorchServeBackend.from_state(LocalTorchServe(settings).start())


def _attached(inference_url: str, management_url: str, key_file: Any, keys: Any,
              model_store: Any, metrics_url: str, ca_bundle: Any, keys_source: str) -> Any:
    """A ``TorchServeBackend`` attached to one server, both APIs and keys checked first."""
    from servegate.backends.torchserve import TorchServeBackend
    from servegate.backends.torchserve.keys import StaticKeys

    given: Any = key_file
    if keys is not None:
        given = StaticKeys(keys.get_secret_value(), keys_source)
    backend = TorchServeBackend.attach(inference_url, management_url, keys=given,
                                       model_store=model_store, metrics_url=metrics_url,
                                       ca_bundle=ca_bundle,
                                       allow_insecure_http=allow_insecure_http(),
                                       tracking_ca_bundle=tracking_ca_bundle())
    try:  # both APIs and both keys, checked before anything is built
        backend.client.health()
        backend.client.list_models()
    except ServerError:
        backend.close()
        raise
    return backend


def open_fleet(attach: TorchServeAttach) -> Any:
    """A ``FleetBackend`` over ``attach.replicas`` (every replica checked; one that does not
    answer is a ``ReplicaFailed`` naming it, and nothing is opened)."""
    from servegate.backends.torchserve.fleet import FleetBackend, Replica
    from servegate.errors import ReplicaFailed

    opened: list[Replica] = []
    try:
        for i, r in enumerate(attach.replicas):
            try:
                backend = _attached(r.inference_url, r.management_url, r.key_file, r.keys,
                                    r.model_store, r.metrics_url, attach.ca_bundle,
                                    f"{TorchServeAttach.REPLICAS_ENV}[{i}].keys")
            except ServerError as exc:
                raise ReplicaFailed(f"attach to replica {r.management_url}: {exc}",
                                    replica=r.management_url) from exc
            opened.append(Replica(r.management_url, backend))
    except BaseException:
        for replica in opened:
            replica.backend.close()
        raise
    return FleetBackend(opened)


def open_tfserving(settings: TFServingSettings | None = None,
                   mode: ServerMode = "auto") -> TFServingBackend:
    """Attach when ``SERVEGATE_TFSERVING_URL`` is set (``mode`` not ``local``); otherwise start
    (or reuse) a local server, unless ``mode`` is ``attach`` (then ``ConfigError``)."""
    from servegate.backends.tfserving.deployer import TFServingBackend
    from servegate.backends.tfserving.local import (
        ENV_GRPC,
        ENV_MODEL_ROOT,
        ENV_URL,
        LocalTFServing,
    )

    configured = TFServingAttach.from_env() if mode != "local" else None
    if configured is not None:
        return TFServingBackend.attach(configured.url, configured.grpc, configured.model_root,
                                       configured.server_root, ca_bundle=configured.ca_bundle)
    if mode == "attach":
        raise ConfigError(attach_refused("TF Serving", f"{ENV_URL}, {ENV_GRPC} and {ENV_MODEL_ROOT}"))
    return TFServingBackend.from_state(LocalTFServing(settings).start())
