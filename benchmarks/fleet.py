"""Fleet figures on this machine (``python -m benchmarks.fleet``): the time of a promotion (the
registry on SQLite and every replica's default, ``promotion.move_champion``) across three local
TorchServes against one, and the Locust /ping ceiling with one and with two load processes.

Three TorchServes share this box with the load generator: read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.load import run_locust

PING_LOCUSTFILE = Path(__file__).with_name("locust_ping.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--promotions", type=int, default=10, help="promotions timed per size (10)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per Locust row (10)")
    parser.add_argument("--users", type=int, default=16, help="Locust users (16)")
    args = parser.parse_args(argv)

    import mlflow
    from mlflow import MlflowClient

    from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
    from servegate.backends.torchserve.fleet import FleetBackend, Replica
    from servegate.config import BatchingConfig, TorchServeSettings
    from servegate.packaging.builder import package_model
    from servegate.promotion import move_champion
    from servegate.registry import Registry
    from servegate.sources.digits import builtin_digits

    with tempfile.TemporaryDirectory(prefix="servegate-fleet-bench-") as tmp:
        root = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        digits = builtin_digits(epochs=2)
        archives = {v: package_model(digits, name="digits", version=v, compiler="eager",
                                     batching=BatchingConfig(), output_dir=root / f"v{v}")
                    for v in ("1", "2")}
        servers = [LocalTorchServe(TorchServeSettings(workdir=root / f"ts{i}")) for i in range(3)]
        with ThreadPoolExecutor(3) as pool:
            states = list(pool.map(lambda s: s.start(), servers))
        try:
            backends = [TorchServeBackend.from_state(s) for s in states]
            for backend in backends:
                for v, archive in archives.items():
                    backend.deploy(archive, "digits", v)
            MlflowClient().create_registered_model("digits")
            for _ in archives:
                MlflowClient().create_model_version("digits", source="file:///nowhere")
            registry = Registry.for_model("digits")
            times: dict[int, list[float]] = {}
            for size in (1, 3):
                fleet = FleetBackend([Replica(s.management, b)
                                      for s, b in zip(states[:size], backends[:size], strict=True)])
                move_champion(registry, fleet, "digits", "1")
                times[size] = []
                for i in range(args.promotions):
                    target = "2" if i % 2 == 0 else "1"
                    started = time.perf_counter()
                    move_champion(registry, fleet, "digits", target)
                    times[size].append(time.perf_counter() - started)
            print("| replicas | promotion median ms | min ms | max ms |")
            print("|---:|---:|---:|---:|")
            for size, measured in times.items():
                print(f"| {size} | {statistics.median(measured) * 1e3:.0f} | "
                      f"{min(measured) * 1e3:.0f} | {max(measured) * 1e3:.0f} |")
            ratio = statistics.median(times[3]) / statistics.median(times[1])
            print(f"\nfleet of 3 / one replica: {ratio:.2f}x\n")
            print("| Locust processes | /ping req/s | Locust cores | cores per process | load-bound |")
            print("|---:|---:|---:|---:|---|")
            for processes in (1, 2):
                result = run_locust(PING_LOCUSTFILE, host=states[0].inference, users=args.users,
                                    seconds=args.seconds, workdir=root / f"ping{processes}",
                                    env={"SERVEGATE_KEY_FILE": str(states[0].key_file)},
                                    processes=processes)
                print(f"| {processes} | {result.rps:,.0f} | {result.load_cores:.2f} | "
                      f"{result.cores_per_process:.2f} | {'yes' if result.load_bound else 'no'} |")
        finally:
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda s: s.stop(), servers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
