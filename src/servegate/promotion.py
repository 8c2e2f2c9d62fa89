"""Crash-safe moves of the champion: the registry alias and the server's default together.

Order: (1) the registered model is tagged ``servegate.promotion=in-progress kind=... from=X
to=Y previous=P``; (2) the registry moves (``champion`` -> Y, ``previous-champion`` -> X);
(3) the server's default moves to Y; (4) the tag says ``done``. A failure of (3) puts the
registry back (and the server default, if it moved), so the two never disagree for long; the
whole section holds SIGTERM/SIGINT until it ends (``interrupts.critical``).

Only a hard kill (SIGKILL, a lost machine) can stop it half-way: the tag then still says
``in-progress``, and ``repair`` (called by the next run and by ``servegate rollback``)
finishes the move when the server still serves Y, or reverts it otherwise, reporting which in the
console, on the registered model's tag and on the active MLflow run
(``servegate.promotion_repair``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from servegate import tracking
from servegate.errors import IntegrityError, PipelineError
from servegate.interrupts import critical
from servegate.lease import current_owner, live_owners
from servegate.registry import (
    ARCHIVE_SHA256_TAG,
    ARCHIVE_TAG,
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    Registry,
)

PROMOTION_TAG = "servegate.promotion"
REPAIR_RUN_TAG = "servegate.promotion_repair"
IN_PROGRESS = "in-progress"

Say = Callable[[str], None]


def _v(version: str | None) -> str:
    return "none" if version is None else version


@dataclass(frozen=True)
class Move:
    """One move of the champion: before, ``champion``=``source`` and ``previous-champion``=
    ``previous``; after, ``champion``=``target`` and ``previous-champion``=``source`` (when
    there was one and it differs from the target)."""

    kind: str  # "promotion" | "rollback"
    source: str | None
    target: str
    previous: str | None
    #: The registry lease owner (``servegate.lease``) of the runner making the move.
    owner: str | None = None

    def describe(self) -> str:
        return f"kind={self.kind} from={_v(self.source)} to={self.target} previous={_v(self.previous)}"

    def in_progress_tag(self) -> str:
        return (f"{IN_PROGRESS} {self.describe()} owner={_v(self.owner)} pid={os.getpid()} "
                f"host={socket.gethostname()} at={datetime.now(UTC).isoformat(timespec='seconds')}")

    @classmethod
    def parse(cls, text: str) -> Move | None:
        """The move an ``in-progress`` tag records (None for any other tag value)."""
        if not text.startswith(IN_PROGRESS + " "):
            return None
        fields = dict(part.split("=", 1) for part in text.split()[1:] if "=" in part)
        try:
            target = fields["to"]
        except KeyError:
            return None

        def version(key: str) -> str | None:
            value = fields.get(key, "none")
            return None if value == "none" else value

        return cls(fields.get("kind", "promotion"), version("from"), target, version("previous"),
                   version("owner"))


def pending_move(registry: Registry) -> Move | None:
    """The interrupted move recorded on the registered model, if any."""
    return Move.parse(registry.model_tags().get(PROMOTION_TAG, ""))


def _registry_after(registry: Registry, move: Move) -> None:
    if move.source is not None and move.source != move.target:
        registry.set_alias(PREVIOUS, move.source)
    registry.set_alias(CHAMPION, move.target)


def _registry_before(registry: Registry, move: Move) -> None:
    if move.source is None:
        registry.delete_alias(CHAMPION)
    else:
        registry.set_alias(CHAMPION, move.source)
    if move.previous is None:
        registry.delete_alias(PREVIOUS)
    else:
        registry.set_alias(PREVIOUS, move.previous)


def move_champion(registry: Registry, backend: Any, name: str, target: str, *,
                  kind: str = "promotion") -> Move:
    """Make ``target`` the champion: registry first, then the server; a failure of the server
    step puts the registry (and the server default) back and re-raises."""
    move = Move(kind, registry.version_for_alias(CHAMPION), target,
                registry.version_for_alias(PREVIOUS), current_owner(name))
    with critical():
        registry.set_model_tag(PROMOTION_TAG, move.in_progress_tag())
        _registry_after(registry, move)
        try:
            backend.set_default(name, target)
        except Exception as exc:
            try:
                _registry_before(registry, move)
            except Exception as undo:  # the tag stays in-progress: the next run repairs it
                raise PipelineError(f"{kind} of {name} v{target} failed on the server ({exc}) and "
                                    f"putting the registry back failed too ({undo}); the next "
                                    "run or `servegate rollback` repairs it") from exc
            try:
                if move.source is not None and backend.default_version(name) != move.source:
                    backend.set_default(name, move.source)
            except Exception as undo:  # e.g. a fleet's replica down: the tag stays in-progress
                raise PipelineError(f"{kind} of {name} v{target} failed on the server ({exc}); the "
                                    f"registry is back at v{_v(move.source)}, but the server's "
                                    f"default could not be checked or put back ({undo}); the next "
                                    "run, `servegate reconcile` or `servegate rollback` repairs "
                                    "it") from exc
            registry.set_model_tag(PROMOTION_TAG, f"reverted {move.describe()}: server step "
                                                  f"failed: {exc}")
            raise
        if kind == "promotion" and registry.version_for_alias(CHALLENGER) == target:
            registry.delete_alias(CHALLENGER)
        registry.set_model_tag(PROMOTION_TAG, f"done {move.describe()}")
    return move


def repair(registry: Registry, backend: Any, name: str, say: Say, *,
           prefer: Literal["finish", "revert"] = "finish") -> str | None:
    """Finish or revert an interrupted move; return "finished", "reverted", "left" or None
    (nothing was interrupted).

    ``finish`` is chosen when asked for (``prefer``), the registry already names the target and
    the server still serves it with a READY worker; otherwise the move is reverted. A champion
    that is neither end of the move (changed by hand since), or a move whose runner still holds
    its registry lease (``servegate.lease``: it is alive and may be mid-move), is left alone.
    """
    move = pending_move(registry)
    if move is None:
        return None
    with critical():
        champion = registry.version_for_alias(CHAMPION)
        served = {v.version: v for v in backend.versions(name)}
        default = next((v.version for v in served.values() if v.is_default), None)
        target_ready = move.target in served and served[move.target].ready_workers > 0
        if move.owner not in (None, current_owner(name)) and move.owner in live_owners(registry):
            outcome, why = "left", (f"its runner (lease owner {move.owner}) still holds the "
                                    "registry lease: it is alive and finishes or reverts it itself")
            say(f"[yellow]repair: interrupted {move.kind} of {name} {outcome}: {why}[/]")
            return outcome
        if champion not in (move.source, move.target):
            outcome, why = "left", (f"the champion is now v{champion}, neither end of it: "
                                    "nothing changed")
        elif prefer == "finish" and champion == move.target and target_ready:
            if default != move.target:
                backend.set_default(name, move.target)
            if move.kind == "promotion" and registry.version_for_alias(CHALLENGER) == move.target:
                registry.delete_alias(CHALLENGER)
            outcome, why = "finished", (f"the registry already named v{move.target} and the server "
                                        f"serves it: the server default moved from "
                                        f"v{_v(default)} to it")
        else:
            _registry_before(registry, move)
            if move.source is not None and move.source in served and default != move.source:
                backend.set_default(name, move.source)
            reason = ("asked to revert" if prefer == "revert" else
                      "the registry had not moved yet" if champion == move.source else
                      f"the server no longer serves v{move.target}")
            outcome, why = "reverted", (f"{reason}: the champion is v{_v(move.source)} again")
        message = (f"interrupted {move.kind} of {name} (v{_v(move.source)} -> v{move.target}) "
                   f"{outcome}: {why}")
        registry.set_model_tag(PROMOTION_TAG, f"{outcome} by repair {move.describe()}")
        tracking.tag_active_run(REPAIR_RUN_TAG, message)
        say(f"[yellow]repair: {message}[/]")
        return outcome


# ---- the decisions the pipeline and `servegate rollback` take on a model's versions ------------
def promote(registry: Registry, backend: Any, name: str, version: str, say: Say) -> None:
    """Registry first, then the server default, crash-safe; versions other than the new
    champion and the one kept for rollback leave the server."""
    previous = move_champion(registry, backend, name, version, kind="promotion").source
    previous = None if previous == version else previous
    remove_orphans(backend, name, {version, previous}, say)
    say(f"promote: {name} v{version} is the champion"
        + (f" (v{previous} kept for rollback)" if previous else ""))


def reject(registry: Registry, backend: Any, name: str, version: str, failures: str,
           say: Say) -> None:
    """The challenger leaves the server and its alias; its version records why."""
    if any(v.version == version for v in backend.versions(name)):
        backend.undeploy(name, version)
    registry.delete_alias(CHALLENGER)
    registry.tag(version, {"servegate.gate": "failed", "servegate.failed_checks": failures})
    say(f"reject: {name} v{version} removed from the server; the champion is untouched")


def withdraw(registry: Registry, backend: Any, name: str, version: str, say: Say) -> None:
    """A step failed after deploy: take the challenger off the server unless it is the
    default; a first deployment's challenger (the default only because it is the sole
    version, not the registry's champion) goes too. Best effort: a failure is reported."""
    from servegate.errors import ServerError

    try:
        served = backend.versions(name)
        for info in served:
            if info.version != version:
                continue
            if not info.is_default or (len(served) == 1
                                       and registry.version_for_alias(CHAMPION) != version):
                backend.undeploy(name, version)
    except (ServerError, PipelineError) as exc:  # PipelineError: the registry failing
        say(f"[red]could not withdraw v{version}: {exc}[/]")


