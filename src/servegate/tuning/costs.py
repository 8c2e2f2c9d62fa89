"""Time an archive's handler in process on one request and on a batch, as a TorchServe worker
runs it (``servegate.harness``), and print the medians as JSON.

Run in a subprocess only (``python -m servegate.tuning.costs ARCHIVE BATCH REPEATS``),
with an environment that holds no credentials (``config.child_environment``): the
archive's handler code runs here, and it sets torch's thread count for its process.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall milliseconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def handler_ms(archive: Path, body: bytes, largest_batch: int, repeats: int) -> tuple[float, float]:
    """Median milliseconds of the handler on 1 and on ``largest_batch`` copies of ``body``."""
    from servegate.harness import LocalHandler

    with LocalHandler(archive) as handler:
        def run(n: int) -> Callable[[], object]:
            def call() -> object:
                replies = handler.batch([body] * n)
                if any(status != 200 for status, _ in replies):
                    raise SystemExit(f"the handler refused the archive's own warm-up sample: "
                                     f"{str(replies[0])[:300]}")
                return replies
            return call

        run(largest_batch)()  # warm both shapes up
        run(1)()
        return (median_ms(run(1), repeats),
                median_ms(run(largest_batch), max(3, repeats // 3)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        raise SystemExit("usage: python -m servegate.tuning.costs ARCHIVE BATCH REPEATS "
                         "(a request body on stdin)")
    one, largest = handler_ms(Path(args[0]), sys.stdin.buffer.read(), int(args[1]), int(args[2]))
    json.dump({"batch1_ms": one, "largest_ms": largest}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
