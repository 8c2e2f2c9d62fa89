"""CPU time of a local TorchServe, split into its Java frontend and its Python workers."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

#: pid -> (role, user+system CPU seconds); role is "frontend" or "worker"
Snapshot = dict[int, tuple[str, float]]


@dataclass(frozen=True)
class ServerCpu:
    """CPU seconds the frontend and the workers used between two snapshots."""

    frontend_s: float
    workers_s: float


def snapshot(launcher_pid: int) -> Snapshot:
    """CPU so far of every process under the ``torchserve`` launcher (the launcher excluded)."""
    found: Snapshot = {}
    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for process in children:
        try:
            role = "frontend" if process.name() == "java" else "worker"
            times = process.cpu_times()
            found[process.pid] = (role, times.user + times.system)
        except psutil.NoSuchProcess:
            continue
    return found


def between(before: Snapshot, after: Snapshot) -> ServerCpu:
    """CPU used from ``before`` to ``after``; a process that started in between counts whole."""
    used = {"frontend": 0.0, "worker": 0.0}
    for pid, (role, cpu) in after.items():
        used[role] += cpu - before.get(pid, (role, 0.0))[1]
    return ServerCpu(frontend_s=used["frontend"], workers_s=used["worker"])
