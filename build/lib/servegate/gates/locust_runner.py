"""Run Locust as a library against one endpoint and write the figures as JSON.

Run in a subprocess only (``python -m servegate.gates.locust_runner``): gevent's monkey-patching
must happen before anything imports ssl/requests/mlflow. No gate logic here: figures only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path


def _user_class(locustfile: Path, class_name: str) -> type:
    spec = importlib.util.spec_from_file_location("servegate_locustfile", locustfile)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import locustfile {locustfile}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--locustfile", type=Path, required=True)
    parser.add_argument("--user-class", default="TorchServePredictUser")
    parser.add_argument("--host", required=True)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup-seconds", type=float, default=1.0,
                        help="load applied before measuring (its figures are discarded)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import gevent
    from locust.env import Environment

    user_class = _user_class(args.locustfile, args.user_class)
    env = Environment(user_classes=[user_class], host=args.host)
    runner = env.create_local_runner()
    timeline: list[dict[str, float]] = []

    def sample() -> None:
        last_count, last_time = 0, time.monotonic()
        while True:
            gevent.sleep(1.0)
            now, count = time.monotonic(), env.stats.total.num_requests
            timeline.append({"t": round(now - started, 2), "rps": (count - last_count) / (now - last_time),
                             "failures": env.stats.total.num_failures})
            last_count, last_time = count, now

    runner.start(args.users, spawn_rate=args.users)
    gevent.sleep(args.warmup_seconds)
    env.stats.reset_all()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    sampler = gevent.spawn(sample)
    gevent.sleep(args.seconds)
    runner.quit()
    sampler.kill()
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)

    total = env.stats.total
    errors = [{"error": str(e.error), "occurrences": e.occurrences} for e in env.stats.errors.values()]
    figures = {
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
        "load_cpu_seconds": cpu,
        "errors": errors[:10],
    }
    args.out.write_text(json.dumps(figures), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