def remove_orphans(backend: Any, name: str, keep: set[str | None], say: Say) -> None:
    """Unregister served versions that are neither kept nor the default."""
    for info in backend.versions(name):
        if info.version not in keep and not info.is_default:
            say(f"deploy: removing orphaned version v{info.version}")
            backend.undeploy(name, info.version)


def restore(registry: Registry, backend: Any, name: str, version: str, workers: int,
            say: Say) -> None:
    """Serve ``version`` again from its logged artifact (``servegate.archive``), only when the
    sha256 recorded when it was built (``servegate.archive_sha256``) matches the downloaded copy
    AND the bytes where the server loads them, checked immediately before registration. The tags
    are a registry writer's: the URI is checked by ``artifact_access`` before it is fetched, and a
    missing hash is a refusal unless the operator set ``SERVEGATE_ALLOW_UNVERIFIED_RESTORE``."""
    import tempfile
    from pathlib import Path

    from servegate.artifact_access import download
    from servegate.config import allow_unverified_restore
    from servegate.integrity import verify_artifact

    tags = registry.tags(version)
    uri = tags.get(ARCHIVE_TAG)
    if not uri:
        raise PipelineError(f"{name} v{version} has no archive to restore ({ARCHIVE_TAG})")
    expected = tags.get(ARCHIVE_SHA256_TAG)
    if not expected and not allow_unverified_restore():
        raise IntegrityError(f"{name} v{version} records no {ARCHIVE_SHA256_TAG}: refusing to serve "
                             "an archive nobody can check (built before hashes were recorded, or "
                             "the tag was removed). Re-run the pipeline on it, or set "
                             "SERVEGATE_ALLOW_UNVERIFIED_RESTORE=1 if you trust the artifact store")
    with tempfile.TemporaryDirectory() as tmp:
        local = download(uri, Path(tmp), what=f"the archive of {name} v{version}")
        if expected:
            verify_artifact(local, expected, f"{name} v{version} ({uri})")
        else:
            say(f"[yellow]restore: {name} v{version} has no {ARCHIVE_SHA256_TAG}: restored "
                "unchecked (SERVEGATE_ALLOW_UNVERIFIED_RESTORE)[/]")
        backend.deploy(local, name, version, workers=workers, source_uri=uri,
                       sha256=expected or None)


