"""The gate report: Markdown and HTML with plots, written to a directory and logged to MLflow.

The report is inert: every value that comes from a model, a run, a payload or a server (names,
labels, the evaluation note, URLs, the curl) is escaped for Markdown and HTML, and the HTML is
rendered with raw HTML off and no link or image other than the report's own plots. URLs lose their
userinfo and query; where the servers' addresses are secret (``config.redact_hosts``: the
promotion workflow), they are named by the setting that holds them, never shown.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servegate.gates.checks import Check
from servegate.gates.load import LoadResult
from servegate.gates.network import NetworkProbe
from servegate.gates.parity import ParityResult
from servegate.redact import redact_host, redact_urls_in


@dataclass(frozen=True)
class EvalSample:
    """One held-out image as it was sent, with the served and the true class."""

    image: bytes
    predicted: str
    truth: str | None = None


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
    #: Image models: a few held-out images with their served and true classes.
    samples: tuple[EvalSample, ...] = ()


def _load_bound(result: LoadResult) -> str:
    """``yes (k of n phases)`` when a phase's Locust processes used more than 0.8 of a core
    each, else ``no``; with the processes and their cores per process."""
    cores = f"{result.cores_per_process:.2f} cores/process x {result.processes}"
    if not result.load_bound:
        return f"no ({cores})"
    phases = result.load_bound_phases if result.load_bound_phases is not None else 1
    return f"yes ({phases} of {result.phases} phases; {cores})"


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
    if report.samples:
        paths.append(_sample_grid(report.samples, out / "eval_samples.png"))
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


#: Characters that start Markdown markup inline (Python-Markdown and GitHub's), escaped with ``\\``.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+!|~])")
#: Line breaks of every kind (Markdown blocks, code fences and table rows end at them).
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")


@dataclass(frozen=True)
class _Shown:
    """How values are shown: URLs redacted (hosts hidden or not), then escaped."""

    hide_hosts: bool
    named: Mapping[str, str]

    def url_safe(self, value: object) -> str:
        return redact_urls_in(_LINE_BREAKS.sub(" ", str(value)), hide_hosts=self.hide_hosts,
                              named=self.named)

    def text(self, value: object) -> str:
        """``value`` as literal text in Markdown: no markup, no HTML, one line."""
        return html.escape(_MARKDOWN_PUNCTUATION.sub(r"\\\1", self.url_safe(value)), quote=False)

    def code(self, value: object, language: str = "text") -> list[str]:
        """``value`` as a fenced code block (one line: nothing inside can close the fence)."""
        return [f"```{language}", self.url_safe(value), "```"]


def _served_now(report: GateReport, show: Callable[[object], str]) -> str:
    """What the endpoint section says when nothing is served (no champion, none promoted)."""
    name, version = show(report.name), show(report.version)
    if report.decision == "rejected":
        why = f"v{version} was rejected"
    elif report.decision == "passed, not promoted":
        why = f"v{version} passed the gates but was not promoted (promote=false)"
    else:
        why = f"v{version}: {show(report.decision)}"
    return f"Nothing of {name} is served by this run: {why}, and there was no champion before it."


def image_samples(model: Any, parity: ParityResult | None, count: int = 8) -> tuple[EvalSample, ...]:
    """The first ``count`` held-out images of an image model as the gate sent them, with the
    class the challenger answered and the true class (empty for other models)."""
    if not getattr(model, "sends_images", False) or parity is None or parity.predicted is None:
        return ()
    rows = model.request_rows(model.eval_x)[:count]
    labels, truth = list(model.labels), model.eval_y

    def name(index: Any) -> str:
        return labels[int(index)] if 0 <= int(index) < len(labels) else str(index)

    return tuple(EvalSample(base64.b64decode(row["b64"]), name(parity.predicted[i]),
                            name(truth[i]) if truth is not None else None)
                 for i, row in enumerate(rows))


#: The largest image drawn in the report's sample grid (a thumbnail is made of anything larger).
SAMPLE_PIXELS = 4_000_000


def _sample_grid(samples: tuple[EvalSample, ...], path: Path) -> Path:
    """Held-out images in a grid, each titled with its served (and true) class; a wrong answer
    in red. Titles are drawn as plain text (no mathtext), so a label is never interpreted."""
    import io

    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    columns = min(4, len(samples))
    rows = (len(samples) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, samples, strict=False):
        try:
            with Image.open(io.BytesIO(sample.image)) as img:
                if img.width * img.height > SAMPLE_PIXELS:
                    img.thumbnail((1024, 1024))
                ax.imshow(np.asarray(img.convert("RGB")))
        except Exception:  # noqa: BLE001 (a picture that cannot be drawn is left blank)
            continue
        wrong = sample.truth is not None and sample.truth != sample.predicted
        title = f"served: {sample.predicted[:24]}" + (
            f"\ntrue: {sample.truth[:24]}" if sample.truth is not None else "")
        ax.set_title(title, fontsize=8, color="red" if wrong else "black", usetex=False,
                     parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _markdown(report: GateReport, plots: list[Path], shown: _Shown) -> str:
    t = shown.text
    champion = "v" + t(report.champion_version) if report.champion_version else "none"
    lines = [
        f"# Gate report: {t(report.name)} v{t(report.version)}",
        "",
        f"**Decision: {t(report.decision)}** (champion before this run: {champion})",
        "",
        "| gate | check | value | threshold | result |",
        "|---|---|---|---|---|",
    ]
    for c in report.checks:
        lines.append(f"| {t(c.gate)} | {t(c.name)} | {c.value:.6g} | {t(c.comparison)} {c.threshold:.6g} | "
                     f"{'pass' if c.passed else '**FAIL**'} |")
    if report.server:
        lines += ["", f"Server: {t(report.server)}"]
    if report.load:
        lines += ["", "## Load", ""]
        if report.network is not None:
            network = dataclasses.replace(
                report.network, target=redact_host(report.network.target, hide_hosts=shown.hide_hosts))
            described = network.describe()
            lines += [t(described[:1].upper() + described[1:] + "."), ""]
        lines += [f"**{t(note)}**" for note in report.load_notes] + ([""] if report.load_notes else [])
        lines += ["| target | requests | req/s | p50 ms | p95 ms | p99 ms | errors | load-bound |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report.load:
            lines.append(f"| {t(r.label)} | {r.requests} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | "
                         f"{r.p99_ms:.1f} | {r.error_rate:.2%} | {_load_bound(r)} |")
        comparison = report.load[-1].comparison
        if comparison is not None:
            share = f"{comparison.confidence:.0%}"
            lines += ["", f"Challenger / champion over {len(comparison.rounds)} rounds ({share} "
                      "bootstrap intervals; rejected only when a whole interval lies beyond the "
                      "allowed regression):", "",
                      f"- p95: {comparison.p95.describe()}", f"- p99: {comparison.p99.describe()}",
                      f"- throughput: {comparison.rps.describe()}", "",
                      "| round | champion p95 ms | challenger p95 ms | champion req/s | challenger req/s |",
                      "|---|---|---|---|---|"]
            lines += [f"| {i} | {r.champion_p95_ms:.1f} | {r.challenger_p95_ms:.1f} | "
                      f"{r.champion_rps:.1f} | {r.challenger_rps:.1f} |"
                      for i, r in enumerate(comparison.rounds, 1)]
    if report.parity is not None:
        p = report.parity
        lines += ["", "## Parity", "", f"- task: {t(p.task)}", f"- rows: {p.rows}",
                  f"- max abs diff: {p.max_abs_diff:.3g}"]
        lines += [f"- {t(name.replace('_', ' '))}: {value:.4g}" for name, value in p.metrics().items()
                  if name not in ("rows", "max_abs_diff")]
        lines += [f"- **{t(note)}**" for note in p.notes()]
        if report.eval_note:
            lines += [f"- evaluation data: {t(report.eval_note)}"]
    lines += ["", "## Endpoint", ""]
    if report.endpoint:
        lines += [*shown.code(report.endpoint), ""]
        if report.curl:
            lines += [*shown.code(report.curl, "bash"), ""]
    else:
        lines += [_served_now(report, t), ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _inert_markdown(plots: list[Path]) -> Any:
    """Python-Markdown with raw HTML off, and no link or image but the report's plots."""
    import markdown
    from markdown.treeprocessors import Treeprocessor

    allowed_sources = {plot.name for plot in plots}

    class _OnlyOwnImages(Treeprocessor):
        def run(self, root: Any) -> None:
            for element in root.iter():
                for attribute in list(element.attrib):
                    value = element.attrib[attribute]
                    if attribute.lower().startswith("on") or attribute.lower() == "href" or (
                            attribute.lower() == "src" and value not in allowed_sources):
                        del element.attrib[attribute]

    renderer = markdown.Markdown(extensions=["tables", "fenced_code"])
    renderer.preprocessors.deregister("html_block")
    for pattern in ("html", "autolink", "automail"):
        renderer.inlinePatterns.deregister(pattern)
    renderer.treeprocessors.register(_OnlyOwnImages(renderer), "only_own_images", 1)
    return renderer


