"""One run per registered model across runners: a lease held in the MLflow registry.

The per-host ``flock`` (``servegate.locks``) cannot see another machine, so a run (and a rollback)
also holds a lease on the registered model: a tag ``servegate.lease.<owner>`` whose JSON value
says who holds it (host, pid, command, MLflow run) and until when. MLflow offers no
compare-and-set, so taking it is write-then-read:

1. write our own tag (expiring ``ttl_s`` from now);
2. read every lease tag: when ours is the only live one, we hold the lease; otherwise take ours
   back, and refuse (``Busy``, naming the holder) or retry after a random pause until ``wait_s``.

Two runners can never both hold it: each writes before it reads, so the later reader sees the
earlier writer (the registry's store serializes writes). Both may back off at once; the random
pause breaks the tie. A daemon thread refreshes the expiry every ``ttl_s / 4``; a runner that dies
stops refreshing and its lease lapses after ``ttl_s`` (a live runner's is never taken away).
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow.exceptions import MlflowException

from servegate.errors import Busy, RegistryError
from servegate.registry import Registry, is_not_found

LEASE_TAG_PREFIX = "servegate.lease."
#: How long a lease outlives its last refresh (a dead runner blocks others this long at most).
DEFAULT_TTL_S = 600.0
_held: dict[str, Lease] = {}  # registered model name -> the lease this process holds on it


@dataclass(frozen=True)
class LeaseRecord:
    """Who holds (or asks for) the lease, and until when (Unix seconds)."""

    owner: str
    host: str
    pid: int
    command: str
    run_id: str
    acquired: str
    expires: float

    def live(self, now: float) -> bool:
        return self.expires > now

    def describe(self) -> str:
        left = max(0, int(self.expires - time.time()))
        return (f"owner {self.owner}: pid {self.pid} on {self.host} since {self.acquired}"
                + (f", MLflow run {self.run_id}" if self.run_id else "")
                + f" ({self.command}); expires in {left} s unless refreshed")

    @classmethod
    def parse(cls, text: str) -> LeaseRecord | None:
        try:
            data = json.loads(text)
            return cls(owner=str(data["owner"]), host=str(data["host"]), pid=int(data["pid"]),
                       command=str(data["command"]), run_id=str(data.get("run_id", "")),
                       acquired=str(data["acquired"]), expires=float(data["expires"]))
        except (ValueError, KeyError, TypeError):
            return None


def current_owner(name: str) -> str | None:
    """Our owner id while this process holds the lease on ``name``, else None."""
    lease = _held.get(name)
    return lease.owner if lease is not None else None


def leases(registry: Registry) -> dict[str, LeaseRecord]:
    """Every lease record on the registered model, by owner (unreadable ones dropped)."""
    records = {}
    for key, value in registry.model_tags().items():
        if key.startswith(LEASE_TAG_PREFIX) and (record := LeaseRecord.parse(value)):
            records[key.removeprefix(LEASE_TAG_PREFIX)] = record
    return records


def live_owners(registry: Registry, now: float | None = None) -> set[str]:
    """Owners whose lease on the registered model has not lapsed."""
    now = time.time() if now is None else now
    return {owner for owner, record in leases(registry).items() if record.live(now)}


class Lease:
    """The lease on one registered model (see the module docstring); a context manager."""

    def __init__(self, registry: Registry, *, ttl_s: float = DEFAULT_TTL_S, wait_s: float = 0.0,
                 run_id: str = "", on_wait: Callable[[LeaseRecord], None] | None = None) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.on_wait = on_wait
        self.owner = uuid.uuid4().hex[:16]
        self.run_id = run_id
        self._acquired = datetime.now(UTC).isoformat(timespec="seconds")
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @property
    def tag(self) -> str:
        return LEASE_TAG_PREFIX + self.owner

    def _record(self) -> LeaseRecord:
        return LeaseRecord(owner=self.owner, host=socket.gethostname(), pid=os.getpid(),
                           command=" ".join(sys.argv)[:300] or sys.executable, run_id=self.run_id,
                           acquired=self._acquired, expires=time.time() + self.ttl_s)

    def _write(self) -> None:
        self.registry.set_model_tag(self.tag, json.dumps(asdict(self._record())))

    def _withdraw(self, owner: str | None = None) -> None:
        key = LEASE_TAG_PREFIX + (owner or self.owner)
        try:
            self.registry.client.delete_registered_model_tag(self.registry.name, key)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise RegistryError(f"MLflow registry: removing {key} from {self.registry.name} "
                                    f"failed: {exc.message}") from exc

    def _ensure_model(self) -> None:
        """The registered model exists (a first run creates it to hold the lease)."""
        try:
            self.registry.client.get_registered_model(self.registry.name)
            return
        except MlflowException as exc:
            if not is_not_found(exc):
                raise RegistryError(f"MLflow registry: reading {self.registry.name} failed: "
                                    f"{exc.message}") from exc
        try:
            self.registry.client.create_registered_model(self.registry.name)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(f"MLflow registry: creating {self.registry.name} failed: "
                                    f"{exc.message}") from exc

    def acquire(self) -> None:
        """Hold the lease, or raise ``Busy`` naming the holder once ``wait_s`` has passed."""
        self._ensure_model()
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            self._write()
            now = time.time()
            records = leases(self.registry)
            others = {o: r for o, r in records.items() if o != self.owner and r.live(now)}
            for owner, record in records.items():  # lapsed leases of dead runners
                if owner != self.owner and not record.live(now):
                    self._withdraw(owner)
            if not others:
                break
            self._withdraw()
            holder = min(others.values(), key=lambda r: r.acquired)
            if time.monotonic() >= deadline:
                raise Busy(f"another runner holds {self.registry.name!r} in the MLflow registry "
                           f"({holder.describe()}); tag {LEASE_TAG_PREFIX}{holder.owner}",
                           asdict(holder))
            if self.on_wait is not None and not told:
                self.on_wait(holder)
                told = True
            time.sleep(random.uniform(0.2, 1.5))
        _held[self.registry.name] = self
        self._refresher = threading.Thread(target=self._refresh, daemon=True,
                                           name=f"servegate-lease-{self.registry.name}")
        self._refresher.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self._write()
            except Exception:  # noqa: BLE001 (a blip: the next refresh tries again)
                continue

    def release(self) -> None:
        """Stop refreshing and take the tag back (best effort: it lapses anyway)."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        _held.pop(self.registry.name, None)
        try:
            self._withdraw()
        except RegistryError:
            pass

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextmanager
def model_lease(name: str, *, wait_s: float = 0.0, ttl_s: float = DEFAULT_TTL_S,
                run_id: str = "") -> Iterator[Lease]:
    """Hold the registry lease on ``name`` for the block (re-entrant within one process)."""
    if name in _held:  # an outer block of this process holds it
        yield _held[name]
        return
    with Lease(Registry.for_model(name), wait_s=wait_s, ttl_s=ttl_s, run_id=run_id) as lease:
        yield lease
