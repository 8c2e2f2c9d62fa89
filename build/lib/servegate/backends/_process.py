"""Local server processes: free loopback ports, stopping a whole process group (only when the
recorded pid is still the process we started), and a minimal environment for servers."""

from __future__ import annotations

import os
import signal
import socket

import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the server binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_processes(pgid: int) -> list[psutil.Process]:
    """Every live process of the process group (a server's launcher, frontend, workers)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return found


def kill_group(pgid: int, timeout_s: float = 15.0) -> bool:
    """SIGTERM the group, SIGKILL what is left after ``timeout_s``; True if anything ran."""
    members = group_processes(pgid)
    if not members:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        _, members = psutil.wait_procs(members, timeout=timeout_s if sig == signal.SIGTERM else 5)
        members = [p for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not members:
            break
    try:  # reap our own child if this process started it
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


# ---- process identity: never signal a process that merely reuses a recorded pid -------------
def identity(pid: int) -> dict[str, object]:
    """What a state file records of a process it started: its start time and command line."""
    process = psutil.Process(pid)
    return {"create_time": process.create_time(), "cmdline": process.cmdline()}


def identity_mismatch(pid: int, create_time: float | None, cmdline: list[str] | None) -> str | None:
    """Why the live process ``pid`` is NOT the one recorded (None when it is, or when no process
    has that pid any more). The start time must match; the command line too once recorded (it
    is recorded when the server answers, after any ``exec`` of a wrapper script). A live pid
    recorded without a start time (an older state file) never matches: it cannot be told apart
    from a reused pid."""
    try:
        process = psutil.Process(pid)
        actual_time, actual_cmd = process.create_time(), process.cmdline()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return f"pid {pid} belongs to another user"
    if create_time is None:
        return (f"pid {pid} is alive ({' '.join(actual_cmd)[:120]!r}) but the state file records "
                "no start time to check it against")
    if abs(actual_time - create_time) > 0.01 or (cmdline is not None and actual_cmd != list(cmdline)):
        recorded = " ".join(cmdline)[:120] if cmdline is not None else "?"
        return (f"pid {pid} is now {' '.join(actual_cmd)[:120]!r} started at {actual_time:.2f}, "
                f"not the recorded {recorded!r} started at {create_time:.2f}")
    return None


def stop_recorded(pid: int, create_time: float | None, cmdline: list[str] | None,
                  timeout_s: float = 15.0) -> tuple[bool, str | None]:
    """Stop the process group of a recorded server if it is still that server.

    Returns (stopped, stale): ``stale`` says why nothing was killed (the pid now belongs to
    another process). A gone leader whose group still has members is still ours: Linux does
    not reuse a pid while a process group of that id exists.
    """
    stale = identity_mismatch(pid, create_time, cmdline)
    if stale is not None:
        return False, stale
    return kill_group(pid, timeout_s), None


# ---- a minimal environment for server processes ----------------------------------------------
#: Variables a model server may inherit; everything else (cloud and MLflow credentials,
#: tokens, passwords) stays out of its environment.
ALLOWED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "JAVA_HOME",
               "TEMP", "TMPDIR", "TMP", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
               "CONDA_PREFIX", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS", "SSL_CERT_FILE", "SSL_CERT_DIR")
ALLOWED_PREFIXES = ("LC_",)
SECRET_MARKERS = ("MLFLOW_", "AWS_", "GOOGLE_", "AZURE_", "DATABRICKS_", "HF_TOKEN")
SECRET_SUFFIXES = ("_TOKEN", "_KEY", "_CREDENTIALS")
SECRET_PARTS = ("SECRET", "PASSWORD", "PASSWD")


def is_secret(key: str) -> bool:
    upper = key.upper()
    return (upper.startswith(SECRET_MARKERS) or upper.endswith(SECRET_SUFFIXES)
            or any(part in upper for part in SECRET_PARTS))


def minimal_environment(extra: dict[str, str] | None = None,
                        source: dict[str, str] | None = None) -> dict[str, str]:
    """The allowed variables of ``source`` (default ``os.environ``) plus ``extra``; a secret-looking
    name never passes, not even through ``extra``."""
    source = dict(os.environ if source is None else source)
    env = {k: v for k, v in source.items()
           if (k in ALLOWED_ENV or k.startswith(ALLOWED_PREFIXES)) and not is_secret(k)}
    env.update({k: v for k, v in (extra or {}).items() if not is_secret(k)})
    return env


class StopOutcome:
    """What ``stop()`` did: truthy when a server was stopped; ``stale`` says why a recorded
    server was NOT stopped (its pid now belongs to another process)."""

    def __init__(self, stopped: bool, stale: str | None = None) -> None:
        self.stopped = stopped
        self.stale = stale

    def __bool__(self) -> bool:
        return self.stopped

    def __repr__(self) -> str:
        return f"StopOutcome(stopped={self.stopped}, stale={self.stale!r})"