def rollback(registry: Registry, backend: Any, name: str, workers: int,
             say: Say) -> tuple[str, str]:
    """The previous champion back (restored onto the server from its artifact if the server
    lost it): registry alias and server default together; return (restored, demoted). An
    interrupted promotion is reverted instead (that IS the rollback); an interrupted rollback
    is finished. The caller holds the model name's lock."""
    pending = pending_move(registry)
    if pending is not None:
        prefer: Literal["finish", "revert"] = "finish" if pending.kind == "rollback" else "revert"
        repair(registry, backend, name, say, prefer=prefer)
        champion = registry.version_for_alias(CHAMPION)
        if champion is None:
            raise PipelineError(f"{name} has no champion after the repair")
        return champion, pending.target if prefer == "revert" else (pending.source or "none")
    restored = registry.version_for_alias(PREVIOUS)
    demoted = registry.version_for_alias(CHAMPION)
    if restored is None or demoted is None:
        raise PipelineError(f"{name} has no previous champion to roll back to")
    if not any(v.version == restored for v in backend.versions(name)):
        restore(registry, backend, name, restored, workers, say)
    move_champion(registry, backend, name, restored, kind="rollback")
    return restored, demoted


# ---- the run's own moves: making room for a challenger, and its end -------------------------------
def make_room(registry: Registry, backend: Any, name: str, version: str, workers: int,
              say: Say) -> str | None:
    """Before ``version`` is deployed: the registry's champion serves the default (restored
    first if the server lost it), an older copy of ``version`` leaves, orphans go. Return the
    champion (None on a first run)."""
    champion = registry.version_for_alias(CHAMPION)
    if champion == version:
        raise PipelineError(f"{name} v{version} is already the champion")
    served = {v.version for v in backend.versions(name)}
    if champion is not None and champion not in served:
        say(f"deploy: restoring champion v{champion} on the server")
        restore(registry, backend, name, champion, workers, say)
    if champion is not None:
        default = backend.default_version(name)
        if default not in (None, champion):
            say(f"[yellow]deploy: the server's default was v{default}, the registry's champion "
                f"is v{champion}: the server follows the registry[/]")
        backend.set_default(name, champion)
    if version in served:  # e.g. the previous champion, gated again: serve the new archive
        say(f"deploy: {name} v{version} is served from an earlier archive; replacing it")
        backend.undeploy(name, version)
    remove_orphans(backend, name, {champion, registry.version_for_alias(PREVIOUS)} - {version}, say)
    return champion


