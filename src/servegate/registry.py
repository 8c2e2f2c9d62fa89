"""The MLflow model registry side of promotion: versions, aliases and gate tags."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from servegate.errors import PipelineError

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
ARCHIVE_TAG = "servegate.archive"


@dataclass
class Registry:
    """Aliases and tags of one registered model."""

    name: str
    client: MlflowClient

    @classmethod
    def for_model(cls, name: str) -> Registry:
        return cls(name, MlflowClient())

    def version_for_alias(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def delete_alias(self, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException:
            pass

    def tag(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.name, version).tags)

    def promote(self, version: str) -> str | None:
        """``champion`` -> version; the old champion becomes ``previous-champion``."""
        previous = self.version_for_alias(CHAMPION)
        if previous is not None and previous != version:
            self.set_alias(PREVIOUS, previous)
        self.set_alias(CHAMPION, version)
        self.delete_alias(CHALLENGER)
        return previous

    def rollback(self) -> tuple[str, str]:
        """Swap ``champion`` and ``previous-champion``; return (restored, demoted)."""
        previous = self.version_for_alias(PREVIOUS)
        current = self.version_for_alias(CHAMPION)
        if previous is None or current is None:
            raise PipelineError(f"{self.name} has no previous champion to roll back to")
        self.set_alias(CHAMPION, previous)
        self.set_alias(PREVIOUS, current)
        return previous, current
