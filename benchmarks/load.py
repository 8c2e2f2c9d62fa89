"""Run Locust's CLI in a subprocess and read its figures plus the load process's own CPU time.

Locust is never imported here (importing requests/mlflow before locust breaks gevent). Figures come
from ``--json-file`` (the final stats): ``--csv``'s ``_stats.csv`` is rewritten once a second and
is not rewritten at exit, so it misses up to the last second of the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
SPAWNED = "All users spawned"
LOAD_BOUND_CORES = 0.8


@dataclass(frozen=True)
class LoadResult:
    """One Locust run: its aggregated figures and the load process's CPU over the load window."""

    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    load_cpu_s: float
    load_window_s: float
    #: Locust processes (``--processes``: a master and this many workers when more than one).
    processes: int = 1

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    @property
    def cpu_per_request_s(self) -> float:
        return self.load_cpu_s / self.requests if self.requests else 0.0

    @property
    def load_cores(self) -> float:
        return self.load_cpu_s / self.load_window_s if self.load_window_s else 0.0

    @property
    def cores_per_process(self) -> float:
        return self.load_cores / self.processes

    @property
    def load_bound(self) -> bool:
        """The load processes used more than ``LOAD_BOUND_CORES`` of a core each."""
        return self.cores_per_process > LOAD_BOUND_CORES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"error_ratio": self.error_ratio,
                               "cpu_per_request_s": self.cpu_per_request_s,
                               "load_cores": self.load_cores,
                               "cores_per_process": self.cores_per_process,
                               "load_bound": self.load_bound}


def _cpu(proc: psutil.Process) -> float:
    """CPU seconds of ``proc`` and its live descendants (Locust's workers)."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += float(times.user + times.system)
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_locust(locustfile: Path, *, host: str, users: int, seconds: int, workdir: Path,
               env: dict[str, str] | None = None, names: tuple[str, ...] = (),
               processes: int = 1) -> LoadResult:
    """Run ``locust --headless`` for ``seconds`` and return its aggregated figures (of the request
    ``names`` only, when given: e.g. the good requests of a mixed load). ``processes`` > 1:
    ``--processes`` (Locust forks a master and that many workers; the master's stats merge
    theirs; the CPU is the whole process tree's).

    The CPU window starts when Locust logs that all users are spawned (its imports and start-up are
    excluded) and ends when the process exits (exact, from the reaped child's rusage).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stats = workdir / "locust_stats"  # Locust appends ".json"
    log = workdir / "locust.log"
    command = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", host,
               "--json-file", str(stats), "--only-summary", "--loglevel", "INFO"]
    if processes > 1:
        command += ["--processes", str(processes)]
    children_before = _children_cpu()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})},
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        proc = psutil.Process(process.pid)
        cpu_start, t_start = 0.0, time.monotonic()
        spawned = False
        while process.poll() is None:
            if not spawned and SPAWNED in log.read_text(errors="replace"):
                try:
                    cpu_start, t_start, spawned = _cpu(proc), time.monotonic(), True
                except psutil.NoSuchProcess:
                    break
            time.sleep(0.05)
        process.wait()
        t_end = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    cpu_total = _children_cpu() - children_before
    return dataclasses.replace(
        _read_stats(stats.with_suffix(".json"), log, names=names,
                    load_cpu_s=cpu_total - cpu_start, load_window_s=t_end - t_start),
        processes=processes)


def percentile(histogram: dict[int, int], count: int, fraction: float) -> float:
    """Locust's own percentile over its rounded response-time histogram (ms)."""
    below = int(count * fraction)
    seen = 0
    for ms in sorted(histogram, reverse=True):
        seen += histogram[ms]
        if count - seen <= below:
            return float(ms)
    return float("nan")


def _read_stats(stats: Path, log: Path, *, load_cpu_s: float, load_window_s: float,
                names: tuple[str, ...] = ()) -> LoadResult:
    """Sum Locust's final per-endpoint stats (one entry per name, or those of ``names``) like its
    "Aggregated" row."""
    if not stats.exists():
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Locust wrote no stats ({stats}); its log ends with:\n{tail}")
    entries = json.loads(stats.read_text(encoding="utf-8"))
    if names:
        entries = [e for e in entries if e["name"] in names]
    if not entries:
        raise RuntimeError(f"Locust recorded no request ({stats})")
    histogram: dict[int, int] = {}
    for entry in entries:
        for ms, n in entry["response_times"].items():
            histogram[int(float(ms))] = histogram.get(int(float(ms)), 0) + n
    requests = sum(e["num_requests"] for e in entries)
    span = max(e["last_request_timestamp"] for e in entries) - min(e["start_time"] for e in entries)
    return LoadResult(
        requests=requests, failures=sum(e["num_failures"] for e in entries),
        rps=requests / span if span > 0 else 0.0,
        p50_ms=percentile(histogram, requests, 0.50), p95_ms=percentile(histogram, requests, 0.95),
        p99_ms=percentile(histogram, requests, 0.99),
        load_cpu_s=load_cpu_s, load_window_s=load_window_s,
    )


def failures_of(workdir: Path, name: str) -> int:
    """Failures Locust recorded for the requests called ``name`` in the run written to ``workdir``."""
    entries = json.loads((workdir / "locust_stats.json").read_text(encoding="utf-8"))
    return sum(e["num_failures"] for e in entries if e["name"] == name)
