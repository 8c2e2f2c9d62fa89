"""Where models come from: built-in trainers and importers."""

from __future__ import annotations

from pathlib import Path

from servegate.errors import SourceError
from servegate.sources.base import TorchModel

BUILTINS = ("builtin:digits",)


def load_torch_model(uri: str, *, task: str | None = None,
                     max_length: int | None = None) -> TorchModel:
    """Resolve a model URI into a ``TorchModel``: ``builtin:digits`` (trained here),
    ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN/PATH``, a file path, or
    ``hf:<dir>`` / ``hf:minilm`` (a local Hugging Face text model; ``task`` ``embedding``, the
    default, or ``text-classification``; ``max_length`` truncation in tokens). A text model
    registered by servegate imports from its MLflow URI with its own task (``task``, if given,
    must match it)."""
    if uri.startswith("hf:"):
        from servegate.sources.hf import import_hf

        return import_hf(uri, task=task or "embedding", max_length=max_length)
    if uri.startswith(("models:/", "runs:/")):
        from servegate.sources.imports import import_mlflow_model

        return import_mlflow_model(uri, task=task, max_length=max_length)
    from servegate.sources.imports import TENSOR_TASKS

    if task not in TENSOR_TASKS:
        raise SourceError(f"task {task!r} applies to hf: models only, not {uri}")
    if uri == "builtin:digits":
        from servegate.sources.digits import builtin_digits

        return builtin_digits()
    if uri.startswith("builtin:"):
        raise SourceError(f"unknown built-in model {uri!r}; known: {', '.join(BUILTINS)}")
    from servegate.sources.imports import import_torch_file

    return import_torch_file(Path(uri).expanduser())


__all__ = ["TorchModel", "load_torch_model"]
