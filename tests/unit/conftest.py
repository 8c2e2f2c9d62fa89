"""Unit tests share worker processes (pytest-xdist): nothing MLflow keeps process-wide may
outlive the test that set it."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_active_mlflow_experiment_carried_over(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``mlflow.set_experiment`` sets a process-wide active experiment (and
    ``MLFLOW_EXPERIMENT_ID``): a later test in the same worker would start its runs in an
    experiment id its own store does not have. MLflow is not imported here for tests that never
    use it."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    yield
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        fluent._active_experiment_id = None  # type: ignore[attr-defined]
