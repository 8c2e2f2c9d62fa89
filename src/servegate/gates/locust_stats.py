"""Locust's own percentiles for the load gate: each target's phases merged, and the bootstrap
comparison of challenger and champion (``servegate.gates.compare``).

Run in a subprocess only (importing Locust monkey-patches the process)::

    python -m servegate.gates.locust_stats < request.json > answer.json

The request: ``{"phases": {label: [{"histogram": {ms: n}, "requests": n, "seconds": s}]},
"pair": [champion_label, challenger_label] | null, "replicates": n, "seed": n, "statistic":
"pooled" | "per-round"}``; the answer:
``{"figures": {label: {"p50_ms", "p95_ms", "p99_ms"}}, "comparison": {...} | null}``.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from locust.stats import calculate_response_time_percentile

    from servegate.gates.compare import Phase, compare, figures

    request = json.load(sys.stdin)
    phases = {label: [Phase({int(float(k)): int(v) for k, v in p["histogram"].items()},
                            int(p["requests"]), float(p["seconds"])) for p in items]
              for label, items in request["phases"].items()}
    answer: dict = {"figures": {label: figures(items, calculate_response_time_percentile)
                                for label, items in phases.items()}, "comparison": None}
    if request.get("pair"):
        champion, challenger = request["pair"]
        answer["comparison"] = compare(
            list(zip(phases[champion], phases[challenger], strict=True)),
            calculate_response_time_percentile, replicates=int(request.get("replicates", 1000)),
            seed=int(request.get("seed", 0)),
            statistic=request.get("statistic", "pooled")).as_dict()
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
