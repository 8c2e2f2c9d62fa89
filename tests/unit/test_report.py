"""The gate report: Markdown + standalone HTML with plots."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from servegate.errors import ConfigError
from servegate.gates.checks import Check
from servegate.gates.load import LoadResult
from servegate.gates.network import NetworkProbe
from servegate.gates.parity import ParityResult
from servegate.gates.report import GateReport, write_report

ROOT = Path(__file__).resolve().parents[2]


def test_report_has_checks_tables_and_embedded_plots(tmp_path: Path) -> None:
    load = [LoadResult(label=f"{who} v{v}", requests=100, failures=0, seconds=5, rps=20.0 + v,
                       p50_ms=5, p95_ms=9, p99_ms=12, load_cpu_seconds=1,
                       timeline=[{"t": 1.0, "rps": 20.0}, {"t": 2.0, "rps": 22.0}])
            for who, v in (("champion", 1), ("challenger", 2))]
    parity = ParityResult(rows=3, max_abs_diff=1e-7, top1_agreement=1.0, accuracy=0.9,
                          reference_accuracy=0.9, champion_accuracy=0.95, abs_diffs=np.zeros(3))
    checks = [Check("parity", "accuracy_vs_champion", 0.9, ">=", 0.94),
              Check("load", "p95_ms", 9, "<=", 50)]
    report = GateReport("digits", "2", "1", "rejected", checks, parity, load,
                        "http://127.0.0.1:1/predictions/digits", "curl ...")
    files = write_report(report, tmp_path, hide_hosts=False, named={})
    assert {f.name for f in files} == {"gate_report.md", "gate_report.html",
                                       "latency_throughput.png", "parity.png"}
    md = (tmp_path / "gate_report.md").read_text()
    assert "Decision: rejected" in md and "**FAIL**" in md and "| challenger v2 |" in md
    page = (tmp_path / "gate_report.html").read_text()
    assert "<table>" in page and page.count("data:image/png;base64,") == 2
    assert all(f.stat().st_size > 1000 for f in files if f.suffix == ".png")


# ---- the report is inert (issue 19): every value from a model, a run or a payload is text ------
HOSTILE = '<img src=x onerror=alert(1)>'
HOSTILE_LINK = "[click](javascript:alert(document.cookie))"


class _Tags(HTMLParser):
    """Every tag and attribute of a page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


#: What the report itself is made of; anything else in the page came from a value.
REPORT_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "strong", "em",
               "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "pre", "code", "img"}


def _hostile_report(endpoint: str = "http://127.0.0.1:1/predictions/x") -> GateReport:
    load = [LoadResult(label=f"challenger {HOSTILE}", requests=10, failures=0, seconds=1, rps=10.0,
                       p50_ms=1, p95_ms=2, p99_ms=3, load_cpu_seconds=1,
                       timeline=[{"t": 1.0, "rps": 10.0}])]
    parity = ParityResult(rows=3, max_abs_diff=0.0, top1_agreement=1.0, accuracy=0.9,
                          reference_accuracy=0.9, champion_accuracy=None, abs_diffs=np.zeros(3),
                          task="classification<script>alert(2)</script>")
    checks = [Check("parity", f"accuracy | {HOSTILE} |", 0.9, ">=", 0.5)]
    return GateReport(
        f"digits{HOSTILE}", "2", None, "promoted", checks, parity, load, endpoint,
        f"curl -d '{{\"instances\": [\"</code></pre><script>alert(3)</script>\\n```\\n{HOSTILE}\"]}}' "
        f"{endpoint}",
        eval_note=f"dataset 'x{HOSTILE}' {HOSTILE_LINK} <a href=\"javascript:alert(4)\">y</a>\n"
                  "```\n<script>alert(5)</script>\n# heading | cell |",
        server=f"attached to http://admin:pw@ts.internal:8081/?token=t0ps3cret {HOSTILE}")


def test_the_report_is_inert_whatever_the_model_run_or_payload_carries(tmp_path: Path) -> None:
    """A hostile model name, check name, label, task, dataset name, link, server and curl: the
    HTML holds only the report's own tags, no event handler, no link, no image but its plots;
    the hostile text is still there to read, as text."""
    write_report(_hostile_report(), tmp_path, hide_hosts=False, named={})
    page = (tmp_path / "gate_report.html").read_text()
    parsed = _Tags()
    parsed.feed(page)
    assert {tag for tag, _ in parsed.tags} <= REPORT_TAGS, {tag for tag, _ in parsed.tags} - REPORT_TAGS
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert "href" not in attrs, (tag, attrs)
        assert not any("javascript:" in (value or "").lower() for value in attrs.values()), (tag, attrs)
        if tag == "img":
            assert (attrs.get("src") or "").startswith("data:image/png;base64,"), attrs
    cells = [tag for tag, _ in parsed.tags if tag == "td"]
    assert len(cells) == 5 + 8  # one check row, one load row: no cell smuggled in by a `|`
    text = "".join(parsed.text)
    assert HOSTILE in text and "<script>alert(3)</script>" in text and "javascript:alert(4)" in text
    # the Markdown (the workflow's job summary) carries no raw tag outside its code blocks
    markdown = (tmp_path / "gate_report.md").read_text()
    fences = [i for i, line in enumerate(markdown.splitlines()) if line.startswith("```")]
    assert len(fences) == 4  # the endpoint's and the curl's blocks, one line each, nothing else
    assert [b - a for a, b in zip(fences[::2], fences[1::2], strict=True)] == [2, 2]
    outside_code = [line for i, line in enumerate(markdown.splitlines())
                    if not any(a <= i <= b for a, b in zip(fences[::2], fences[1::2], strict=True))]
    assert not any("<" in line or "](javascript" in line for line in outside_code), outside_code


