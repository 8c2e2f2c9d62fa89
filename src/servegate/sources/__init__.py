"""Where models come from: built-in trainers and importers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servegate.choices import TEXT_TASKS
from servegate.errors import SourceError
from servegate.sources.base import TorchModel
from servegate.sources.options import SourceOptions

BUILTINS = ("builtin:digits",)


def load_torch_model(uri: str, options: SourceOptions | None = None, **fields: Any) -> TorchModel:
    """Resolve a model URI into a ``TorchModel``: ``builtin:digits`` (trained here),
    ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN/PATH``, a file path (``.pt2``,
    ``torch.save``, or a state_dict with ``model_class``), or ``hf:<dir>`` / ``hf:minilm`` (a
    local Hugging Face text model). ``options`` (or its fields as keywords: ``task``,
    ``eval_data``, ``trust_pickle``...) say how; see ``SourceOptions``."""
    if options is None:
        options = SourceOptions(**fields)
    elif fields:
        raise TypeError("pass either options or its fields, not both")
    task = None if options.task in (None, "", "auto") else options.task
    if uri.startswith("hf:"):
        from servegate.sources.hf import import_hf

        return import_hf(uri, task=task, max_length=options.max_length, eval_data=options.eval_data,
                         label_column=options.label_column)
    if uri.startswith(("models:/", "runs:/")):
        from servegate.sources.imports import import_mlflow_model

        return import_mlflow_model(uri, options)
    if task in TEXT_TASKS:
        raise SourceError(f"task {task!r} applies to text models (hf: or a registered text model), not {uri}")
    if uri == "builtin:digits":
        from servegate.sources.digits import builtin_digits

        model = builtin_digits()
        return with_eval_data(model, options) if options.eval_data else model
    if uri.startswith("builtin:"):
        raise SourceError(f"unknown built-in model {uri!r}; known: {', '.join(BUILTINS)}")
    from servegate.sources.imports import import_torch_file

    return import_torch_file(Path(uri).expanduser(), options)


def with_eval_data(model: TorchModel, options: SourceOptions) -> TorchModel:
    """A built-in model gated on the user's held-out set instead of its own (``eval_data``,
    labels as class indices or the model's class names)."""
    import numpy as np

    from servegate.sources.eval_data import conform, labels_as_indices, read_table
    from servegate.sources.schema import ModelSchema

    assert options.eval_data is not None
    data = conform(read_table(options.eval_data, label_column=options.label_column),
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


__all__ = ["SourceOptions", "TorchModel", "load_torch_model"]
