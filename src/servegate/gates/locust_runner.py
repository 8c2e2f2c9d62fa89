"""Run Locust as a library against one endpoint (or a fleet's replicas) and write the figures
as JSON.

Run in a subprocess only (``python -m servegate.gates.locust_runner``): gevent's monkey-patching
must happen before anything imports ssl/requests/mlflow. No gate logic here: figures only.

``--processes 1``: one local runner. ``--processes N`` (N > 1): this process is Locust's master
and starts N worker processes (``--worker``) on this host, connected over loopback; statistics
arrive in the master's ``env.stats`` as Locust merges them (response-time histograms added
bucket by bucket: the same percentiles one process computes). Exact windows: a worker discards
what its users recorded before the master's ``servegate_measure`` message (the warm-up), and
answers the master's ``servegate_finish`` with its last report before ``servegate_done``, so
every measured request is in the figures and none of the warm-up's is.

The master listens on loopback, where any local process could connect as a worker or send
statistics: each worker proves it is one of ours with a per-run token (given on its stdin, never
on a command line) in a ``servegate_hello`` message, and a phase in which anything else joined or
reported fails instead of producing figures.
"""

from __future__ import annotations

import argparse
import hmac
import importlib.util
import json
import resource
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MEASURE, FINISH, DONE, HELLO = ("servegate_measure", "servegate_finish", "servegate_done",
                                "servegate_hello")
#: How often a worker reports to the master (Locust's default: 3 s), for a smoother timeline.
WORKER_REPORT_INTERVAL_S = 1.0


def _user_class(locustfile: Path, class_name: str) -> type:
    spec = importlib.util.spec_from_file_location("servegate_locustfile", locustfile)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import locustfile {locustfile}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--locustfile", type=Path, required=True)
    parser.add_argument("--user-class", default="TorchServePredictUser")
    parser.add_argument("--host", required=True)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup-seconds", type=float, default=1.0,
                        help="load applied before measuring (its figures are discarded)")
    parser.add_argument("--processes", type=int, default=1,
                        help="load processes: 1 runs locally, more run a master and workers")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--master-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.out is None:
        parser.error("--out is required")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    figures = _master(args) if args.processes > 1 else _local(args)
    args.out.write_text(json.dumps(figures), encoding="utf-8")
    return 0


def _local(args: argparse.Namespace) -> dict[str, Any]:
    import gevent
    from locust.env import Environment

    env = Environment(user_classes=[_user_class(args.locustfile, args.user_class)], host=args.host)
    runner = env.create_local_runner()
    runner.start(args.users, spawn_rate=args.users)
    gevent.sleep(args.warmup_seconds)
    warmup_requests = env.stats.total.num_requests
    env.stats.reset_all()
    cpu_before, started = _cpu_seconds(), time.monotonic()
    timeline: list[dict[str, float]] = []
    sampler = gevent.spawn(_sample, env, started, timeline)
    gevent.sleep(args.seconds)
    runner.quit()
    sampler.kill()
    elapsed = time.monotonic() - started
    cpu = _cpu_seconds() - cpu_before
    return _figures(env, elapsed, timeline, [cpu], processes=1, warmup_requests=warmup_requests)


def _master(args: argparse.Namespace) -> dict[str, Any]:
    import gevent
    from locust.env import Environment

    env = Environment(user_classes=[_user_class(args.locustfile, args.user_class)], host=args.host)
    runner = env.create_master_runner(master_bind_host="127.0.0.1", master_bind_port=0)
    done: dict[str, dict[str, float]] = {}
    token = secrets.token_hex(16)
    ours: set[str] = set()
    seen: set[str] = set()  # every node that said hello, reported or joined

    def hello(environment: Any, msg: Any) -> None:
        seen.add(msg.node_id)
        if hmac.compare_digest(str((msg.data or {}).get("token", "")), token):
            ours.add(msg.node_id)

    runner.register_message(HELLO, hello)
    runner.register_message(DONE, lambda environment, msg: done.__setitem__(msg.node_id, msg.data))
    env.events.worker_report.add_listener(lambda client_id, data: seen.add(client_id))
    env.events.worker_connect.add_listener(lambda client_id: seen.add(client_id))

    def trusted() -> None:
        strangers = seen - ours
        if strangers:
            raise SystemExit(f"{len(strangers)} Locust worker(s) that servegate did not start "
                             "joined the load gate's master or sent it statistics: no figures")

    command = [sys.executable, "-m", "servegate.gates.locust_runner", "--worker",
               "--master-port", str(runner.server.port), "--locustfile", str(args.locustfile),
               "--user-class", args.user_class, "--host", args.host]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, text=True)
               for _ in range(args.processes)]
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(token + "\n")
        worker.stdin.close()
    try:
        _wait(lambda: len(ours) >= args.processes and runner.worker_count >= args.processes, 60,
              "the load workers to connect", workers)
        trusted()
        runner.start(args.users, spawn_rate=args.users)
        _wait(lambda: runner.user_count >= args.users, 60, "the users to start", workers)
        gevent.sleep(args.warmup_seconds)
        env.stats.reset_all()  # nothing of the warm-up has arrived yet that workers will not drop
        runner.send_message(MEASURE)
        started = time.monotonic()
        timeline: list[dict[str, float]] = []
        sampler = gevent.spawn(_sample, env, started, timeline)
        gevent.sleep(args.seconds)
        runner.send_message(FINISH)
        elapsed = time.monotonic() - started
        _wait(lambda: len(done) >= args.processes, 60, "the load workers' last reports", workers)
        sampler.kill()
        figures = _figures(env, elapsed, timeline, [d["cpu_seconds"] for d in done.values()],
                           processes=args.processes,
                           warmup_requests=int(sum(d["warmup_requests"] for d in done.values())))
        trusted()
        runner.quit()
    finally:
        for worker in workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return figures


