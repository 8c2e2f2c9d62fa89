"""``FleetBackend``: several replicas of one server behind one ``ServingBackend``.

Each replica is a backend of its own (a ``TorchServeBackend`` per TorchServe process or pod).
The fleet keeps them in step, all or none:

- ``deploy`` puts a version on every replica that lacks it, in parallel; if one fails, the
  replicas this call reached drop it again, and ``ReplicaFailed`` names the one that failed;
- ``set_default`` moves every replica's default; a replica that fails moves the others back to
  their own previous default, and ``ReplicaFailed`` names it (and any that could not move back);
- ``versions`` lists a version only when EVERY replica serves it (a replica that came back
  empty makes the champion "not served", so the next run, or ``servegate reconcile``,
  restores it there), its default only when it is every replica's default;
- ``undeploy`` removes a version from every replica that serves it;
- ``predict`` goes round-robin, so the parity gate's requests reach every replica, and
  ``access`` lists every replica, so Locust loads them all (``ServerAccess.replicas``).

A replica that does not answer fails every step (``ServerNotRunning``): the fleet never
promotes around one it cannot see.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from servegate.backends.base import ReplicaAccess, ServerAccess, VersionInfo
from servegate.errors import ReplicaFailed, ServerError

T = TypeVar("T")


class ReplicaBackend(Protocol):
    """What the fleet needs of each replica: a ``ServingBackend`` with ``default_version``."""

    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1,
               source_uri: str | None = None, sha256: str | None = None) -> None: ...
    def set_default(self, name: str, version: str) -> None: ...
    def undeploy(self, name: str, version: str) -> None: ...
    def versions(self, name: str) -> list[VersionInfo]: ...
    def default_version(self, name: str) -> str | None: ...
    def names(self) -> list[str]: ...
    def predict(self, name: str, payload: Any, version: str | None = None) -> Any: ...
    def endpoint(self, name: str, version: str | None = None) -> str: ...
    def ping(self) -> bool: ...
    def access(self) -> ServerAccess: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Replica:
    """One member of the fleet: a label for people (its management URL) and its backend."""

    label: str
    backend: ReplicaBackend


class FleetBackend:
    """Every replica in step: see the module's docstring."""

    def __init__(self, replicas: Sequence[Replica], kind: str = "torchserve") -> None:
        if not replicas:
            raise ValueError("a fleet needs at least one replica")
        self.replicas = list(replicas)
        self.kind = kind
        self._next = itertools.cycle(range(len(self.replicas)))

    def _each(self, action: str, call: Callable[[Replica], T]) -> list[T]:
        """``call`` on every replica in order; the first failure becomes ``ReplicaFailed``."""
        results = []
        for replica in self.replicas:
            try:
                results.append(call(replica))
            except ServerError as exc:
                raise ReplicaFailed(f"{action}: replica {replica.label} failed: {exc}",
                                    replica=replica.label) from exc
        return results

    # ---- reads -----------------------------------------------------------------------------
    def replica_versions(self, name: str) -> dict[str, list[VersionInfo]]:
        """Each replica's own versions of ``name``, by label."""
        return dict(zip((r.label for r in self.replicas),
                        self._each(f"list the versions of {name}", lambda r: r.backend.versions(name)),
                        strict=True))

    def versions(self, name: str) -> list[VersionInfo]:
        per_replica = list(self.replica_versions(name).values())
        common = set.intersection(*({v.version for v in infos} for infos in per_replica))
        merged = []
        for version in sorted(common, key=_version_key):
            infos = [next(v for v in vs if v.version == version) for vs in per_replica]
            merged.append(VersionInfo(name, version, all(v.is_default for v in infos),
                                      min(v.ready_workers for v in infos),
                                      min(v.workers for v in infos)))
        return merged

    def names(self) -> list[str]:
        """The model names any replica serves (a name on some replicas only is listed too: it
        is deployed, if incompletely)."""
        return sorted(set().union(*self._each("list the served models", lambda r: r.backend.names())))

    def default_version(self, name: str) -> str | None:
        """The default every replica agrees on, else None."""
        defaults = set(self._each(f"read the default of {name}",
                                  lambda r: r.backend.default_version(name)))
        return defaults.pop() if len(defaults) == 1 else None

    # ---- changes, all or none ----------------------------------------------------------------
    def deploy(self, artifact: Path, name: str, version: str, *, workers: int = 1,
               source_uri: str | None = None, sha256: str | None = None) -> None:
        """On every replica that lacks ``version``, all at once (one serving it as its default
        keeps it: the champion restored on the others; one serving it otherwise gets this
        archive instead); if any fails, the replicas this call reached drop it again."""
        def place(replica: Replica) -> bool:
            served = {v.version: v for v in replica.backend.versions(name)}
            if version in served and served[version].is_default:
                return False
            if version in served:
                replica.backend.undeploy(name, version)
            replica.backend.deploy(artifact, name, version, workers=workers,
                                   source_uri=source_uri, sha256=sha256)
            return True

        with ThreadPoolExecutor(max_workers=len(self.replicas)) as pool:
            futures = [(replica, pool.submit(place, replica)) for replica in self.replicas]
        placed: list[Replica] = []
        failed: list[tuple[Replica, Exception]] = []
        for replica, future in futures:
            try:
                if future.result():
                    placed.append(replica)
            except Exception as exc:  # noqa: BLE001 (undone below, then raised)
                failed.append((replica, exc))
        if not failed:
            return
        undone = self._undo(placed, lambda r: r.backend.undeploy(name, version))
        replica, cause = failed[0]
        if not isinstance(cause, ServerError):  # e.g. IntegrityError: its own kind, as it was
            raise cause
        others = "".join(f"; replica {r.label} failed too: {e}" for r, e in failed[1:])
        raise ReplicaFailed(f"deploy {name} v{version}: replica {replica.label} failed: {cause}"
                            f"{others}{undone}", replica=replica.label) from cause

    def set_default(self, name: str, version: str) -> None:
        """Every replica's default to ``version``, or none: see the module's docstring."""
        before = dict(zip((r.label for r in self.replicas),
                          self._each(f"read the default of {name}",
                                     lambda r: r.backend.default_version(name)), strict=True))
        moved: list[Replica] = []
        for replica in self.replicas:
            try:
                if before[replica.label] != version:
                    replica.backend.set_default(name, version)
                    moved.append(replica)
            except ServerError as exc:
                undone = self._undo(
                    [r for r in moved if before[r.label] is not None],
                    lambda r: r.backend.set_default(name, before[r.label]))  # type: ignore[arg-type]
                raise ReplicaFailed(
                    f"make {name} v{version} the default: replica {replica.label} failed: {exc}"
                    f"{undone}", replica=replica.label) from exc

    def undeploy(self, name: str, version: str) -> None:
        """Off every replica serving it; every replica is tried, the first failure is raised."""
        failures: list[tuple[Replica, ServerError]] = []
        for replica in self.replicas:
            try:
                if any(v.version == version for v in replica.backend.versions(name)):
                    replica.backend.undeploy(name, version)
            except ServerError as exc:
                failures.append((replica, exc))
        if failures:
            first, cause = failures[0]
            others = "".join(f"; replica {r.label} failed too: {e}" for r, e in failures[1:])
            raise ReplicaFailed(f"unregister {name} v{version}: replica {first.label} failed: "
                                f"{cause}{others}", replica=first.label) from cause

    @staticmethod
    def _undo(replicas: list[Replica], step: Callable[[Replica], None]) -> str:
        """Put ``replicas`` back (best effort, in reverse order); what could not be, in words."""
        failed = []
        for replica in reversed(replicas):
            try:
                step(replica)
            except ServerError as exc:
                failed.append(f"{replica.label} ({exc})")
        if not replicas:
            return ""
        if not failed:
            return f"; the other replicas were put back ({len(replicas)})"
        return "; could NOT put back: " + ", ".join(failed)

    # ---- traffic ------------------------------------------------------------------------------
    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        """Round-robin over the replicas (the parity gate's rows reach each of them)."""
        return self.replicas[next(self._next)].backend.predict(name, payload, version)

    def endpoint(self, name: str, version: str | None = None) -> str:
        """The first replica's URL (a fleet behind a load balancer: that balancer's, by hand)."""
        return self.replicas[0].backend.endpoint(name, version)

    def ping(self) -> bool:
        return all(r.backend.ping() for r in self.replicas)

    def access(self) -> ServerAccess:
        first = self.replicas[0].backend.access()
        each = [r.backend.access() for r in self.replicas]
        where = (f"fleet of {len(self.replicas)} replicas: "
                 + "; ".join(a.where for a in each))
        return ServerAccess(inference_url=first.inference_url, inference_key=first.inference_key,
                            key_shell=first.key_shell, where=where, ca_bundle=first.ca_bundle,
                            replicas=tuple(ReplicaAccess(a.inference_url, a.inference_key)
                                           for a in each))

    def close(self) -> None:
        for replica in self.replicas:
            replica.backend.close()

    def __enter__(self) -> FleetBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
