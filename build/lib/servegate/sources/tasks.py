"""Which task a tensor model serves, inferred from its outputs and labels where unambiguous."""

from __future__ import annotations

import numpy as np

from servegate.choices import TENSOR_TASKS
from servegate.errors import ConfigError
from servegate.sources.base import canonical_task


def infer_task(outputs: tuple[np.ndarray, ...], labels: np.ndarray | None, *,
               given: str | None, class_names: list[str] | None = None) -> str:
    """``given`` when set (checked); otherwise from the outputs (per instance) and labels:

    - several outputs -> ``tensor``;
    - one value per instance -> ``regression``;
    - a vector per instance with class names, or integral labels within its width ->
      ``classification``; with fractional labels -> ``regression``;
    - anything else is ambiguous: a ``ConfigError`` lists the choices.
    """
    choices = ", ".join(TENSOR_TASKS)
    if given not in (None, "", "auto"):
        task = canonical_task(str(given))
        if task not in TENSOR_TASKS:
            raise ConfigError(f"task {given!r} does not apply to a tensor model; choose one of {choices}")
        if task in ("classification", "image-classification") and (
                len(outputs) != 1 or outputs[0].ndim != 2 or outputs[0].shape[1] < 2):
            shape = [list(o.shape[1:]) for o in outputs]
            raise ConfigError(f"task {task} needs one output of class scores per instance; "
                              f"this model outputs {shape}")
        return task
    if len(outputs) > 1:
        return "tensor"
    out = outputs[0]
    per_instance = int(np.prod(out.shape[1:])) if out.ndim > 1 else 1
    if per_instance == 1:
        return "regression"
    if out.ndim == 2:
        if class_names and len(class_names) == out.shape[1]:
            return "classification"
        if labels is not None and labels.dtype.kind in "iuf":
            integral = np.array_equal(labels, np.round(labels))
            if integral and labels.ndim == 1 and labels.min() >= 0 and labels.max() < out.shape[1]:
                return "classification"
            if not integral:
                return "regression"
        if labels is not None and labels.dtype.kind in "USO":
            return "classification"
    raise ConfigError(
        f"cannot tell the task of a model whose output per instance has shape {list(out.shape[1:])}"
        + ("" if labels is not None else " without labelled eval_data")
        + f": pass task= one of {choices}")
