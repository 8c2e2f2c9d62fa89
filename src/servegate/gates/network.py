"""Where the load comes from, and the network round trip to the server, measured before the
load phases: a gate run from a far-away runner must not be mistaken for a slow model."""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from servegate.config import ci_runner


@dataclass(frozen=True)
class NetworkProbe:
    """Round trips to the server's cheapest endpoint (ms), from ``origin`` to ``target``."""

    origin: str
    target: str
    samples: int
    rtt_p50_ms: float
    rtt_p95_ms: float
    rtt_min_ms: float

    def metrics(self) -> dict[str, float]:
        return {"network_rtt_p50_ms": self.rtt_p50_ms, "network_rtt_p95_ms": self.rtt_p95_ms,
                "network_rtt_min_ms": self.rtt_min_ms}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        return (f"load from {self.origin} to {self.target}: network round trip p50 "
                f"{self.rtt_p50_ms:.2f} ms, p95 {self.rtt_p95_ms:.2f} ms ({self.samples} pings)")

    def note(self, p95_slo_ms: float) -> str:
        """A warning when the round trip is a large part of the latency SLO (else empty)."""
        if self.rtt_p50_ms > 0.25 * p95_slo_ms:
            return (f"the network round trip ({self.rtt_p50_ms:.1f} ms p50) is over a quarter of "
                    f"the p95 SLO ({p95_slo_ms:g} ms): latencies measured from {self.origin} "
                    "include it; run the gate nearer the server for the model's own latency")
        return ""


def load_origin() -> str:
    """This machine, as a person would recognise it (a CI runner says which)."""
    host = socket.gethostname()
    if (runner := ci_runner()) is not None:
        return f"GitHub Actions {runner[0]} ({host}, run {runner[1]})"
    return host


def probe(ping: Callable[[], bool], target_url: str, samples: int = 20) -> NetworkProbe:
    """Time ``samples`` calls of ``ping`` (after one warm-up that opens the connection)."""
    ping()
    timings: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        ping()
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    target = urlsplit(target_url).netloc or target_url
    return NetworkProbe(
        origin=load_origin(), target=target, samples=samples,
        rtt_p50_ms=statistics.median(timings),
        rtt_p95_ms=timings[min(len(timings) - 1, int(round(0.95 * (len(timings) - 1))))],
        rtt_min_ms=timings[0])
