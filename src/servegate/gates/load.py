"""The load gate: Locust (in a subprocess) against served versions, champion and challenger
alternating in rounds; absolute SLO checks, and the comparison with the champion as a bootstrap
interval over those rounds (``gates.compare``), with more rounds while it is inconclusive."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from servegate.backends.base import ReplicaAccess
from servegate.config import CHILD_ENV, LoadSettings, SLOs, child_environment
from servegate.errors import PipelineError
from servegate.gates.checks import Check
from servegate.gates.compare import Comparison, Interval, Statistic

#: Above this many cores per load process, a phase is flagged load-bound.
LOAD_BOUND_CORES = 0.8


@dataclass(frozen=True)
class LoadResult:
    """Figures of one Locust run against one endpoint."""

    label: str
    requests: int
    failures: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    load_cpu_seconds: float
    histogram_ms: dict[str, int] = field(default_factory=dict)
    timeline: list[dict[str, float]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: The challenger's merged result: its comparison with the champion over the rounds.
    comparison: Comparison | None = None
    #: Locust processes that generated the load (``load_cpu_seconds`` is theirs together).
    processes: int = 1
    #: Phases merged into this result, and how many of them were load-bound (None: this
    #: result's own CPU figures decide, as for one phase).
    phases: int = 1
    load_bound_phases: int | None = None
    #: Requests of the warm-up before each measured window (in no figure above).
    warmup_requests: int = 0

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    @property
    def cores_per_process(self) -> float:
        """CPU the load processes used, in cores, on average per process."""
        return self.load_cpu_seconds / (self.seconds * self.processes) if self.seconds else 0.0

    @property
    def load_bound(self) -> bool:
        """A phase's load processes used more than ``LOAD_BOUND_CORES`` of a core each: the load
        generator may be the bottleneck (more ``load_processes``, or another host, would tell)."""
        if self.load_bound_phases is not None:
            return self.load_bound_phases > 0
        return self.cores_per_process > LOAD_BOUND_CORES

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": float(v) for k, v in {
            "requests": self.requests, "rps": self.rps, "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms, "p99_ms": self.p99_ms, "error_rate": self.error_rate,
            "load_cpu_fraction": self.load_cpu_seconds / self.seconds if self.seconds else 0.0,
            "load_cores_per_process": self.cores_per_process,
            "load_bound_phases": float(self.load_bound_phases or int(self.load_bound)),
        }.items()}


#: What the Locust process inherits from ours (``config.CHILD_ENV``: nothing secret).
INHERITED_ENV = CHILD_ENV


def locust_environment(**settings: str) -> dict[str, str]:
    """The Locust process's whole environment (``config.child_environment``)."""
    return child_environment(**settings)


def run_load(*, label: str, host: str, model: str, version: str | None, inference_key: str | None,
             samples: list[Any], settings: LoadSettings, locustfile: Path, user_class: str,
             ca_bundle: str | None = None, replicas: tuple[ReplicaAccess, ...] = ()) -> LoadResult:
    """Run ``user_class`` of ``locustfile`` (the target's: ``Target.load_profile``) against
    one version, in ``settings.processes``
    Locust processes; ``inference_key`` reaches the Locust process in a key file only this user
    can read, never on its command line; an ``https://`` host is verified against ``ca_bundle``
    (its path: ``SERVEGATE_CA_BUNDLE``), else the system's CAs. ``replicas`` (a fleet's, with
    each one's key) go in a file of the same kind (``SERVEGATE_REPLICAS_FILE``): the users send
    their requests round-robin over them."""
    with tempfile.TemporaryDirectory(prefix="servegate-load-") as tmp:
        samples_file = Path(tmp) / "samples.json"
        samples_file.write_text(json.dumps(samples), encoding="utf-8")
        key_file = ""
        if inference_key:
            key_path = Path(tmp) / "key_file.json"
            key_path.touch(mode=0o600)
            key_path.write_text(json.dumps({"inference": {"key": inference_key}}), encoding="utf-8")
            key_file = str(key_path)
        replicas_file = ""
        if replicas:
            replicas_path = Path(tmp) / "replicas.json"
            replicas_path.touch(mode=0o600)
            replicas_path.write_text(json.dumps([{"url": r.inference_url, "key": r.inference_key}
                                                 for r in replicas]), encoding="utf-8")
            replicas_file = str(replicas_path)
        out = Path(tmp) / "figures.json"
        env = locust_environment(SERVEGATE_MODEL=model, SERVEGATE_VERSION=version or "",
                                 SERVEGATE_SAMPLES=str(samples_file), SERVEGATE_KEY_FILE=key_file,
                                 SERVEGATE_REPLICAS_FILE=replicas_file,
                                 **({"SERVEGATE_CA_BUNDLE": ca_bundle} if ca_bundle else {}))
        command = [
            sys.executable, "-m", "servegate.gates.locust_runner",
            "--locustfile", str(locustfile),
            "--user-class", user_class,
            "--host", host, "--users", str(settings.users), "--seconds", str(settings.seconds),
            "--processes", str(settings.processes), "--out", str(out),
        ]
        try:
            completed = subprocess.run(command, env=env, capture_output=True, text=True,
                                       timeout=settings.seconds + 120)
        except subprocess.TimeoutExpired as exc:
            raise PipelineError(f"the load test against {label} did not finish") from exc
        if completed.returncode != 0 or not out.exists():
            raise PipelineError(f"the load test against {label} failed: {completed.stderr[-1500:]}")
        figures = json.loads(out.read_text(encoding="utf-8"))
    result = LoadResult(
        label=label, requests=figures["requests"], failures=figures["failures"],
        seconds=figures["seconds"], rps=figures["rps"], p50_ms=figures["p50_ms"],
        p95_ms=figures["p95_ms"], p99_ms=figures["p99_ms"],
        load_cpu_seconds=figures["load_cpu_seconds"], histogram_ms=figures["histogram_ms"],
        timeline=figures["timeline"], errors=figures["errors"],
        processes=int(figures.get("load_processes", 1)),
        warmup_requests=int(figures.get("warmup_requests", 0)),
    )
    return replace(result, load_bound_phases=int(result.load_bound))


