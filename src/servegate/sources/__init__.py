"""Where models come from: built-in trainers and importers."""

from __future__ import annotations

from pathlib import Path

from servegate.errors import SourceError
from servegate.sources.base import TorchModel

BUILTINS = ("builtin:digits",)


def load_torch_model(uri: str) -> TorchModel:
    """Resolve a model URI into a ``TorchModel``: ``builtin:digits`` (trained here),
    ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN/PATH``, or a file path."""
    if uri == "builtin:digits":
        from servegate.sources.digits import builtin_digits

        return builtin_digits()
    if uri.startswith(("models:/", "runs:/")):
        from servegate.sources.imports import import_mlflow_model

        return import_mlflow_model(uri)
    if uri.startswith("builtin:"):
        raise SourceError(f"unknown built-in model {uri!r}; known: {', '.join(BUILTINS)}")
    from servegate.sources.imports import import_torch_file

    return import_torch_file(Path(uri).expanduser())


__all__ = ["TorchModel", "load_torch_model"]