def _wait(condition: Any, timeout_s: float, what: str, workers: list[subprocess.Popen]) -> None:
    import gevent

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        if any(w.poll() is not None for w in workers):
            raise SystemExit(f"a load worker exited while waiting for {what}")
        gevent.sleep(0.05)


def _worker(args: argparse.Namespace) -> int:
    import locust.runners
    from locust.env import Environment
    from locust.stats import StatsEntry

    locust.runners.WORKER_REPORT_INTERVAL = WORKER_REPORT_INTERVAL_S
    token = sys.stdin.readline().strip()
    env = Environment(user_classes=[_user_class(args.locustfile, args.user_class)], host=args.host)
    runner = env.create_worker_runner("127.0.0.1", args.master_port)
    runner.send_message(HELLO, {"token": token})
    state = {"measuring": False, "cpu_before": 0.0, "warmup_requests": 0}

    def drop_warmup(client_id: str, data: dict[str, Any]) -> None:
        """Runs after Locust's own listener has serialised (and reset) the stats: the warm-up's
        never leave this process."""
        if not state["measuring"]:
            state["warmup_requests"] += data["stats_total"]["num_requests"]
            data["stats"], data["errors"] = [], {}
            data["stats_total"] = StatsEntry(env.stats, "Aggregated", None).serialize()  # type: ignore[arg-type]

    def measure(environment: Any, msg: Any) -> None:
        runner._send_stats()  # the warm-up's last samples, dropped (not measuring yet)
        state["measuring"], state["cpu_before"] = True, _cpu_seconds()

    def finish(environment: Any, msg: Any) -> None:
        runner.stop()
        cpu = _cpu_seconds() - state["cpu_before"]
        runner._send_stats()  # everything measured, before DONE (one ordered channel)
        runner.send_message(DONE, {"cpu_seconds": cpu, "warmup_requests": state["warmup_requests"]})

    env.events.report_to_master.add_listener(drop_warmup)
    runner.register_message(MEASURE, measure)
    runner.register_message(FINISH, finish)
    runner.greenlet.join()
    return 0


def _sample(env: Any, started: float, timeline: list[dict[str, float]]) -> None:
    import gevent

    last_count, last_time = 0, time.monotonic()
    while True:
        gevent.sleep(1.0)
        now, count = time.monotonic(), env.stats.total.num_requests
        timeline.append({"t": round(now - started, 2), "rps": (count - last_count) / (now - last_time),
                         "failures": env.stats.total.num_failures})
        last_count, last_time = count, now


def _figures(env: Any, elapsed: float, timeline: list[dict[str, float]], cpu: list[float], *,
             processes: int, warmup_requests: int) -> dict[str, Any]:
    """The measured window's figures; ``warmup_requests``: those recorded before it (discarded
    from every figure, counted so that a test can match Locust's total with the server's)."""
    total = env.stats.total
    errors = [{"error": str(e.error), "occurrences": e.occurrences} for e in env.stats.errors.values()]
    return {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "seconds": elapsed,
        "rps": total.num_requests / elapsed if elapsed else 0.0,
        "p50_ms": total.get_response_time_percentile(0.50) or 0.0,
        "p95_ms": total.get_response_time_percentile(0.95) or 0.0,
        "p99_ms": total.get_response_time_percentile(0.99) or 0.0,
        "max_ms": total.max_response_time or 0.0,
        "histogram_ms": {str(k): v for k, v in sorted(total.response_times.items())},
        "timeline": timeline,
        "load_cpu_seconds": sum(cpu),
        "load_processes": processes,
        "load_process_cpu_seconds": cpu,
        "warmup_requests": warmup_requests,
        "errors": errors[:10],
    }


if __name__ == "__main__":
    sys.exit(main())
