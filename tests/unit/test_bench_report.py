"""``make bench``'s arithmetic: targets from measured rows, on made-up figures (no load here)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from benchmarks.compilers import CompilerTable
from benchmarks.compilers import markdown as compiler_markdown
from benchmarks.load import LoadResult
from benchmarks.report import Row, markdown, targets
from benchmarks.server_cpu import ServerCpu, between
from servegate.compilers.select import Candidate
from servegate.compilers.shapes import Shape


def _load(rps: float, p95: float, p99: float | None = None, load_cpu_s: float = 1.0) -> LoadResult:
    requests = int(rps * 10)
    return LoadResult(requests=requests, failures=0, rps=rps, p50_ms=p95 / 2, p95_ms=p95,
                      p99_ms=p99 or p95 * 1.5, load_cpu_s=load_cpu_s, load_window_s=10.0)


def _row(model: str | None, rps: float, p95: float, *, family: str = "digits",
         rate: float | None = None, p99: float | None = None) -> Row:
    return Row(model or "ping", family, model, rate, _load(rps, p95, p99), ServerCpu(1.0, 2.0))


def _table(title: str, shapes: list[Shape], eager_ms: list[float], fast_ms: list[float],
           flops: dict[Shape, int] | None = None) -> CompilerTable:
    def candidate(name: str, times: list[float], status: str) -> Candidate:
        return Candidate(name, status=status, p50_ms=dict(zip(shapes, times, strict=True)),
                         rows_per_s={s: s.batch / (t / 1e3) for s, t in zip(shapes, times, strict=True)})

    return CompilerTable(title, [candidate("eager", eager_ms, "passed"),
                                 candidate("onnx", fast_ms, "chosen")], "onnx", 1,
                         flops=flops or {}, matmul_flops_per_s=100e9 if flops else math.nan)


@pytest.fixture
def measured() -> tuple[list[Row], CompilerTable, CompilerTable]:
    digits = _table("digits", [Shape(1), Shape(8)], [0.04, 0.05], [0.01, 0.02])
    text_shapes = [Shape(1, 32), Shape(8, 32), Shape(8, 128)]
    minilm = _table("minilm", text_shapes, [16.0, 80.0, 300.0], [6.0, 45.0, 220.0],
                    flops={Shape(1, 32): 680_000_000, Shape(8, 32): 5_440_000_000,
                           Shape(8, 128): 21_700_000_000})
    rows = [
        _row("digits_b8", 2000, 14), _row("digits_b8_auto", 3300, 10, p99=12),
        _row("digits_b1", 900, 22), _row("digits_minimal", 1000, 18, p99=30),
        _row("digits_b1", 630, 4, rate=630), _row("digits_b8", 630, 8, rate=630),
        _row("minilm_b8_auto", 160, 110, family="MiniLM"),
        _row("minilm_b1_auto", 130, 140, family="MiniLM"),
        _row("minilm_b1_auto", 91, 130, family="MiniLM", rate=91),
        _row("minilm_b8_auto", 91, 110, family="MiniLM", rate=91),
        _row(None, 5000, 3, family="Locust"),
    ]
    return rows, digits, minilm


def test_targets_are_the_measured_ratios_held_to_the_issue_targets(measured) -> None:
    rows, digits, minilm = measured
    found = {(t.model, t.name): t for t in targets(rows, digits, minilm, 32)}
    handler = found[("digits", "our handler and configuration (onnx, batch 8) / minimal")]
    assert handler.value == pytest.approx(3.3) and handler.met  # and p99 12 <= 30
    gain = found[("digits", "batching gain (batch 8 / batch 1)")]
    assert gain.value == pytest.approx(2000 / 900) and gain.met
    p95 = found[("digits", "batching p95 at 70% of batch 1's peak (batch 8 / batch 1)")]
    assert p95.value == pytest.approx(2.0) and p95.met is False
    efficiency = found[("MiniLM", "serving efficiency (onnx, batch 8)")]
    assert efficiency.value == pytest.approx(160 / (8 / 0.045)) and efficiency.met is True
    speedup = found[("MiniLM", "compiler speed-up (onnx / eager, b1_t32)")]
    assert speedup.value == pytest.approx(16 / 6) and speedup.met
    hardware = found[("MiniLM", "hardware efficiency, onnx, b8_t128")]
    assert hardware.value == pytest.approx(21.7e9 / 0.220 / 100e9) and hardware.met is True
    assert found[("MiniLM", "hardware efficiency, eager, b8_t128")].met is None  # reported only
    assert found[("Locust", "model rows that were load-bound")].met  # none > 0.8 core
    text = markdown({"date": "d", "machine": {"cores": 2, "cpu_model": "cpu", "python": "3.11"},
                     "versions": {"torch": "x"}, "load_average_1min": {"before": 0, "after": 0},
                     "settings": {"users": 16, "seconds": 10, "warmup_seconds": 3,
                                  "worker_threads": 1, "text_tokens": 32, "load_bound_cores": 0.8}},
                    list(found.values()), rows, [digits, minilm], compiler_markdown)
    assert "| digits | our handler and configuration (onnx, batch 8) / minimal | 3.30x |" in text
    assert "**missed**" in text and "hw eff. b8_t128" in text


def test_server_cpu_counts_a_process_that_started_in_between_whole() -> None:
    before = {1: ("frontend", 10.0), 2: ("worker", 5.0)}
    after = {1: ("frontend", 10.5), 2: ("worker", 6.0), 3: ("worker", 0.25)}
    assert between(before, after) == ServerCpu(frontend_s=0.5, workers_s=1.25)


def test_an_image_row_gets_the_same_ratios_and_a_subset_only_its_own(measured) -> None:
    rows, digits, _ = measured
    images = _table("images", [Shape(1), Shape(8)], [0.2, 0.5], [0.1, 0.3])
    rows = [r for r in rows if r.family != "MiniLM"] + [
        _row("photos_b8_auto", 1800, 12, family="images"),
        _row("photos_b1_auto", 600, 20, family="images"),
        _row("photos_b1_auto", 420, 5, family="images", rate=420),
        _row("photos_b8_auto", 420, 7, family="images", rate=420),
    ]
    found = {(t.model, t.name): t for t in targets(rows, digits, None, 32, images=images)}
    gain = found[("images", "batching gain (batch 8 / batch 1)")]
    assert gain.value == pytest.approx(3.0) and gain.met
    p95 = found[("images", "batching p95 at 70% of batch 1's peak (batch 8 / batch 1)")]
    assert p95.value == pytest.approx(7 / 5) and p95.met is False
    assert found[("images", "serving efficiency (onnx, batch 8)")].value == pytest.approx(
        1800 / (8 / 0.0003))
    assert not [key for key in found if key[0] == "MiniLM"]  # not measured: no targets
    worker = found[("digits", "worker CPU per request, ours (auto, batch 8) / minimal")]
    assert worker.value == pytest.approx(1000 / 3300)  # same CPU seconds over more requests


def test_image_bodies_alternate_raw_png_and_base64_json() -> None:
    import base64
    import json

    from benchmarks.samples import image_bodies

    bodies = image_bodies([b"\x89PNG-a", b"\x89PNG-b"])
    assert bodies[0] == ("image/png", b"\x89PNG-a")
    kind, body = bodies[1]
    assert kind == "application/json"
    assert base64.b64decode(json.loads(body)["instances"][0]["b64"]) == b"\x89PNG-b"


def test_the_headline_is_the_median_of_the_pairs_measured_side_by_side(measured) -> None:
    """Load drifts between rows on a shared box: each pair shares it, so the median pair ratio
    is the figure (here pairs of 3.3x, 2.0x and 2.5x: 2.5x, not the first pair's 3.3x)."""
    import dataclasses

    rows, digits, minilm = measured
    again = [dataclasses.replace(_row("digits_b8_auto", rps, 10, p99=p99), repeat=i)
             for i, rps, p99 in ((1, 1000, 40), (2, 2000, 20))]
    minimal = [dataclasses.replace(_row("digits_minimal", rps, 18, p99=30), repeat=i)
               for i, rps in ((1, 500), (2, 800))]
    found = {(t.model, t.name): t for t in targets(rows + again + minimal, digits, minilm, 32)}
    handler = found[("digits", "our handler and configuration (onnx, batch 8) / minimal")]
    assert handler.value == pytest.approx(2.5) and handler.met is False
    assert "median of 3 pairs (3.30x, 2.00x, 2.50x)" in handler.detail
    assert "p99 20 vs 30 ms" in handler.detail  # medians of the pairs' p99s


def test_make_bench_writes_its_summary_between_the_docs_markers(tmp_path) -> None:
    """The bench table in the docs is written by `make bench`, with its date and machine."""
    from pathlib import Path

    from benchmarks.report import DOCS_END, DOCS_START, docs_summary, publish

    page = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
    text = page.read_text(encoding="utf-8")
    assert text.count(DOCS_START) == 1 and text.count(DOCS_END) == 1
    kept = text.split(DOCS_START)[1].split(DOCS_END)[0]
    assert "- date: 20" in kept and "- machine:" in kept and "| model | figure |" in kept
    run = ("# servegate bench\n\n- date: 2030-01-01T00:00:00+00:00\n- machine: 2 cores, X\n\n"
           "## Targets\n\n| model | figure |\n|---|---|\n| digits | 9.9x |\n\n## Served\n\n| a |\n")
    copy = tmp_path / "benchmarks.md"
    copy.write_text(text, encoding="utf-8")
    assert publish(run, copy)
    written = copy.read_text(encoding="utf-8")
    assert docs_summary(run) in written and "2030-01-01" in written and "## Served" not in written
    assert written.split(DOCS_START)[0] == text.split(DOCS_START)[0]  # the rest untouched
    (tmp_path / "plain.md").write_text("no markers", encoding="utf-8")
    assert not publish(run, tmp_path / "plain.md")


def test_tuned_rows_are_held_to_more_throughput_at_no_worse_p95(measured) -> None:
    rows, digits, minilm = measured
    assert not any("tuned" in t.name for t in targets(rows, digits, minilm, 32))  # not run
    tuned = [_row("digits_tuned", 4000, 9), _row("digits_b8_auto", 630, 7, rate=630),
             _row("digits_tuned", 630, 6, rate=630)]
    found = {(t.model, t.name): t for t in targets(rows + tuned, digits, minilm, 32)}
    gain = found[("digits", "tuned / default throughput (saturated)")]
    assert gain.value == pytest.approx(4000 / 3300) and gain.met
    at_rate = found[("digits", "tuned / default p95 at 70% of batch 1's peak")]
    assert at_rate.value == pytest.approx(6 / 7) and at_rate.met
    # more throughput bought with a worse p95 is not the target
    slower = [_row("digits_tuned", 4000, 11), *tuned[1:]]
    found = {(t.model, t.name): t for t in targets(rows + slower, digits, minilm, 32)}
    assert found[("digits", "tuned / default throughput (saturated)")].met is False


def test_a_default_tune_kept_is_the_tuned_configuration(measured) -> None:
    from benchmarks.tuned import Tuning, tuning_of

    rows, digits, minilm = measured
    why = "keep the current configuration b8-d2ms-w1: the search's best, b16-d10ms-w1: ..."
    found = {(t.model, t.name): t for t in targets(rows, digits, minilm, 32,
                                                   tune_kept={"digits": why})}
    gain = found[("digits", "tuned / default throughput (saturated)")]
    assert gain.value == 1.0 and gain.met and why in gain.detail
    assert found[("digits", "tuned / default p95 at 70% of batch 1's peak")].value == 1.0
    assert ("MiniLM", "tuned / default throughput (saturated)") not in found
    # tune's result says so: a confirmation that did not keep the search's best
    lost = SimpleNamespace(winner=None, notes=(why,), measurements=30, grid_measurements=208,
                           confirmation=SimpleNamespace(kept=False))
    assert tuning_of("digits", lost, 290.0) == Tuning("digits", None, why, 30, 208, 290.0, True)
    none_met = SimpleNamespace(winner=None, notes=(), measurements=30, grid_measurements=208,
                               confirmation=None)
    assert tuning_of("digits", none_met, 290.0) == Tuning("digits", None, "no point met the SLO",
                                                          30, 208, 290.0, False)
