"""The MLflow model registry side of promotion: versions, aliases and gate tags.

Only "not found" means absent: a missing alias (MLflow 3.17 raises ``INVALID_PARAMETER_VALUE``
"Registered model alias ... not found." from both the SQL and the file store, and a tracking
server passes the same code on) or a missing model (``RESOURCE_DOES_NOT_EXIST``). Every other
MLflow error (an outage, a permission error) becomes ``RegistryError`` with its cause, so it can
never read as "no champion yet".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from servegate.errors import PipelineError, RegistryError
from servegate.naming import validate_name, validate_version

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
ARCHIVE_TAG = "servegate.archive"
ARCHIVE_SHA256_TAG = "servegate.archive_sha256"


def is_not_found(exc: MlflowException) -> bool:
    """True when MLflow says the model, version or alias does not exist (and nothing else)."""
    code = getattr(exc, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc.message).lower()


@contextmanager
def translated(action: str) -> Iterator[None]:
    """MLflow errors as ``RegistryError`` (the cause kept)."""
    try:
        yield
    except MlflowException as exc:
        raise RegistryError(f"MLflow registry: {action} failed: {exc.message}") from exc


@dataclass
class Registry:
    """Aliases and tags of one registered model."""

    name: str
    client: MlflowClient

    @classmethod
    def for_model(cls, name: str) -> Registry:
        return cls(validate_name(name), MlflowClient())

    def version_for_alias(self, alias: str) -> str | None:
        """The version ``alias`` points at; None only when MLflow says it does not exist."""
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise RegistryError(f"MLflow registry: looking up {self.name}@{alias} failed "
                                f"({exc.error_code}): {exc.message}") from exc

    def set_alias(self, alias: str, version: str) -> None:
        with translated(f"setting {self.name}@{alias} -> v{version}"):
            self.client.set_registered_model_alias(self.name, alias, validate_version(version))

    def delete_alias(self, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise RegistryError(f"MLflow registry: deleting {self.name}@{alias} failed: "
                                    f"{exc.message}") from exc

    def tag(self, version: str, tags: dict[str, str]) -> None:
        with translated(f"tagging {self.name} v{version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.name, version, key, value)

    def tags(self, version: str) -> dict[str, str]:
        with translated(f"reading the tags of {self.name} v{version}"):
            return dict(self.client.get_model_version(self.name, version).tags)

    def model_tags(self) -> dict[str, str]:
        """Tags of the registered model itself (empty if it does not exist yet)."""
        try:
            return dict(self.client.get_registered_model(self.name).tags)
        except MlflowException as exc:
            if is_not_found(exc):
                return {}
            raise RegistryError(f"MLflow registry: reading {self.name} failed: "
                                f"{exc.message}") from exc

    def set_model_tag(self, key: str, value: str) -> None:
        with translated(f"tagging {self.name}"):
            self.client.set_registered_model_tag(self.name, key, value)

    def promote(self, version: str) -> str | None:
        """``champion`` -> version; the old champion becomes ``previous-champion``.

        Registry only: ``servegate.promotion`` drives the registry and the server together.
        """
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
