"""Where models come from: built-in trainers and importers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from servegate.choices import TEXT_TASKS
from servegate.errors import SourceError
from servegate.sources.base import TorchModel

if TYPE_CHECKING:  # pydantic: the GPU check imports sources on a bare host (torch, numpy)
    from servegate.config import SourceSettings

BUILTINS = ("builtin:digits",)


def load_torch_model(uri: str, settings: SourceSettings | None = None, **fields: Any) -> TorchModel:
    """Resolve a model URI into a ``TorchModel``: ``builtin:digits`` (trained here),
    ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN/PATH``, a file path (``.pt2``,
    ``torch.save``, or a state_dict with ``model_class``), or ``hf:<dir>`` / ``hf:minilm`` (a
    local Hugging Face text model). ``settings`` (a ``SourceSettings``, e.g. a run's
    ``PipelineConfig``, or its fields as keywords: ``task``, ``eval_data``, ``trust_pickle``...)
    say how."""
    if settings is None:
        from servegate.config import SourceSettings

        settings = SourceSettings(**fields)
    elif fields:
        raise TypeError("pass either settings or its fields, not both")
    task = None if settings.task in (None, "", "auto") else settings.task
    if uri.startswith("hf:"):
        from servegate.sources.hf import import_hf

        return import_hf(uri, task=task, max_length=settings.max_length, eval_data=settings.eval_data,
                         label_column=settings.label_column)
    if uri.startswith(("models:/", "runs:/")):
        from servegate.sources.imports import import_mlflow_model

        return import_mlflow_model(uri, settings)
    if task in TEXT_TASKS:
        raise SourceError(f"task {task!r} applies to text models (hf: or a registered text model), not {uri}")
    if uri == "builtin:digits":
        from servegate.sources.digits import builtin_digits

        model = builtin_digits()
        return with_eval_data(model, settings) if settings.eval_data else model
    if uri.startswith("builtin:"):
        raise SourceError(f"unknown built-in model {uri!r}; known: {', '.join(BUILTINS)}")
    from servegate.sources.imports import import_torch_file

    return import_torch_file(Path(uri).expanduser(), settings)


def with_eval_data(model: TorchModel, settings: SourceSettings) -> TorchModel:
    """A built-in model gated on the user's held-out set instead of its own (``eval_data``,
    labels as class indices or the model's class names)."""
    import numpy as np

    from servegate.sources.eval_data import conform, labels_as_indices, read_table
    from servegate.sources.schema import ModelSchema

    assert settings.eval_data is not None
    data = conform(read_table(settings.eval_data, label_column=settings.label_column),
                   ModelSchema(model.inputs))
    model.eval_x = data.x
    model.eval_y = (labels_as_indices(np.asarray(data.y), model.labels, data.source)
                    if data.y is not None else None)
    model.metrics.pop("accuracy", None)
    if model.eval_y is not None:
        model.metrics["accuracy"] = float((model.reference(data.x).argmax(-1) == model.eval_y).mean())
    model.eval_note = (f"evaluation data: {data.source} ({len(data)} rows, "
                       + ("labelled)" if data.y is not None else "no labels: accuracy is not gated)"))
    model.params["dataset"] = data.source
    return model


__all__ = ["TorchModel", "load_torch_model"]
