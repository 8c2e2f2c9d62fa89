"""The gate report: Markdown and HTML with plots, written to a directory and logged to MLflow."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from servegate.gates.checks import Check
from servegate.gates.load import LoadResult
from servegate.gates.network import NetworkProbe
from servegate.gates.parity import ParityResult


@dataclass(frozen=True)
class GateReport:
    name: str
    version: str
    champion_version: str | None
    decision: str  # "promoted" | "rejected" | "passed, not promoted"
    checks: list[Check]
    parity: ParityResult | None
    load: list[LoadResult]
    endpoint: str
    curl: str
    #: Where the evaluation data came from (and loudly when it was only the input example).
    eval_note: str = ""
    #: Which server the run deployed to (attached or local, how archives reached it).
    server: str = ""
    #: Where the load came from and the round trip to the server, measured before the phases.
    network: NetworkProbe | None = None
    #: Warnings about the load measurement (a long round trip against the SLO).
    load_notes: tuple[str, ...] = ()


def _plots(report: GateReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    if report.load:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        width = 0.8 / len(report.load)
        for i, result in enumerate(report.load):
            values = [result.p50_ms, result.p95_ms, result.p99_ms]
            axes[0].bar([j + i * width for j in range(3)], values, width, label=result.label)
            axes[1].plot([p["t"] for p in result.timeline], [p["rps"] for p in result.timeline],
                         marker="o", label=result.label)
        axes[0].set_xticks([j + width * (len(report.load) - 1) / 2 for j in range(3)], ["p50", "p95", "p99"])
        axes[0].set_ylabel("latency (ms)")
        axes[0].set_title("Latency percentiles")
        axes[0].legend()
        axes[1].set_xlabel("seconds")
        axes[1].set_ylabel("requests/s")
        axes[1].set_title("Throughput over time")
        axes[1].legend()
        fig.tight_layout()
        paths.append(out / "latency_throughput.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    if report.parity is not None:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        ax.hist(report.parity.abs_diffs, bins=30)
        ax.set_xlabel("max |served - reference| per row")
        ax.set_ylabel("rows")
        ax.set_title("Parity: served vs in-process")
        fig.tight_layout()
        paths.append(out / "parity.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


def _markdown(report: GateReport, plots: list[Path]) -> str:
    lines = [
        f"# Gate report: {report.name} v{report.version}",
        "",
        f"**Decision: {report.decision}** (champion before this run: "
        f"{'v' + report.champion_version if report.champion_version else 'none'})",
        "",
        "| gate | check | value | threshold | result |",
        "|---|---|---|---|---|",
    ]
    for c in report.checks:
        lines.append(f"| {c.gate} | {c.name} | {c.value:.6g} | {c.comparison} {c.threshold:.6g} | "
                     f"{'pass' if c.passed else '**FAIL**'} |")
    if report.server:
        lines += ["", f"Server: {report.server}"]
    if report.load:
        lines += ["", "## Load", ""]
        if report.network is not None:
            lines += [report.network.describe().capitalize() + ".", ""]
        lines += [f"**{note}**" for note in report.load_notes] + ([""] if report.load_notes else [])
        lines += ["| target | requests | req/s | p50 ms | p95 ms | p99 ms | errors | load-bound |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report.load:
            lines.append(f"| {r.label} | {r.requests} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | "
                         f"{r.p99_ms:.1f} | {r.error_rate:.2%} | {'yes' if r.load_bound else 'no'} |")
    if report.parity is not None:
        p = report.parity
        lines += ["", "## Parity", "", f"- task: {p.task}", f"- rows: {p.rows}",
                  f"- max abs diff: {p.max_abs_diff:.3g}"]
        lines += [f"- {name.replace('_', ' ')}: {value:.4g}" for name, value in p.metrics().items()
                  if name not in ("rows", "max_abs_diff")]
        lines += [f"- **{note}**" for note in p.notes()]
        if report.eval_note:
            lines += [f"- evaluation data: {report.eval_note}"]
    lines += ["", "## Endpoint", "", f"`{report.endpoint}`", "", "```bash", report.curl, "```", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _html(markdown_text: str, plots: list[Path], title: str) -> str:
    """The Markdown rendered to a standalone page, plots embedded as data URIs."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode()
        body = body.replace(f'src="{plot.name}"', f'src="data:image/png;base64,{data}"')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
             "pre{background:#f6f6f6;padding:1em;white-space:pre-wrap;word-break:break-all}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")


def write_report(report: GateReport, out: Path) -> list[Path]:
    """Write ``gate_report.md``, ``gate_report.html`` and the plots; return every file."""
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(report, out)
    markdown = _markdown(report, plots)
    (out / "gate_report.md").write_text(markdown, encoding="utf-8")
    (out / "gate_report.html").write_text(
        _html(markdown, plots, f"{report.name} v{report.version}"), encoding="utf-8")
    return [out / "gate_report.md", out / "gate_report.html", *plots]