def _html(markdown_text: str, plots: list[Path], title: str) -> str:
    """The Markdown rendered to a standalone page, plots embedded as data URIs."""
    body = _inert_markdown(plots).convert(markdown_text)
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode()
        body = body.replace(f'src="{plot.name}"', f'src="data:image/png;base64,{data}"')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
             "pre{background:#f6f6f6;padding:1em;white-space:pre-wrap;word-break:break-all}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")


def write_report(report: GateReport, out: Path, *, hide_hosts: bool | None = None,
                 named: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``gate_report.md``, ``gate_report.html`` and the plots; return every file.

    ``hide_hosts`` (default ``config.redact_hosts()``) names the servers by the settings that hold
    their addresses (``named``, default ``config.server_address_settings()``) instead of showing them."""
    from servegate.config import redact_hosts, server_address_settings

    shown = _Shown(redact_hosts() if hide_hosts is None else hide_hosts,
                   server_address_settings() if named is None else named)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(report, out)
    markdown = _markdown(report, plots, shown)
    (out / "gate_report.md").write_text(markdown, encoding="utf-8")
    (out / "gate_report.html").write_text(
        _html(markdown, plots, shown.url_safe(f"{report.name} v{report.version}")), encoding="utf-8")
    return [out / "gate_report.md", out / "gate_report.html", *plots]
