"""An MLflow dataset source for files in a run's artifacts (``mlflow-artifacts:/``, ``runs:/``).

MLflow resolves dataset sources by URI scheme and has none for its own artifact proxy: a held-out
set logged next to a model on an ``mlflow server`` could not be named as a dataset's source, nor
read back. This source downloads with MLflow's client, so the tracking server's credentials
(``MLFLOW_TRACKING_*``) apply. It is registered on first use (no import-time side effects).
"""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import urlsplit

from mlflow.data.dataset_source import DatasetSource

SCHEMES = ("mlflow-artifacts", "runs")


class MlflowArtifactDatasetSource(DatasetSource):
    """A dataset file in MLflow's artifact store."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "mlflow_artifact"

    def load(self, dst_path: str | None = None) -> str:
        """Download the file; return its local path."""
        import mlflow

        return str(mlflow.artifacts.download_artifacts(self.uri, dst_path=dst_path))

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and urlsplit(raw_source).scheme in SCHEMES

    @classmethod
    def _resolve(cls, raw_source: Any) -> MlflowArtifactDatasetSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> MlflowArtifactDatasetSource:
        return cls(str(source_dict["uri"]))


@cache
def register_artifact_source() -> None:
    """Make MLflow resolve (and read back) artifact URIs as dataset sources; idempotent."""
    from mlflow.data.dataset_source_registry import register_dataset_source

    register_dataset_source(MlflowArtifactDatasetSource)  # type: ignore[arg-type]  # MLflow registers classes (its own built-ins too); its annotation says an instance