def summarize(phases: dict[str, list[LoadResult]], pair: tuple[str, str] | None, *,
              replicates: int = 1000,
              statistic: Statistic = "pooled") -> tuple[dict[str, dict[str, float]], Comparison | None]:
    """Each label's phases merged into p50/p95/p99, and the comparison of ``pair`` (champion,
    challenger) over their rounds: computed with Locust's own percentiles, in a subprocess
    (``servegate.gates.locust_stats``) since importing Locust monkey-patches the process."""
    request = {"phases": {label: [{"histogram": r.histogram_ms, "requests": r.requests,
                                   "seconds": r.seconds} for r in results]
                          for label, results in phases.items()},
               "pair": list(pair) if pair else None, "replicates": replicates,
               "statistic": statistic}
    try:
        done = subprocess.run([sys.executable, "-m", "servegate.gates.locust_stats"],
                              input=json.dumps(request), capture_output=True, text=True,
                              timeout=300, env=locust_environment())
    except subprocess.TimeoutExpired as exc:
        raise PipelineError("the load gate's statistics did not finish") from exc
    if done.returncode != 0:
        raise PipelineError(f"the load gate's statistics failed: {done.stderr[-1500:]}")
    answer = json.loads(done.stdout)
    comparison = Comparison.from_dict(answer["comparison"]) if answer["comparison"] else None
    return answer["figures"], comparison


def merge(results: list[LoadResult], figures: dict[str, float]) -> LoadResult:
    """One result from several phases against the same target (counts add, histograms merge;
    ``figures``: the merged percentiles, as Locust computes them)."""
    histogram: Counter[str] = Counter()
    timeline: list[dict[str, float]] = []
    offset = 0.0
    for r in results:
        histogram.update(r.histogram_ms)
        timeline += [p | {"t": p["t"] + offset} for p in r.timeline]
        offset += r.seconds
    seconds = sum(r.seconds for r in results)
    requests = sum(r.requests for r in results)
    return LoadResult(
        label=results[0].label, requests=requests, failures=sum(r.failures for r in results),
        seconds=seconds, rps=requests / seconds if seconds else 0.0,
        p50_ms=figures["p50_ms"], p95_ms=figures["p95_ms"], p99_ms=figures["p99_ms"],
        load_cpu_seconds=sum(r.load_cpu_seconds for r in results), histogram_ms=dict(histogram),
        timeline=timeline, errors=[e for r in results for e in r.errors][:10],
        processes=max(r.processes for r in results),
        warmup_requests=sum(r.warmup_requests for r in results),
        phases=sum(r.phases for r in results),
        load_bound_phases=sum(int(r.load_bound) if r.load_bound_phases is None
                              else r.load_bound_phases for r in results),
    )


@dataclass(frozen=True)
class Adaptive:
    """When to run more rounds: while the comparison is inconclusive against ``slos``, up to
    ``max_rounds`` (the gate policy's cap on ``load_rounds``)."""

    slos: SLOs
    max_rounds: int


