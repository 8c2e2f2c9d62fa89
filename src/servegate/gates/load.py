"""The load gate: Locust (in a subprocess) against one served version; SLO and regression checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servegate._resources import loadtests_dir
from servegate.config import LoadSettings, SLOs
from servegate.errors import PipelineError
from servegate.gates.checks import Check


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

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    @property
    def load_bound(self) -> bool:
        """The load generator used more than 0.8 of a core: it may be the bottleneck."""
        return self.seconds > 0 and self.load_cpu_seconds / self.seconds > 0.8

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": float(v) for k, v in {
            "requests": self.requests, "rps": self.rps, "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms, "p99_ms": self.p99_ms, "error_rate": self.error_rate,
            "load_cpu_fraction": self.load_cpu_seconds / self.seconds if self.seconds else 0.0,
        }.items()}


#: What the Locust process inherits from ours: the basics a Python process needs, nothing
#: secret (no tracking credentials, no server keys, no cloud tokens).
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SSL_CERT_FILE",
                 "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


def locust_environment(**settings: str) -> dict[str, str]:
    """The Locust process's whole environment: ``INHERITED_ENV``, a ``PYTHONPATH`` reaching
    servegate however this process did (installed or ``src/``), and ``settings``."""
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return env | settings


def run_load(*, label: str, host: str, model: str, version: str | None, inference_key: str | None,
             samples: list[Any], settings: LoadSettings, locustfile: Path | None = None,
             user_class: str = "TorchServePredictUser", ca_bundle: str | None = None) -> LoadResult:
    """Run a locustfile's user class (default: ``loadtests/torchserve.py`` against
    ``/predictions/{model}[/{version}]``) against one version; ``inference_key`` reaches the
    Locust process in a key file only this user can read, never on its command line; an
    ``https://`` host is verified against ``ca_bundle`` (its path: ``SERVEGATE_CA_BUNDLE``),
    else the system's CAs."""
    with tempfile.TemporaryDirectory(prefix="servegate-load-") as tmp:
        samples_file = Path(tmp) / "samples.json"
        samples_file.write_text(json.dumps(samples), encoding="utf-8")
        key_file = ""
        if inference_key:
            key_path = Path(tmp) / "key_file.json"
            key_path.touch(mode=0o600)
            key_path.write_text(json.dumps({"inference": {"key": inference_key}}), encoding="utf-8")
            key_file = str(key_path)
        out = Path(tmp) / "figures.json"
        env = locust_environment(SERVEGATE_MODEL=model, SERVEGATE_VERSION=version or "",
                                 SERVEGATE_SAMPLES=str(samples_file), SERVEGATE_KEY_FILE=key_file,
                                 **({"SERVEGATE_CA_BUNDLE": ca_bundle} if ca_bundle else {}))
        command = [
            sys.executable, "-m", "servegate.gates.locust_runner",
            "--locustfile", str(locustfile or loadtests_dir() / "torchserve.py"),
            "--user-class", user_class,
            "--host", host, "--users", str(settings.users), "--seconds", str(settings.seconds),
            "--out", str(out),
        ]
        try:
            completed = subprocess.run(command, env=env, capture_output=True, text=True,
                                       timeout=settings.seconds + 120)
        except subprocess.TimeoutExpired as exc:
            raise PipelineError(f"the load test against {label} did not finish") from exc
        if completed.returncode != 0 or not out.exists():
            raise PipelineError(f"the load test against {label} failed: {completed.stderr[-1500:]}")
        figures = json.loads(out.read_text(encoding="utf-8"))
    return LoadResult(
        label=label, requests=figures["requests"], failures=figures["failures"],
        seconds=figures["seconds"], rps=figures["rps"], p50_ms=figures["p50_ms"],
        p95_ms=figures["p95_ms"], p99_ms=figures["p99_ms"],
        load_cpu_seconds=figures["load_cpu_seconds"], histogram_ms=figures["histogram_ms"],
        timeline=figures["timeline"], errors=figures["errors"],
    )


def percentile(histogram: dict[str, int], fraction: float) -> float:
    """Locust's percentile of a response-time histogram (ms -> count)."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    needed = total * fraction
    seen = 0
    for key in sorted(histogram, key=float):
        seen += histogram[key]
        if seen >= needed:
            return float(key)
    return float(max(histogram, key=float))


def merge(results: list[LoadResult]) -> LoadResult:
    """One result from several phases against the same target (counts add, histograms merge)."""
    histogram: Counter[str] = Counter()
    timeline: list[dict[str, float]] = []
    offset = 0.0
    for r in results:
        histogram.update(r.histogram_ms)
        timeline += [p | {"t": p["t"] + offset} for p in r.timeline]
        offset += r.seconds
    seconds = sum(r.seconds for r in results)
    requests = sum(r.requests for r in results)
    hist = dict(histogram)
    return LoadResult(
        label=results[0].label, requests=requests, failures=sum(r.failures for r in results),
        seconds=seconds, rps=requests / seconds if seconds else 0.0,
        p50_ms=percentile(hist, 0.50), p95_ms=percentile(hist, 0.95), p99_ms=percentile(hist, 0.99),
        load_cpu_seconds=sum(r.load_cpu_seconds for r in results), histogram_ms=hist,
        timeline=timeline, errors=[e for r in results for e in r.errors][:10],
    )


def run_ab(targets: list[tuple[str, str]], *, settings: LoadSettings,
           **common: Any) -> dict[str, LoadResult]:
    """Load each (label, version) target, alternating between them for ``settings.rounds``
    rounds of ``seconds / rounds`` each; return the merged result per label."""
    rounds = settings.rounds if len(targets) > 1 else 1
    phase = settings.model_copy(update={"seconds": settings.seconds / rounds})
    phases: dict[str, list[LoadResult]] = {label: [] for label, _ in targets}
    for _ in range(rounds):
        for label, version in targets:
            phases[label].append(run_load(label=label, version=version, settings=phase, **common))
    return {label: merge(results) for label, results in phases.items()}


def load_checks(challenger: LoadResult, champion: LoadResult | None, slos: SLOs) -> list[Check]:
    """Absolute SLOs, and no regression beyond ``max_regression_pct`` against the champion."""
    checks = [
        Check("load", "p95_ms", challenger.p95_ms, "<=", slos.p95_ms),
        Check("load", "p99_ms", challenger.p99_ms, "<=", slos.p99_ms),
        Check("load", "rps", challenger.rps, ">=", slos.min_rps),
        Check("load", "error_rate", challenger.error_rate, "<=", slos.max_error_rate),
    ]
    if champion is not None and champion.requests:
        slack = slos.max_regression_pct / 100

        def latency_limit(champion_ms: float) -> float:
            return max(champion_ms * (1 + slack), champion_ms + slos.regression_floor_ms)

        checks += [
            Check("load", "p95_ms_vs_champion", challenger.p95_ms, "<=", latency_limit(champion.p95_ms)),
            Check("load", "p99_ms_vs_champion", challenger.p99_ms, "<=", latency_limit(champion.p99_ms)),
            Check("load", "rps_vs_champion", challenger.rps, ">=", champion.rps * (1 - slack)),
        ]
    return checks
