"""The load gate's comparison with the champion: a confidence interval, not a fixed slack.

Champion and challenger phases alternate in rounds, so drift on a shared machine hits both alike.
The ratios of the challenger's p95, p99 and throughput to the champion's are bootstrapped over
those rounds: the rounds are resampled in pairs (a round's two phases stay together), and each
resampled phase's requests are drawn again from its own response-time histogram, so an interval
holds both the noise within a phase and the drift between rounds. ``load_checks`` rejects a
challenger only when a whole interval lies beyond the allowed regression; while one straddles the
limit the comparison is inconclusive and the gate runs more rounds (``run_ab``).

Two statistics combine the rounds (``statistic``): ``pooled`` (the gate's) merges each side's
requests over all rounds and takes the ratio of their percentiles; ``per-round`` takes the median,
over the rounds, of each round's own ratio, which one disturbed round cannot move
(``make bench-gate`` measures both on the same rounds).

Percentiles are Locust's own (``locust.stats.calculate_response_time_percentile``): this module
takes the function as an argument, and runs where Locust may be imported
(``servegate.gates.locust_stats``, a subprocess, since importing Locust monkey-patches the process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

#: ``(response_times, num_requests, fraction) -> response time``, as Locust computes it.
Percentile = Callable[[dict[int, int], int, float], float]
#: Two-sided coverage of the intervals (each side's tail: 5%).
CONFIDENCE = 0.90
REPLICATES = 1000
#: How the rounds are combined into one ratio (see the module docstring).
Statistic = Literal["pooled", "per-round"]
STATISTICS: tuple[Statistic, ...] = ("pooled", "per-round")


@dataclass(frozen=True)
class Phase:
    """One load phase against one version: Locust's response-time histogram (ms -> requests)."""

    histogram: dict[int, int]
    requests: int
    seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Interval:
    """A challenger/champion ratio: the point estimate and its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def describe(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class RoundFigures:
    """One round's figures, champion and challenger side by side (for the report)."""

    champion_p95_ms: float
    challenger_p95_ms: float
    champion_rps: float
    challenger_rps: float


@dataclass(frozen=True)
class Comparison:
    """Challenger / champion ratios of p95, p99 and throughput over ``rounds`` paired rounds."""

    p95: Interval
    p99: Interval
    rps: Interval
    champion_p95_ms: float
    champion_p99_ms: float
    rounds: tuple[RoundFigures, ...]
    confidence: float = CONFIDENCE
    statistic: str = "pooled"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Comparison:
        return cls(p95=Interval(**data["p95"]), p99=Interval(**data["p99"]), rps=Interval(**data["rps"]),
                   champion_p95_ms=float(data["champion_p95_ms"]),
                   champion_p99_ms=float(data["champion_p99_ms"]),
                   rounds=tuple(RoundFigures(**r) for r in data["rounds"]),
                   confidence=float(data["confidence"]),
                   statistic=str(data.get("statistic", "pooled")))


def merged(phases: Sequence[Phase]) -> tuple[dict[int, int], int]:
    """One histogram (and its request count) from several phases."""
    histogram: dict[int, int] = {}
    for phase in phases:
        for ms, count in phase.histogram.items():
            histogram[ms] = histogram.get(ms, 0) + count
    return histogram, sum(histogram.values())


def figures(phases: Sequence[Phase], percentile: Percentile) -> dict[str, float]:
    """p50, p95, p99 of several phases merged, as Locust computes them."""
    histogram, requests = merged(phases)
    return {f"p{int(q * 100)}_ms": float(percentile(histogram, requests, q)) if requests else 0.0
            for q in (0.50, 0.95, 0.99)}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (1.0 if a == b else float("inf"))


def compare(pairs: Sequence[tuple[Phase, Phase]], percentile: Percentile, *,
            replicates: int = REPLICATES, confidence: float = CONFIDENCE,
            seed: int = 0, statistic: Statistic = "pooled") -> Comparison:
    """The bootstrap comparison of ``pairs`` of (champion phase, challenger phase), one per round,
    by ``statistic`` (see the module docstring)."""
    if not pairs:
        raise ValueError("no rounds to compare")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    rng = np.random.default_rng(seed)
    keys = sorted({ms for pair in pairs for phase in pair for ms in phase.histogram})
    column = {ms: i for i, ms in enumerate(keys)}

    def counts(phase: Phase) -> np.ndarray:
        row = np.zeros(len(keys), dtype=np.int64)
        for ms, count in phase.histogram.items():
            row[column[ms]] = count
        return row

    table = np.stack([[counts(c), counts(x)] for c, x in pairs])  # [rounds, 2, buckets]
    sizes = table.sum(axis=2)
    seconds = np.array([[c.seconds, x.seconds] for c, x in pairs])
    requests = np.array([[c.requests, x.requests] for c, x in pairs], dtype=np.float64)

    def quantile(row: np.ndarray, fraction: float) -> float:
        total = int(row.sum())
        if not total:
            return 0.0
        return float(percentile({keys[i]: int(n) for i, n in enumerate(row) if n}, total, fraction))

    def per_round(rows: np.ndarray, chosen: np.ndarray) -> tuple[float, float, float]:
        ratios = [(_ratio(quantile(rows[i, 1], 0.95), quantile(rows[i, 0], 0.95)),
                   _ratio(quantile(rows[i, 1], 0.99), quantile(rows[i, 0], 0.99)),
                   _ratio(requests[r, 1] / seconds[r, 1], requests[r, 0] / seconds[r, 0]))
                  for i, r in enumerate(chosen)]
        p95, p99, rps = np.median(np.asarray(ratios), axis=0)
        return float(p95), float(p99), float(rps)

    def statistics(rows: np.ndarray, chosen: np.ndarray) -> tuple[float, float, float]:
        if statistic == "per-round":
            return per_round(rows, chosen)
        champion, challenger = rows[:, 0].sum(axis=0), rows[:, 1].sum(axis=0)
        rps = _ratio(requests[chosen, 1].sum() / seconds[chosen, 1].sum(),
                     requests[chosen, 0].sum() / seconds[chosen, 0].sum())
        return (_ratio(quantile(challenger, 0.95), quantile(champion, 0.95)),
                _ratio(quantile(challenger, 0.99), quantile(champion, 0.99)), rps)

    everything = np.arange(len(pairs))
    estimate = statistics(table, everything)
    draws = np.empty((replicates, 3))
    for b in range(replicates):
        chosen = rng.integers(0, len(pairs), len(pairs))
        rows = np.empty((len(chosen), 2, len(keys)), dtype=np.int64)
        for i, r in enumerate(chosen):
            for side in (0, 1):
                n = int(sizes[r, side])
                rows[i, side] = rng.multinomial(n, table[r, side] / n) if n else 0
        draws[b] = statistics(rows, chosen)
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail], axis=0)
    p95, p99, rps = (Interval(float(e), float(lo), float(hi))
                     for e, lo, hi in zip(estimate, low, high, strict=True))
    champion_figures = figures([c for c, _ in pairs], percentile)
    rounds = tuple(RoundFigures(quantile(table[r, 0], 0.95), quantile(table[r, 1], 0.95),
                                float(pairs[r][0].rps), float(pairs[r][1].rps))
                   for r in range(len(pairs)))
    return Comparison(p95, p99, rps, champion_p95_ms=champion_figures["p95_ms"],
                      champion_p99_ms=champion_figures["p99_ms"], rounds=rounds,
                      confidence=confidence, statistic=statistic)
