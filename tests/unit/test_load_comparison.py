"""The comparison with the champion as a bootstrap interval over alternating rounds (issue 22):
Locust's own percentiles, in a subprocess; the same model against itself is not rejected, a
slower copy is, a drift that hits both sides is not mistaken for a regression, and the gate runs
more rounds while the interval straddles the limit."""

from __future__ import annotations

import numpy as np
import pytest

from servegate.config import LoadSettings, SLOs
from servegate.gates import load
from servegate.gates.load import LoadResult, load_checks, summarize, verdicts

SLO = SLOs(p95_ms=10_000, p99_ms=10_000, min_rps=0, max_regression_pct=20, regression_floor_ms=1)


def _locust_ms(ms: np.ndarray) -> np.ndarray:
    """Response times as Locust buckets them (exact below 100 ms, then tens, then hundreds)."""
    return np.where(ms < 100, np.round(ms), np.where(ms < 1000, np.round(ms, -1), np.round(ms, -2)))


def phase(label: str, median_ms: float, rng: np.random.Generator, requests: int = 1500,
          seconds: float = 3.0) -> LoadResult:
    times = _locust_ms(rng.lognormal(np.log(median_ms), 0.35, requests)).astype(int)
    values, counts = np.unique(times, return_counts=True)
    return LoadResult(label=label, requests=requests, failures=0, seconds=seconds,
                      rps=requests / seconds, p50_ms=0, p95_ms=0, p99_ms=0, load_cpu_seconds=0.1,
                      histogram_ms={str(v): int(c) for v, c in zip(values, counts, strict=True)})


def rounds(champion_ms: list[float], challenger_ms: list[float], seed: int = 0,
           slower_rps: float = 1.0) -> dict[str, list[LoadResult]]:
    rng = np.random.default_rng(seed)
    return {"champion": [phase("champion", m, rng) for m in champion_ms],
            "challenger": [phase("challenger", m, rng, requests=int(1500 / slower_rps))
                           for m in challenger_ms]}


def test_the_same_model_against_itself_is_never_worse() -> None:
    for seed in range(3):
        _, comparison = summarize(rounds([20, 20, 20, 20], [20, 20, 20, 20], seed),
                                  ("champion", "challenger"), replicates=400)
        assert comparison is not None and "worse" not in verdicts(comparison, SLO).values()
        assert comparison.p95.low <= 1.0 <= comparison.p95.high


def test_a_copy_half_again_slower_is_worse_on_latency() -> None:
    _, comparison = summarize(rounds([20, 20, 20, 20], [30, 30, 30, 30], 1, slower_rps=1.5),
                              ("champion", "challenger"), replicates=400)
    assert comparison is not None
    assert verdicts(comparison, SLO) == {"p95": "worse", "p99": "worse", "rps": "worse"}
    assert comparison.p95.low > 1.2 and len(comparison.rounds) == 4


def test_a_drift_that_hits_both_sides_is_not_a_regression() -> None:
    """The box slows down for a round: both phases of that round pay for it."""
    _, comparison = summarize(rounds([20, 40, 20, 20], [20, 40, 20, 21], 2),
                              ("champion", "challenger"), replicates=400)
    assert comparison is not None and verdicts(comparison, SLO)["p95"] != "worse"


def test_checks_fail_only_when_the_whole_interval_lies_beyond_the_limit() -> None:
    phases = rounds([20, 20, 20, 20], [30, 30, 30, 30], 3)
    figures, comparison = summarize(phases, ("champion", "challenger"), replicates=400)
    champion = load.merge(phases["champion"], figures["champion"])
    challenger = load.merge(phases["challenger"], figures["challenger"])
    from dataclasses import replace

    checks = {c.name: c for c in load_checks(replace(challenger, comparison=comparison), champion, SLO)}
    assert not checks["p95_ratio_vs_champion"].passed
    assert checks["p95_ratio_vs_champion"].value == pytest.approx(comparison.p95.low)
    lenient = SLOs(**{**SLO.model_dump(), "max_regression_pct": 50})
    checks = {c.name: c for c in load_checks(replace(challenger, comparison=comparison), champion, lenient)}
    assert checks["p95_ratio_vs_champion"].passed  # 1.5x is within 50%


def test_more_rounds_run_while_the_interval_straddles_the_limit(monkeypatch) -> None:
    """A borderline challenger (about the allowed 20% slower) keeps the gate measuring up to the
    policy's cap; a clear one stops at the rounds asked for."""
    calls: list[str] = []
    rng = np.random.default_rng(4)

    def fake_load(*, label: str, version: str, settings: LoadSettings, **_: object) -> LoadResult:
        calls.append(label)
        return phase(label, 20 if label == "champion" else median, rng, requests=300)

    monkeypatch.setattr(load, "run_load", fake_load)
    targets = [("champion", "1"), ("challenger", "2")]
    settings = LoadSettings(users=4, seconds=8, rounds=2)
    median = 20.0 * 1.2
    results = load.run_ab(targets, settings=settings, adaptive=load.Adaptive(SLO, max_rounds=5))
    assert calls.count("champion") == 5 == len(results["challenger"].comparison.rounds)
    calls.clear()
    median = 60.0
    results = load.run_ab(targets, settings=settings, adaptive=load.Adaptive(SLO, max_rounds=5))
    assert calls.count("champion") == 2
    assert load.conclusive(results["challenger"].comparison, SLO)


def test_one_disturbed_challenger_round_moves_the_pooled_ratio_but_not_the_per_round_median() -> None:
    """A burst on the host during one challenger phase of five (2x slower there, equal in the
    others): pooled, the p95 ratio reads 1.4 and the gate cannot decide without more rounds; the
    median of per-round ratios reads 1.0 and clears p95 at once. A copy slower in every round is
    worse under both."""
    disturbed = rounds([20] * 5, [40, 20, 20, 20, 20], 5)
    pair = ("champion", "challenger")
    _, pooled = summarize(disturbed, pair, replicates=400)
    _, median = summarize(disturbed, pair, replicates=400, statistic="per-round")
    assert pooled is not None and median is not None and median.statistic == "per-round"
    assert pooled.p95.estimate > 1.3 and verdicts(pooled, SLO)["p95"] == "inconclusive"
    assert median.p95.estimate == pytest.approx(1.0, abs=0.05)
    assert verdicts(median, SLO)["p95"] == "not worse"
    assert "worse" not in verdicts(median, SLO).values()
    _, slower = summarize(rounds([20] * 4, [30] * 4, 6, slower_rps=1.5), pair, replicates=400,
                          statistic="per-round")
    assert slower is not None
    assert verdicts(slower, SLO) == {"p95": "worse", "p99": "worse", "rps": "worse"}


def test_an_unknown_statistic_is_refused() -> None:
    from servegate.gates.compare import Phase, compare

    one = Phase({10: 5}, 5, 1.0)
    with pytest.raises(ValueError, match="statistic must be one of"):
        compare([(one, one)], lambda h, n, q: 10.0, statistic="mean")  # type: ignore[arg-type]