def run_ab(targets: list[tuple[str, str]], *, settings: LoadSettings,
           adaptive: Adaptive | None = None, **common: Any) -> dict[str, LoadResult]:
    """Load each (label, version) target, alternating between them for ``settings.rounds``
    rounds of ``seconds / rounds`` each (more, up to ``adaptive.max_rounds``, while the
    comparison of the first target (champion) and the last (challenger) is inconclusive); return
    the merged result per label, the challenger's carrying the comparison."""
    rounds = settings.rounds if len(targets) > 1 else 1
    phase = settings.model_copy(update={"seconds": settings.seconds / rounds})
    phases: dict[str, list[LoadResult]] = {label: [] for label, _ in targets}

    def one_round() -> None:
        for label, version in targets:
            phases[label].append(run_load(label=label, version=version, settings=phase, **common))

    for _ in range(rounds):
        one_round()
    pair = (targets[0][0], targets[-1][0]) if len(targets) > 1 else None
    figures, comparison = summarize(phases, pair)
    while (comparison is not None and adaptive is not None
           and len(phases[targets[0][0]]) < adaptive.max_rounds
           and not conclusive(comparison, adaptive.slos)):
        one_round()
        figures, comparison = summarize(phases, pair)
    merged = {label: merge(results, figures[label]) for label, results in phases.items()}
    if pair is not None:
        merged[pair[1]] = replace(merged[pair[1]], comparison=comparison)
    return merged


# ---- decisions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """The challenger/champion ratios allowed: latency at most, throughput at least."""

    p95: float
    p99: float
    rps: float


def allowed(champion_p95_ms: float, champion_p99_ms: float, slos: SLOs) -> Limits:
    """``max_regression_pct`` as ratios; latency differences under ``regression_floor_ms`` are
    noise whatever the percentage says."""
    slack = slos.max_regression_pct / 100

    def latency(champion_ms: float) -> float:
        if champion_ms <= 0:
            return float("inf")
        return max(1 + slack, (champion_ms + slos.regression_floor_ms) / champion_ms)

    return Limits(latency(champion_p95_ms), latency(champion_p99_ms), max(0.0, 1 - slack))


Verdict = Literal["worse", "not worse", "inconclusive"]


def verdicts(comparison: Comparison, slos: SLOs) -> dict[str, Verdict]:
    """Per ratio: ``worse`` when its whole interval lies beyond the limit, ``not worse`` when
    the whole interval is within it, ``inconclusive`` when it straddles it."""
    limits = allowed(comparison.champion_p95_ms, comparison.champion_p99_ms, slos)

    def latency(interval: Interval, limit: float) -> Verdict:
        return "worse" if interval.low > limit else "not worse" if interval.high <= limit else "inconclusive"

    def throughput(interval: Interval, limit: float) -> Verdict:
        return "worse" if interval.high < limit else "not worse" if interval.low >= limit else "inconclusive"

    return {"p95": latency(comparison.p95, limits.p95), "p99": latency(comparison.p99, limits.p99),
            "rps": throughput(comparison.rps, limits.rps)}


def conclusive(comparison: Comparison, slos: SLOs) -> bool:
    return "inconclusive" not in verdicts(comparison, slos).values()


def load_checks(challenger: LoadResult, champion: LoadResult | None, slos: SLOs) -> list[Check]:
    """Absolute SLOs; and, against the champion, the challenger/champion ratios of p95, p99 and
    throughput: failed only when their whole interval lies beyond the allowed regression (the
    check's value is the interval's bound nearest the limit). Without an interval (one round of
    figures only) the point ratios are compared."""
    checks = [
        Check("load", "p95_ms", challenger.p95_ms, "<=", slos.p95_ms),
        Check("load", "p99_ms", challenger.p99_ms, "<=", slos.p99_ms),
        Check("load", "rps", challenger.rps, ">=", slos.min_rps),
        Check("load", "error_rate", challenger.error_rate, "<=", slos.max_error_rate),
    ]
    if champion is None or not champion.requests:
        return checks
    comparison = challenger.comparison
    if comparison is None:
        def point(a: float, b: float) -> Interval:
            ratio = a / b if b > 0 else 1.0
            return Interval(ratio, ratio, ratio)

        comparison = Comparison(point(challenger.p95_ms, champion.p95_ms),
                                point(challenger.p99_ms, champion.p99_ms),
                                point(challenger.rps, champion.rps),
                                champion.p95_ms, champion.p99_ms, rounds=())
    limits = allowed(comparison.champion_p95_ms, comparison.champion_p99_ms, slos)
    return checks + [
        Check("load", "p95_ratio_vs_champion", comparison.p95.low, "<=", limits.p95),
        Check("load", "p99_ratio_vs_champion", comparison.p99.low, "<=", limits.p99),
        Check("load", "rps_ratio_vs_champion", comparison.rps.high, ">=", limits.rps),
    ]
