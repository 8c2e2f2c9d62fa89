"""What every local server servegate starts shares (TorchServe, TF Serving).

A server runs in its own working directory and its own process group, and is recorded in
``<workdir>/server.json`` (written atomically) with the start time and command line of the
process that was started, checked before anything is signalled (``_process.py``). One start or
stop per directory at a time (``locks.server_lock``; a second one waits, bounded, then
``Busy``). Starting reuses the recorded server while it answers and is still the process
servegate started; otherwise it clears the record (stopping what is left) and launches anew.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from servegate._atomic import atomic_write_text
from servegate.backends._process import StopOutcome, identity, minimal_environment
from servegate.errors import ServerStartError
from servegate.locks import server_lock

STATE_FILE = "server.json"
#: Seconds between two readiness probes.
POLL_S = 0.3

#: The dataclass a server's state file holds (with ``create_time`` and ``cmdline`` fields).
S = TypeVar("S")


class LocalServer(Generic[S]):
    """A server process owned by servegate, described by ``<workdir>/server.json``.

    Subclasses say how to launch one (``_launch``), whether a recorded one is still the process
    servegate started (``_is_ours``) and answers (``_answers``), and how to stop it
    (``_stop_recorded``); this class holds the state file, the lock, reuse and readiness.
    """

    #: The dataclass recorded in the state file.
    state_type: type[S]
    #: What a stop waits for the process group before SIGKILL, unless ``stop`` is told.
    stop_timeout_s: float = 15.0

    def __init__(self, workdir: Path, ready_timeout_s: float) -> None:
        self.workdir = Path(workdir).resolve()
        self.ready_timeout_s = ready_timeout_s

    # ---- the state file ------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.workdir / STATE_FILE

    def _recorded(self) -> S | None:
        """The state file's content, or None when it is missing or unreadable."""
        try:
            return self.state_type(**json.loads(self.state_path.read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _record(self, state: S) -> S:
        atomic_write_text(self.state_path, json.dumps(asdict(state), indent=1))  # type: ignore[call-overload]
        return state

    def _record_cmdline(self, state: S, pid: int) -> S:
        """Record ``pid``'s command line in ``state``: read once the server answers, after any
        ``exec`` of a wrapper script."""
        return self._record(replace(state, cmdline=identity(pid)["cmdline"]))  # type: ignore[type-var]

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One start or stop per directory; a second one waits, bounded, then ``Busy``."""
        with server_lock(self.workdir, wait_s=self.ready_timeout_s):
            yield

    # ---- lifecycle -----------------------------------------------------------------------------
    def state(self) -> S | None:
        """The recorded state if that server is still the process servegate started and
        answers; else None."""
        state = self._recorded()
        if state is None or not self._is_ours(state):
            return None
        return state if self._answers(state) else None

    def start(self) -> S:
        """The server already running here, or a new one once it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            running = self.state()
            if running is not None:
                return running
            self.stop()  # a recorded server that no longer answers: clear it and its processes
            return self._launch()

    def stop(self, timeout_s: float | None = None) -> StopOutcome:
        """Stop the recorded server; truthy if one was stopped. A recorded process is signalled
        only while it is still the one started (else ``.stale`` says why and nothing is
        killed); the state file is removed either way."""
        if not self.state_path.exists():
            return StopOutcome(False)
        with self._lock():
            state = self._recorded()
            outcome = StopOutcome(False) if state is None else self._stop_recorded(
                state, self.stop_timeout_s if timeout_s is None else timeout_s)
            self.state_path.unlink(missing_ok=True)
            return outcome

    # ---- for subclasses ------------------------------------------------------------------------
    def _launch(self) -> S:
        """Start the server (under the lock, nothing recorded), record it, wait until it answers."""
        raise NotImplementedError

    def _is_ours(self, state: S) -> bool:
        """The recorded process is still the one servegate started."""
        raise NotImplementedError

    def _answers(self, state: S) -> bool:
        """The recorded server answers a request."""
        raise NotImplementedError

    def _stop_recorded(self, state: S, timeout_s: float) -> StopOutcome:
        raise NotImplementedError

    def _environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A minimal environment (no MLflow, cloud or other credentials: ``minimal_environment``)
        with the server's temporary files in ``<workdir>/tmp``, plus ``extra``."""
        tmp = self.workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return minimal_environment({"TEMP": str(tmp), "TMPDIR": str(tmp), **(extra or {})})

    def _spawn(self, command: Sequence[str], log: Path,
               env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float | None]:
        """Start ``command`` in ``workdir`` as the leader of a new process group, its output
        appended to ``log``; the process and its start time (None if it died at once: the
        readiness wait reports it)."""
        with open(log, "ab") as out:  # the child keeps its own copy
            process = subprocess.Popen(list(command), cwd=self.workdir, env=env,
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            create_time: Any = identity(process.pid)["create_time"]
        except Exception:
            create_time = None
        return process, create_time

    def _wait_ready(self, answers: Callable[[], bool], what: str, see: Path,
                    process: subprocess.Popen[bytes] | None = None) -> None:
        """Poll ``answers`` until it is true. ``ServerStartError`` (the recorded server stopped
        first) when ``process`` exits or after ``ready_timeout_s``."""
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while True:
                if process is not None and process.poll() is not None:
                    raise ServerStartError(f"{what} exited with {process.returncode}; see {see}")
                if answers():
                    return
                if time.monotonic() >= deadline:
                    raise ServerStartError(f"{what} did not answer within "
                                           f"{self.ready_timeout_s:.0f}s; see {see}")
                time.sleep(POLL_S)
        except ServerStartError:
            self.stop()
            raise
