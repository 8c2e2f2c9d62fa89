"""Gate decisions: absolute SLOs, regressions against the champion, parity thresholds."""

from __future__ import annotations

import numpy as np

from servegate.config import ParityThresholds, SLOs
from servegate.gates.checks import failed
from servegate.gates.load import LoadResult, load_checks
from servegate.gates.parity import ParityResult, parity_checks


def load(p95: float, p99: float, rps: float, failures: int = 0, requests: int = 1000) -> LoadResult:
    return LoadResult(label="x", requests=requests, failures=failures, seconds=10, rps=rps,
                      p50_ms=p95 / 2, p95_ms=p95, p99_ms=p99, load_cpu_seconds=2)


def names(checks) -> set[str]:
    return {c.name for c in failed(checks)}


def test_absolute_slos() -> None:
    slos = SLOs(p95_ms=50, p99_ms=100, min_rps=100, max_error_rate=0.01)
    assert names(load_checks(load(40, 90, 200), None, slos)) == set()
    assert names(load_checks(load(60, 120, 50, failures=20), None, slos)) == {
        "p95_ms", "p99_ms", "rps", "error_rate"}


def test_one_round_compares_the_point_ratios_with_pct_and_a_noise_floor() -> None:
    """Without an interval (a single round of figures), the ratios themselves are compared."""
    slos = SLOs(p95_ms=1000, p99_ms=1000, min_rps=0, max_regression_pct=20, regression_floor_ms=5)
    champion = load(100, 150, 500)
    assert names(load_checks(load(119, 170, 450), champion, slos)) == set()
    assert names(load_checks(load(130, 200, 350), champion, slos)) == {
        "p95_ratio_vs_champion", "p99_ratio_vs_champion", "rps_ratio_vs_champion"}
    fast_champion = load(2, 3, 500)
    assert names(load_checks(load(6, 7, 500), fast_champion, slos)) == set()  # within 5 ms
    assert "p95_ratio_vs_champion" in names(load_checks(load(9, 7, 500), fast_champion, slos))


def test_no_requests_means_total_error() -> None:
    assert load(1, 1, 0, requests=0).error_rate == 1.0


def parity(max_diff: float, agreement: float, accuracy: float, champion: float | None) -> ParityResult:
    return ParityResult(rows=10, max_abs_diff=max_diff, top1_agreement=agreement, accuracy=accuracy,
                        reference_accuracy=accuracy, champion_accuracy=champion,
                        abs_diffs=np.zeros(10))


def test_parity_and_accuracy_against_the_champion() -> None:
    thresholds = ParityThresholds(parity_atol=1e-4, min_top1_agreement=0.99, max_accuracy_drop=0.02)
    assert names(parity_checks(parity(1e-6, 1.0, 0.95, 0.96), thresholds)) == set()
    assert names(parity_checks(parity(1e-2, 0.9, 0.80, 0.96), thresholds)) == {
        "max_abs_diff", "top1_agreement", "accuracy_vs_champion"}
    first_run = parity_checks(parity(1e-6, 1.0, 0.5, None), thresholds)
    assert "accuracy_vs_champion" not in {c.name for c in first_run}


def test_merged_phases_add_counts_and_merge_histograms() -> None:
    from servegate.gates.load import merge, summarize

    a = LoadResult(label="x", requests=100, failures=1, seconds=2, rps=50, p50_ms=0, p95_ms=0,
                   p99_ms=0, load_cpu_seconds=0.5, histogram_ms={"10": 90, "50": 10},
                   timeline=[{"t": 1.0, "rps": 50.0}])
    b = LoadResult(label="x", requests=100, failures=0, seconds=2, rps=50, p50_ms=0, p95_ms=0,
                   p99_ms=0, load_cpu_seconds=0.5, histogram_ms={"10": 50, "20": 50},
                   timeline=[{"t": 1.0, "rps": 50.0}])
    figures, comparison = summarize({"x": [a, b]}, None)
    merged = merge([a, b], figures["x"])
    assert comparison is None
    assert (merged.requests, merged.failures, merged.seconds, merged.rps) == (200, 1, 4, 50)
    assert merged.histogram_ms == {"10": 140, "50": 10, "20": 50}
    # Locust's own percentiles, counted from the top: the 10 requests at 50 ms are the slowest
    # 5% of 200, so p95 is 50 (the gate's own reimplementation said 20)
    assert (merged.p50_ms, merged.p95_ms, merged.p99_ms) == (10.0, 50.0, 50.0)
    assert [p["t"] for p in merged.timeline] == [1.0, 3.0]


def test_reduced_precision_is_gated_on_task_accuracy_not_max_abs() -> None:
    thresholds = ParityThresholds(parity_atol=1e-4, min_top1_agreement=0.999, max_accuracy_drop=0.01)
    int8 = ParityResult(rows=10, max_abs_diff=0.17, top1_agreement=0.985, accuracy=0.95,
                        reference_accuracy=0.955, champion_accuracy=None, abs_diffs=np.zeros(10))
    assert names(parity_checks(int8, thresholds, "reduced")) == set()
    assert names(parity_checks(int8, thresholds, "fp32")) == {"max_abs_diff", "top1_agreement"}
    worse = ParityResult(rows=10, max_abs_diff=0.3, top1_agreement=0.9, accuracy=0.90,
                         reference_accuracy=0.955, champion_accuracy=None, abs_diffs=np.zeros(10))
    assert names(parity_checks(worse, thresholds, "reduced")) == {"top1_agreement",
                                                                  "accuracy_vs_reference"}


def test_embeddings_are_gated_on_cosine() -> None:
    thresholds = ParityThresholds(parity_atol=1e-4)
    good = ParityResult(rows=5, max_abs_diff=1e-6, top1_agreement=float("nan"),
                        accuracy=float("nan"), reference_accuracy=float("nan"),
                        champion_accuracy=None, abs_diffs=np.zeros(5), min_cosine=0.99999)
    assert {c.name for c in parity_checks(good, thresholds)} == {"min_cosine", "max_abs_diff"}
    assert names(parity_checks(good, thresholds)) == set()
    assert "accuracy" not in good.metrics() and good.metrics()["min_cosine"] == 0.99999
    drifted = ParityResult(rows=5, max_abs_diff=0.05, top1_agreement=float("nan"),
                           accuracy=float("nan"), reference_accuracy=float("nan"),
                           champion_accuracy=None, abs_diffs=np.zeros(5), min_cosine=0.995)
    assert names(parity_checks(drifted, thresholds, "fp32")) == {"min_cosine", "max_abs_diff"}
    assert names(parity_checks(drifted, thresholds, "reduced")) == set()
