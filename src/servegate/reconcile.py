"""``servegate reconcile NAME``: bring the server (every replica of a fleet) to the registry's
champion, without gating anything.

Under the model name's lock and registry lease (as a run and a rollback): an interrupted move is
finished or reverted first (``promotion.repair``); then the champion is restored from its
verified archive where a server (a replica that came back empty after a restart) lacks it, and
made the default everywhere. A run does the same in its deploy step; this is for when no run is
due.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from servegate import promotion
from servegate.backends.base import ServingBackend
from servegate.errors import PipelineError
from servegate.lease import model_lease
from servegate.locks import model_lock
from servegate.registry import CHAMPION, Registry

Say = Callable[[str], None]


@dataclass(frozen=True)
class Reconciled:
    """What ``reconcile`` found and did."""

    champion: str
    restored: bool
    default_moved: bool

    def describe(self, name: str) -> str:
        if not (self.restored or self.default_moved):
            return f"{name}: the server already serves champion v{self.champion} as its default"
        done = (["restored where it was missing"] if self.restored else []) + \
               (["made the default"] if self.default_moved else [])
        return f"{name}: champion v{self.champion} " + " and ".join(done)


def reconcile(registry: Registry, backend: ServingBackend, name: str, workers: int,
              say: Say) -> Reconciled:
    """The champion served and the default (see the module's docstring). The caller holds the
    model name's lock and lease (``reconcile_locked`` takes them)."""
    promotion.repair(registry, backend, name, say, prefer="finish")
    champion = registry.version_for_alias(CHAMPION)
    if champion is None:
        raise PipelineError(f"{name} has no champion in the registry: nothing to reconcile")
    restored = not any(v.version == champion for v in backend.versions(name))
    if restored:
        say(f"reconcile: restoring champion v{champion} where the server lacks it")
        promotion.restore(registry, backend, name, champion, workers, say)
    moved = backend.default_version(name) != champion
    if moved:
        backend.set_default(name, champion)
    return Reconciled(champion, restored, moved)


def reconcile_locked(backend: ServingBackend, name: str, workers: int, say: Say) -> Reconciled:
    """``reconcile`` under the model name's lock on this host and its registry lease."""
    from servegate.interrupts import signals_as_errors

    with model_lock(name), signals_as_errors(), model_lease(name):
        return reconcile(Registry.for_model(name), backend, name, workers, say)
