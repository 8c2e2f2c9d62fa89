"""What ``servegate tune`` shows and logs: the points as a table, the frontier as a plot
(throughput against p95), the winner as pipeline parameters, and MLflow's params and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from rich.table import Table

from servegate.tuning.search import Outcome, TuneResult


@dataclass(frozen=True)
class Tuned:
    """One ``servegate tune``: the search's result, what was tuned, and the MLflow run."""

    result: TuneResult
    name: str
    version: str
    run_id: str
    plot: str  # the plot's artifact name under tune/


ORDER = {"frontier": 0, "dominated": 1, "over SLO": 2, "failed": 3, "pruned": 4, "not reached": 5}


def _rank(o: Outcome) -> tuple[int, float]:
    return ORDER[o.status], -(o.best.rps if o.best else 0.0)


def points_table(result: TuneResult, name: str, *, all_points: bool = False) -> Table:
    """Measured points (all of them with ``all_points``), frontier first, winner starred."""
    slo = result.slo
    table = Table("", "batch", "delay ms", "workers", "threads", "status", "users", "req/s", "p50 ms",
                  "p95 ms", "p99 ms", "why",
                  title=f"{name}: tuned for p95 <= {slo.p95_ms:g} ms, p99 <= {slo.p99_ms:g} ms "
                        f"({result.measurements} of {result.grid_measurements} grid measurements)")
    for o in sorted(result.outcomes, key=_rank):
        if not all_points and not o.levels and o.status != "failed":
            continue
        shown = o.best or (o.levels[-1] if o.levels else None)
        figures = ([str(shown.users), f"{shown.rps:.1f}", f"{shown.p50_ms:.1f}",
                    f"{shown.p95_ms:.1f}", f"{shown.p99_ms:.1f}"] if shown else [""] * 5)
        star = "*" if result.winner is not None and o.point == result.winner.point else ""
        table.add_row(star, str(o.point.batch_size), str(o.point.max_batch_delay_ms),
                      str(o.point.workers), str(o.point.threads or "auto"), o.status, *figures,
                      o.reason)
    return table


def counts(result: TuneResult) -> dict[str, int]:
    found: dict[str, int] = {}
    for o in result.outcomes:
        found[o.status] = found.get(o.status, 0) + 1
    return found


def run_parameters(result: TuneResult) -> str:
    """The winner as the MLproject's parameters."""
    if result.winner is None:
        return ""
    p = result.winner.point
    return (f"-P batch_size={p.batch_size} -P max_batch_delay_ms={p.max_batch_delay_ms} "
            f"-P workers={p.workers} -P threads={p.threads}")


def mlflow_figures(result: TuneResult) -> tuple[dict[str, Any], dict[str, float]]:
    """Params (SLO, costs, winner) and metrics (each measured point's best level, the costs)."""
    params: dict[str, Any] = {"tune.p95_ms": result.slo.p95_ms, "tune.p99_ms": result.slo.p99_ms,
                              "tune.grid_measurements": result.grid_measurements,
                              "tune.measurements": result.measurements}
    if result.winner is not None:
        p = result.winner.point
        params |= {"tune.batch_size": p.batch_size, "tune.max_batch_delay_ms": p.max_batch_delay_ms,
                   "tune.workers": p.workers, "tune.threads": p.threads or "auto"}
    c = result.costs
    metrics: dict[str, float] = {
        "cost.handler_ms_batch1": c.handler_ms_batch1, "cost.handler_ms_largest": c.handler_ms_largest,
        "cost.largest_batch": float(c.largest_batch), "cost.frontend_ms": c.frontend_ms,
        "measurements": float(result.measurements),
        "grid_measurements": float(result.grid_measurements)}
    metrics |= {f"points.{k.replace(' ', '_')}": float(v) for k, v in counts(result).items()}
    for o in result.measured:
        if o.best is not None:
            metrics |= {f"{o.point.label}.rps": o.best.rps, f"{o.point.label}.p95_ms": o.best.p95_ms,
                        f"{o.point.label}.p99_ms": o.best.p99_ms}
    if result.winner is not None and result.winner.best is not None:
        metrics |= {"winner.rps": result.winner.best.rps, "winner.p95_ms": result.winner.best.p95_ms,
                    "winner.p99_ms": result.winner.best.p99_ms}
    confirmation = result.confirmation
    if confirmation is not None:
        params |= {"tune.confirmed": confirmation.kept,
                   "tune.incumbent": confirmation.incumbent.label}
        for side, high, low in (("winner", confirmation.winner, confirmation.winner_low),
                                ("current", confirmation.current, confirmation.current_low)):
            metrics |= {f"confirm.{side}.rps": median(m.rps for m in high),
                        f"confirm.{side}.p95_ms": median(m.p95_ms for m in high)}
            if low:
                metrics[f"confirm.{side}.low_load_p95_ms"] = median(m.p95_ms for m in low)
    return params, metrics


def frontier_plot(result: TuneResult, path: Path) -> Path:
    """Throughput against p95 of every measured level; the frontier joined; the SLO a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = {"frontier": "tab:green", "dominated": "tab:grey", "over SLO": "tab:red",
               "failed": "black"}
    for o in result.measured:
        xs = [m.p95_ms for m in o.levels]
        ys = [m.rps for m in o.levels]
        ax.plot(xs, ys, marker="o", ms=3, lw=0.6, alpha=0.6, color=colours.get(o.status, "tab:blue"))
    front = [o for o in result.frontier if o.best is not None]
    if front:
        best = sorted(front, key=lambda o: o.best.p95_ms if o.best else 0.0)
        ax.plot([o.best.p95_ms for o in best if o.best], [o.best.rps for o in best if o.best],
                marker="s", color="tab:green", lw=2, label="frontier")
        for o in best:
            assert o.best is not None
            ax.annotate(o.point.label, (o.best.p95_ms, o.best.rps), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    if result.winner is not None and result.winner.best is not None:
        ax.plot([result.winner.best.p95_ms], [result.winner.best.rps], marker="*", ms=16,
                color="gold", mec="black", ls="", label=f"winner {result.winner.point.label}")
    ax.axvline(result.slo.p95_ms, color="tab:red", ls="--", lw=1, label="p95 SLO")
    ax.set_xlabel("p95 latency (ms)")
    ax.set_ylabel("throughput (req/s)")
    ax.set_title("servegate tune: throughput against p95 (each line: one point's load levels)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_files(result: TuneResult, folder: Path) -> Path:
    """``frontier.png`` and ``frontier.json`` (every point) into ``folder``; return the plot."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "frontier.json").write_text(result.to_json(), encoding="utf-8")
    return frontier_plot(result, folder / "frontier.png")
