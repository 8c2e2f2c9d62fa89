"""Local server processes: free loopback ports, and stopping a whole process group."""

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
