"""The gate report: Markdown + standalone HTML with plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from servegate.gates.checks import Check
from servegate.gates.load import LoadResult
from servegate.gates.parity import ParityResult
from servegate.gates.report import GateReport, write_report


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
    files = write_report(report, tmp_path)
    assert {f.name for f in files} == {"gate_report.md", "gate_report.html",
                                       "latency_throughput.png", "parity.png"}
    md = (tmp_path / "gate_report.md").read_text()
    assert "Decision: rejected" in md and "**FAIL**" in md and "| challenger v2 |" in md
    page = (tmp_path / "gate_report.html").read_text()
    assert "<table>" in page and page.count("data:image/png;base64,") == 2
    assert all(f.stat().st_size > 1000 for f in files if f.suffix == ".png")
