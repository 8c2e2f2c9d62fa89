"""``TFServingBackend``: the ``ServingBackend`` of TF Serving (SavedModels in, versions out).

Routing. TF Serving's unversioned URL always answers with the HIGHEST loaded version, so a new
version would take default traffic the moment it loads. servegate therefore routes through
version labels: ``stable`` is the default (the champion) and ``canary`` the challenger under
gate; ``endpoint(name)`` is ``/v1/models/{name}/labels/stable``. TF Serving only lets a label
point at a version that is already AVAILABLE, so a deploy is two config reloads: serve the new
version, wait until it is AVAILABLE (REST status API), then label it.

State. The desired state is ``<model_root>/models.config`` (a ``ModelServerConfig`` with the
``specific`` version policy), the file a local server is started with; every change is sent
whole with ``HandleReloadConfigRequest`` on the gRPC ModelService and written back only once the
server accepted it. A server you attach to must read its models from the same directory (or
URI: ``model_root.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from servegate.backends.base import ServerAccess, VersionInfo
from servegate.backends.model_root import LocalRoot, open_model_root
from servegate.backends.tfserving.client import TFServingClient, version_number
from servegate.backends.tfserving.config import (
    CANARY,
    MODELS_CONFIG,
    STABLE,
    ModelEntry,
    models_config_text,
    parse_models_config,
)
from servegate.backends.tfserving.local import ENV_MODEL_ROOT, HOW_TO_PROVIDE, TFServingState
from servegate.errors import (
    ConfigError,
    IntegrityError,
    ModelNotFound,
    ServerNotRunning,
    ServerStartError,
)
from servegate.naming import validate_name


class TFServingBackend:
    """``ServingBackend`` of TF Serving: versions are SavedModel directories in ``model_root``."""

    kind = "tfserving"

    def __init__(self, client: TFServingClient, model_root: str | Path, *,
                 server_root: str | None = None, ready_timeout_s: float = 120.0) -> None:
        self.client = client
        self.root = open_model_root(model_root)
        #: The root as a local path (None when it is a remote filesystem's URI).
        self.model_root = self.root.path if isinstance(self.root, LocalRoot) else None
        self.server_root = (server_root or self.root.location).rstrip("/")
        self.ready_timeout_s = ready_timeout_s

    @classmethod
    def from_state(cls, state: TFServingState) -> TFServingBackend:
        """The backend of a local server servegate started (``local.py``)."""
        return cls(state.client(), Path(state.model_root), server_root=state.server_root)

    @classmethod
    def attach(cls, rest_url: str, grpc_target: str | None = None,
               model_root: str | Path | None = None,
               server_root: str | None = None,
               ca_bundle: Path | None = None) -> TFServingBackend:
        """A TF Serving started elsewhere: REST URL, gRPC target (default: REST host, port 8500)
        and where it reads models from: a directory, or a URI of a filesystem TensorFlow writes
        (gs://, s3://, hdfs://) for a server on another host (``models.config`` there records
        what is deployed). With ``ca_bundle``, gRPC goes over TLS verified against it (and an
        ``https://`` REST URL too). ``ServerNotRunning`` when its REST API does not answer."""
        if grpc_target is None:
            grpc_target = f"{urlsplit(rest_url).hostname}:8500"
        if model_root is None:
            raise ConfigError(f"attaching to TF Serving needs {ENV_MODEL_ROOT}: the directory that "
                              "server reads models from")
        backend = cls(TFServingClient(rest_url, grpc_target, ca_bundle=ca_bundle), model_root,
                      server_root=server_root)
        if not backend.client.ping():
            backend.close()
            raise ServerNotRunning(f"no TF Serving answers at {rest_url}. {HOW_TO_PROVIDE}")
        return backend

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TFServingBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- desired state ------------------------------------------------------------------------
    def entries(self) -> dict[str, ModelEntry]:
        text = self.root.read_text(MODELS_CONFIG)
        return {} if text is None else {e.name: e for e in parse_models_config(text, MODELS_CONFIG)}

    def entry(self, name: str) -> ModelEntry | None:
        return self.entries().get(name)

    def _apply(self, entry: ModelEntry) -> None:
        """Send the whole configuration with ``entry`` changed (dropped if it has no version);
        the file is rewritten only once the server has accepted it."""
        entries = self.entries()
        if entry.versions:
            entries[entry.name] = entry
        else:
            entries.pop(entry.name, None)
        ordered = sorted(entries.values(), key=lambda e: e.name)
        self.client.reload_config(ordered)
        self.root.write_text(MODELS_CONFIG, models_config_text(ordered))

    def labels(self, name: str) -> dict[str, int]:
        entry = self.entry(name)
        return dict(entry.labels) if entry else {}

    # ---- ServingBackend -----------------------------------------------------------------------
    def _place(self, artifact: Path, name: str, version: int, sha256: str | None = None) -> None:
        """Put the SavedModel at ``<root>/<name>/<version>`` (a local root: via a hidden temp
        dir + rename; a remote one: copied in place, loaded only once models.config names it);
        with ``sha256``, the tree as placed there must hash to it (``IntegrityError``)."""
        relative = f"{validate_name(name)}/{version_number(version)}"
        artifact = Path(artifact).resolve()
        graph = "saved_model.pb"
        if not (artifact / graph).is_file():
            raise ConfigError(f"{artifact} is not a SavedModel directory (no saved_model.pb)")
        if not (self.model_root is not None and (self.model_root / relative).resolve() == artifact):
            existing = self.root.read_bytes(f"{relative}/{graph}")
            if existing is None:
                self.root.put_tree(artifact, relative)
            elif existing != (artifact / graph).read_bytes():
                raise ConfigError(f"{self.root.location}/{relative} already holds another "
                                  "SavedModel: versions are immutable, deploy a new version number")
        if sha256 is not None:
            placed = self.root.tree_sha256(relative)
            if placed != sha256:
                raise IntegrityError(f"{name} v{version} at {self.root.location}/{relative} hashes to "
                                     f"{placed}, but {sha256} was recorded when it was built; "
                                     "refusing to serve it")

    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1,
               source_uri: str | None = None, sha256: str | None = None) -> None:
        """Serve a NEW version: placed atomically (and verified against ``sha256`` where it is
        placed), loaded, AVAILABLE, then labelled ``canary`` (``stable`` if it is the model's
        first version). The stable route is untouched."""
        self._serve(artifact, name, version, sha256, labelled=True)

    def serve_unlabelled(self, artifact: Path, name: str, version: str) -> None:
        """Serve a NEW version as ``deploy`` does but give it no label: only its version route
        answers (``servegate tune``'s scratch versions)."""
        self._serve(artifact, name, version, None, labelled=False)

    def _serve(self, artifact: Path, name: str, version: str, sha256: str | None, *,
               labelled: bool) -> None:
        number = version_number(version)
        self._place(artifact, name, number, sha256)
        current = self.entry(name) or ModelEntry(name, f"{self.server_root}/{name}", ())
        versions = tuple(sorted({*current.versions, number}))
        # Labels may only name AVAILABLE versions: a server that lost our versions (restarted
        # without models.config) gets them back first, unlabelled, and its labels once loaded.
        available = self._available(name)
        safe = {k: v for k, v in current.labels.items() if v in available}
        self._apply(replace(current, versions=versions, labels=safe))
        try:
            for waiting in sorted({number, *current.labels.values()} - available):
                self.client.wait_state(name, waiting, {"AVAILABLE"},
                                       timeout_s=self.ready_timeout_s)
        except ServerStartError:
            self._apply(replace(current, labels=safe))  # a version that cannot load leaves again
            raise
        if not labelled:
            self._apply(replace(current, versions=versions))
            return
        labels = dict(current.labels)
        labels[CANARY if STABLE in labels and labels[STABLE] != number else STABLE] = number
        if labels.get(CANARY) == labels.get(STABLE):
            labels.pop(CANARY, None)
        self._apply(replace(current, versions=versions, labels=labels))

    def _available(self, name: str) -> set[int]:
        try:
            return {int(v) for v, state in self.client.status(name).items() if state == "AVAILABLE"}
        except ModelNotFound:
            return set()

    def set_default(self, name: str, version: str) -> None:
        """Promote: ``stable`` moves to ``version`` (and ``canary`` leaves it)."""
        number = version_number(version)
        current = self.entry(name)
        if current is None or number not in current.versions:
            raise ModelNotFound(f"promote {name} v{version}", status=404,
                                server_message="not deployed by servegate")
        labels = {k: v for k, v in current.labels.items() if not (k == CANARY and v == number)}
        labels[STABLE] = number
        self._apply(replace(current, labels=labels))

    def undeploy(self, name: str, version: str) -> None:
        """Unload ``version`` (never the stable one while others are served) and drop its labels;
        its files stay in the model root (a later deploy of the same version reuses them)."""
        number = version_number(version)
        current = self.entry(name)
        if current is None or number not in current.versions:
            return
        if current.labels.get(STABLE) == number and len(current.versions) > 1:
            raise ConfigError(f"{name} v{version} is the stable version: promote another first")
        versions = tuple(v for v in current.versions if v != number)
        labels = {k: v for k, v in current.labels.items() if v != number}
        self._apply(replace(current, versions=versions, labels=labels))
        self.client.wait_state(name, number, {"END"}, timeout_s=self.ready_timeout_s,
                               absent_ok=True)

    def versions(self, name: str) -> list[VersionInfo]:
        try:
            states = self.client.status(name)
        except ModelNotFound:
            return []
        stable = self.labels(name).get(STABLE)
        return [VersionInfo(name=name, version=v, is_default=stable == int(v),
                            ready_workers=int(state == "AVAILABLE"), workers=1)
                for v, state in sorted(states.items(), key=lambda kv: int(kv[0]))
                if state != "END"]

    def names(self) -> list[str]:
        """The models ``models.config`` names (the state servegate keeps for the server)."""
        return sorted(self.entries())

    def default_version(self, name: str) -> str | None:
        stable = self.labels(name).get(STABLE)
        return None if stable is None else str(stable)

    def _route(self, name: str, version: str | None) -> tuple[str | None, str | None]:
        if version is not None:
            return version, None
        return None, STABLE if STABLE in self.labels(name) else None

    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        """REST predict on ``version``, or the stable label (the default route); another label:
        ``client.predict(name, payload, label=...)``."""
        version, label = self._route(name, version)
        return self.client.predict(name, payload, version=version, label=label)

    def predict_grpc(self, name: str, inputs: dict[str, Any], version: str | None = None,
                     **kwargs: Any) -> dict[str, np.ndarray]:
        route_version, label = self._route(name, version)
        return self.client.predict_grpc(
            name, inputs, version=None if route_version is None else int(route_version),
            label=kwargs.pop("label", label), **kwargs)

    def endpoint(self, name: str, version: str | None = None) -> str:
        route_version, label = self._route(name, version)
        return self.client.predict_url(name, route_version, label)

    def ping(self) -> bool:
        return self.client.ping()

    def access(self) -> ServerAccess:
        return ServerAccess(inference_url=self.client.rest_url, inference_key=None, key_shell=None,
                            where=f"TF Serving at {self.client.rest_url} (models under {self.server_root})",
                            ca_bundle=str(self.client.ca_bundle) if self.client.ca_bundle else None)

    def next_version(self, name: str) -> int:
        """A version number never used for ``name`` here: above the configured, served and
        on-disk versions."""
        entry = self.entry(name)
        used = set(entry.versions if entry else ())
        used |= {int(v.version) for v in self.versions(name)}
        used |= {int(n) for n in self.root.list_dir(validate_name(name)) if n.isdigit()}
        return max(used, default=0) + 1

