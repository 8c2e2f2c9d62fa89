"""Decisions that once survived being broken (issue 20, item 7): the champion's accuracy is the
champion's, `rmse_vs_champion` exists and fails a worse regressor, an accuracy equal to the
allowed floor passes (`>=`, not `>`), a failed first deployment leaves no version behind, and a
repair never finishes onto a version with no READY worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servegate.config import ParityThresholds
from servegate.gates.parity import ParityResult, parity_checks, run_parity
from servegate.targets import MeasuredTarget
from servegate.testing import MemoryBackend


class _Answers:
    """A server whose versions answer fixed class probabilities (or values), row by row."""

    def __init__(self, by_version: dict[str, np.ndarray]) -> None:
        self.by_version = by_version

    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        rows = payload["instances"]
        start = int(rows[0][0])
        answers = self.by_version[version or "1"][start:start + len(rows)].tolist()
        return {"predictions": [{"probabilities": row} for row in answers]}


class _Model:
    """Rows are their own index (so the server knows which answers to give)."""

    def __init__(self, reference: np.ndarray, y: np.ndarray, task: str) -> None:
        self.eval_x = np.arange(len(y), dtype=np.float32)[:, None]
        self.eval_y, self.task, self.labels = y, task, ["a", "b"]
        self._reference = reference
        self.outputs_are_probabilities = True

    def reference_outputs(self, x: np.ndarray) -> tuple[np.ndarray]:
        return (self._reference[x[:, 0].astype(int)],)

    def request_rows(self, x: np.ndarray) -> list[Any]:
        return x.tolist()


def _onehot(classes: list[int]) -> np.ndarray:
    return np.eye(2)[classes]


def test_the_champions_accuracy_is_computed_from_the_champions_answers() -> None:
    y = np.array([0, 1, 0, 1])
    challenger, champion = _onehot([0, 1, 0, 1]), _onehot([1, 1, 1, 1])  # 100% vs 50%
    model = _Model(challenger, y, "classification")
    result = run_parity(_Answers({"2": challenger, "1": champion}), "m", "2", model, "1",
                        decode=MeasuredTarget().prediction_values)
    assert (result.accuracy, result.champion_accuracy) == (1.0, 0.5)


def test_a_regressor_worse_than_the_champion_fails_rmse_vs_champion() -> None:
    result = ParityResult(rows=4, max_abs_diff=0.0, top1_agreement=float("nan"), accuracy=float("nan"),
                          reference_accuracy=float("nan"), champion_accuracy=None,
                          abs_diffs=np.zeros(4), task="regression", max_rel_diff=0.0, rmse=2.0,
                          mae=1.0, champion_rmse=1.0, champion_mae=1.0)
    checks = {c.name: c for c in parity_checks(result, ParityThresholds(max_metric_regression=0.05))}
    assert not checks["rmse_vs_champion"].passed and checks["mae_vs_champion"].passed


def test_an_accuracy_exactly_at_the_allowed_floor_passes() -> None:
    result = ParityResult(rows=4, max_abs_diff=0.0, top1_agreement=1.0, accuracy=0.75,
                          reference_accuracy=0.75, champion_accuracy=0.75, abs_diffs=np.zeros(4))
    checks = {c.name: c for c in parity_checks(result, ParityThresholds(max_accuracy_drop=0.0))}
    assert checks["accuracy_vs_champion"].passed
    worse = ParityResult(**{**result.__dict__, "accuracy": 0.74})
    assert not {c.name: c for c in parity_checks(worse, ParityThresholds(max_accuracy_drop=0.0))}[
        "accuracy_vs_champion"].passed


@pytest.fixture
def registry(tmp_path: Path):
    import mlflow

    from servegate.registry import Registry

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        client = mlflow.MlflowClient()
        client.create_registered_model("m")
        for _ in range(2):
            client.create_model_version("m", str(tmp_path), run_id=None)
        yield Registry.for_model("m")
    finally:
        mlflow.set_tracking_uri(None)


def test_a_failed_first_deployment_leaves_no_version_behind(registry, tmp_path: Path) -> None:
    """The sole version is the server's default only because it is alone, not the champion."""
    from servegate.promotion import withdraw

    backend = MemoryBackend()
    backend.deploy(tmp_path, "m", "1")
    withdraw(registry, backend, "m", "1", lambda _: None)
    assert backend.versions("m") == []


def test_repair_does_not_finish_onto_a_version_without_ready_workers(registry, tmp_path: Path) -> None:
    from servegate.promotion import PROMOTION_TAG, Move, repair
    from servegate.registry import CHAMPION

    backend = MemoryBackend()
    backend.deploy(tmp_path, "m", "1")
    backend.deploy(tmp_path, "m", "2", workers=0)  # registered, no READY worker
    registry.set_alias(CHAMPION, "2")
    registry.set_model_tag(PROMOTION_TAG, Move("promotion", "1", "2", None).in_progress_tag())
    assert repair(registry, backend, "m", lambda _: None) == "reverted"
    assert registry.version_for_alias(CHAMPION) == "1" and backend.default_version("m") == "1"
