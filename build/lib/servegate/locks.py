"""Advisory locks (``fcntl.flock``) so that two processes never drive the same thing at once.

* one pipeline run (or rollback) per model name: ``$SERVEGATE_HOME/locks/run-<name>.lock``;
* one start/stop per server directory: ``<server workdir>/.server.lock``.

The holder writes who it is (pid, host, start time, command) into the lock file; a refused
process raises ``Busy`` naming that holder instead of hanging. The kernel drops a ``flock`` when
its process dies (even by SIGKILL), so a crashed holder never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servegate.config import home_dir
from servegate.errors import Busy, ConfigError
from servegate.naming import validate_name

_held: dict[str, int] = {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process (it recorded nothing yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


def read_holder(path: Path) -> dict[str, Any]:
    for _ in range(5):  # the holder may be rewriting the file this instant
        try:
            text = path.read_text(encoding="utf-8")
            if text.strip():
                return dict(json.loads(text))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return {}


@contextmanager
def hold(path: Path, purpose: str, *, wait_s: float = 0.0, on_wait: Any = None) -> Iterator[None]:
    """Hold the lock at ``path`` for the block; ``Busy`` naming the holder if another process
    keeps it longer than ``wait_s`` seconds (``on_wait(holder)`` is called once when waiting).
    Re-entrant within one process (``start`` may call ``stop`` under the same lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    # O_NOFOLLOW: a symlink planted at the lock path would make us truncate its target.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{purpose}: lock file {path} is a symbolic link; refusing to open it "
                       "(remove it if you did not put it there)") from exc
        raise
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(path)
                if time.monotonic() >= deadline:
                    raise Busy(f"{purpose} is already in progress ({describe_holder(holder)}); "
                               f"lock file {path}", holder) from None
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
                time.sleep(0.2)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv) or sys.executable, "purpose": purpose}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            _held.pop(key, None)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def run_lock_path(name: str) -> Path:
    return home_dir() / "locks" / f"run-{validate_name(name)}.lock"


@contextmanager
def model_lock(name: str, *, wait_s: float = 0.0) -> Iterator[None]:
    """One pipeline run or rollback of ``name`` at a time (under ``$SERVEGATE_HOME``)."""
    with hold(run_lock_path(name), f"a servegate run or rollback of {name!r}", wait_s=wait_s):
        yield


def server_lock_path(workdir: Path) -> Path:
    return Path(workdir) / ".server.lock"


@contextmanager
def server_lock(workdir: Path, *, wait_s: float = 0.0, on_wait: Any = None) -> Iterator[None]:
    """One start or stop of the server in ``workdir`` at a time."""
    with hold(server_lock_path(workdir), f"starting or stopping the server in {workdir}",
              wait_s=wait_s, on_wait=on_wait):
        yield
