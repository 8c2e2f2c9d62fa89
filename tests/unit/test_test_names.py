"""Test modules have unique base names: pytest imports them by base name (rootdir import mode),
so a unit and an integration module with the same name break collection of the whole suite."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_base_name() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert names, "no test modules found"
    assert [n for n, count in names.items() if count > 1] == []