def decide(registry: Registry, backend: Any, name: str, version: str, failures: list[str],
           promote_it: bool, say: Say) -> str:
    """The gate's outcome carried out: ``rejected`` (the challenger leaves), ``promoted``, or
    ``passed, not promoted`` (gate only); the registry version records it."""
    if failures:
        reject(registry, backend, name, version, "; ".join(failures), say)
        return "rejected"
    registry.tag(version, {"servegate.gate": "passed"})
    if promote_it:
        promote(registry, backend, name, version, say)
        return "promoted"
    return "passed, not promoted"


def abandon(registry: Registry, backend: Any, name: str, version: str, deployed: bool,
            reason: str, say: Say) -> None:
    """After a signal: the challenger leaves the server (if it was deployed) and its alias;
    its version records why. Best effort: what cannot be done now, the next run repairs."""
    try:
        if deployed and backend is not None:
            withdraw(registry, backend, name, version, say)
        if registry.version_for_alias(CHALLENGER) == version:
            registry.delete_alias(CHALLENGER)
        if registry.version_for_alias(CHAMPION) != version:
            registry.tag(version, {"servegate.gate": f"interrupted ({reason})"})
    except Exception as cleanup:  # noqa: BLE001 (report, then end the run anyway)
        say(f"[red]cleanup after {reason} incomplete: {cleanup}[/]")