def test_urls_in_the_report_lose_userinfo_and_query_and_hosts_hide_where_they_are_secret(
        tmp_path: Path) -> None:
    report = _hostile_report("http://ts.internal:8080/predictions/digits")
    probe = NetworkProbe(origin="runner", target="admin:pw@ts.internal:8080", samples=3,
                         rtt_p50_ms=1, rtt_p95_ms=2, rtt_min_ms=1)
    report = dataclasses.replace(report, network=probe)
    write_report(report, tmp_path / "shown", hide_hosts=False, named={})
    shown = (tmp_path / "shown" / "gate_report.md").read_text()
    assert "ts.internal:8081" in shown and "ts.internal:8080" in shown
    assert "admin" not in shown and "t0ps3cret" not in shown and "pw@" not in shown
    named = {"SERVEGATE_TORCHSERVE_INFERENCE_URL": "http://ts.internal:8080",
             "SERVEGATE_TORCHSERVE_MANAGEMENT_URL": "http://admin:pw@ts.internal:8081"}
    write_report(report, tmp_path / "hidden", hide_hosts=True, named=named)
    for page in ("gate_report.md", "gate_report.html"):
        hidden = (tmp_path / "hidden" / page).read_text()
        assert "ts.internal" not in hidden and "admin" not in hidden and "t0ps3cret" not in hidden
    hidden = (tmp_path / "hidden" / "gate_report.md").read_text()
    assert "$SERVEGATE_TORCHSERVE_INFERENCE_URL/predictions/digits" in hidden  # the curl still reads
    assert "attached to $SERVEGATE\\_TORCHSERVE\\_MANAGEMENT\\_URL" in hidden


def test_the_workflow_hides_the_servers_in_its_report(monkeypatch: pytest.MonkeyPatch) -> None:
    from servegate.config import redact_hosts, server_address_settings

    monkeypatch.delenv("SERVEGATE_REDACT_HOSTS", raising=False)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert redact_hosts()
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    assert not redact_hosts()
    monkeypatch.setenv("SERVEGATE_REDACT_HOSTS", "true")
    assert redact_hosts()
    monkeypatch.setenv("SERVEGATE_REDACT_HOSTS", "maybe")
    with pytest.raises(ConfigError, match="SERVEGATE_REDACT_HOSTS"):
        redact_hosts()
    monkeypatch.setenv("SERVEGATE_TORCHSERVE_INFERENCE_URL", "http://ts:8080")
    assert server_address_settings()["SERVEGATE_TORCHSERVE_INFERENCE_URL"] == "http://ts:8080"
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "promote.yml").read_text())
    assert workflow["jobs"]["gate-and-promote"]["env"]["SERVEGATE_REDACT_HOSTS"] == "true"


@pytest.mark.parametrize(("decision", "why"), [
    ("passed, not promoted", "v2 passed the gates but was not promoted (promote=false)"),
    ("rejected", "v2 was rejected"),
])
def test_a_run_that_serves_nothing_says_so_instead_of_an_empty_endpoint(
        tmp_path: Path, decision: str, why: str) -> None:
    report = GateReport("digits", "2", None, decision, [], None, [], "", "")
    write_report(report, tmp_path, hide_hosts=False, named={})
    markdown = (tmp_path / "gate_report.md").read_text()
    endpoint = markdown.split("## Endpoint", 1)[1]
    assert "```" not in endpoint
    assert f"Nothing of digits is served by this run: {why}, and there was no champion" in endpoint


def test_an_image_model_report_shows_held_out_images_with_served_and_true_classes(
        tmp_path: Path) -> None:
    """The samples come from the model's own rows (as the gate sent them) and the served
    classes the parity gate recorded; a hostile label is drawn as text in a picture, never HTML."""
    import base64
    import io

    from PIL import Image

    from servegate.gates.report import image_samples

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (value, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    images = [png(v) for v in (10, 120, 250)]

    class ImageModel:
        sends_images = True
        labels = ["cat", "<script>alert(1)</script>", "$\\frac{a}{b}$"]
        eval_x = np.zeros((3, 3, 16, 16), np.float32)
        eval_y = np.array([0, 1, 2])

        def request_rows(self, x: np.ndarray) -> list[dict[str, str]]:
            return [{"b64": base64.b64encode(i).decode()} for i in images[:len(x)]]

    parity = ParityResult(rows=3, max_abs_diff=0.0, top1_agreement=1.0, accuracy=2 / 3,
                          reference_accuracy=2 / 3, champion_accuracy=None, abs_diffs=np.zeros(3),
                          predicted=np.array([0, 2, 2]))
    samples = image_samples(ImageModel(), parity, count=8)
    assert [(s.image, s.predicted, s.truth) for s in samples] == [
        (images[0], "cat", "cat"), (images[1], "$\\frac{a}{b}$", "<script>alert(1)</script>"),
        (images[2], "$\\frac{a}{b}$", "$\\frac{a}{b}$")]
    assert image_samples(ImageModel(), dataclasses.replace(parity, predicted=None)) == ()
    report = GateReport("photos", "1", None, "promoted", [], parity, [], "", "", samples=samples)
    files = write_report(report, tmp_path, hide_hosts=False, named={})
    assert "eval_samples.png" in {f.name for f in files}
    with Image.open(tmp_path / "eval_samples.png") as grid:
        assert grid.width > 200 and grid.height > 100
    page = (tmp_path / "gate_report.html").read_text()
    assert "<script>" not in page and page.count("data:image/png;base64,") == 2
