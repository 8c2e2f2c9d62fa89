"""TorchServe handler for numeric tensors: tasks ``classification``, ``regression`` and ``tensor``
(``tensor-classification``, schema 1, is ``classification``).

The model's inputs (one or several, any shape and dtype) come from ``servegate.json``; requests
carry them in any of the forms ``sg_tensors.decode`` reads. Answers per instance:

- classification: label, probabilities and top-k of the first output (v2: ``probabilities``,
  ``label``);
- regression: a number when an output has one value per instance, else the nested list;
  several outputs: ``{"<output name>": value}``;
- tensor: ``row.tolist()``; several outputs: ``{"<output name>": row}``;
- v2 (regression, tensor): one tensor per output, named by ``outputs``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sg_codecs
import sg_tensors
from sg_base import BatchingHandler, Features
from sg_classification import Classifier
from sg_errors import ModelLoadError

TASKS = {"classification": "classification", "tensor-classification": "classification",
         "regression": "regression", "tensor": "tensor"}


class TensorHandler(BatchingHandler):
    """Numeric tensors of the shapes and dtypes the archive records -> the task's answers."""

    def configure(self, model_dir: str) -> None:
        task = str(self.spec.get("task", "classification"))
        if task not in TASKS:
            raise ModelLoadError(f"the tensor handler does not serve task {task!r}; "
                                 f"it serves {sorted(TASKS)}")
        self.task = TASKS[task]
        self.inputs = sg_tensors.input_specs(self.spec, self.limits)
        self.classifier = (Classifier.from_spec(self.spec, model_dir)
                           if self.task == "classification" else None)

    def features(self, envelope: sg_codecs.Envelope) -> Features:
        arrays, rows, single = sg_tensors.decode(envelope, self.inputs)
        return Features(arrays, rows, single)

    def outputs_many(self, outputs: list[tuple[np.ndarray, ...]],
                     v2: list[bool]) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        if self.classifier is None:
            return super().outputs_many(outputs, v2)
        return self.classifier.outputs_many([o[0] for o in outputs], v2)

    def outputs(self, outputs: tuple[np.ndarray, ...], *,
                v2: bool = True) -> tuple[list[Any], list[dict[str, Any]]]:
        if self.classifier is not None:
            return self.classifier.outputs(outputs[0], v2=v2)
        names = sg_tensors.output_names(self.spec, len(outputs))
        tensors = ([sg_codecs.v2_tensor(name, output)
                    for name, output in zip(names, outputs, strict=True)] if v2 else [])
        columns = [_values(output, scalar=self.task == "regression") for output in outputs]
        if len(outputs) == 1:
            return columns[0], tensors
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)], tensors


def _values(output: np.ndarray, *, scalar: bool) -> list[Any]:
    """One JSON value per row: a number when ``scalar`` and a row holds one value."""
    if scalar and output.ndim >= 1 and int(np.prod(output.shape[1:])) == 1:
        return output.reshape(-1).tolist()
    return output.tolist()
