"""``KerasModel``: a Keras model with one input and one output, and what SavedModel export and
the gates need of it (any source: the built-in example, an imported file, an MLflow model).

TensorFlow and Keras are imported lazily (servegate imports without them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: What a Keras model's single output holds.
OUTPUT_KINDS = ("probabilities", "logits", "sigmoid", "values")
KERAS_TASKS = ("classification", "regression")


@dataclass
class KerasModel:
    """A Keras model with one input and one output, and what export and the gates need.

    ``task``: ``classification`` (``output_kind`` ``probabilities`` (softmax), ``logits``, or
    ``sigmoid``: one column, the probability of class 1 of two) or ``regression``
    (``output_kind`` ``values``: one or more per row). ``input_shape``/``input_dtype``: one row of
    the input (``-1``: any size). ``image_shape`` ``(height, width, channels)`` when the SavedModel
    gets an image signature (encoded images decoded, resized and scaled to [0, 1], then reshaped
    to ``input_shape``): 2-D/3-D inputs, and the digits model's flattened 8x8 grayscale.
    """

    model: Any  # keras.Model (imported lazily)
    labels: list[str]
    task: str = "classification"
    output_kind: str = "probabilities"
    input_shape: tuple[int, ...] = (64,)
    input_dtype: str = "float32"
    image_shape: tuple[int, int, int] | None = None
    eval_x: np.ndarray | None = None
    eval_y: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    source_uri: str = ""

    @property
    def outputs_are_probabilities(self) -> bool:
        """Whether ``reference`` gives class probabilities (not logits) for a classifier."""
        return self.output_kind != "logits"

    def example_batch(self, rows: int = 2) -> np.ndarray:
        """A few real held-out rows (random ones when none are known)."""
        if self.eval_x is not None and len(self.eval_x):
            return np.ascontiguousarray(np.resize(self.eval_x, (rows, *self.eval_x.shape[1:])),
                                        dtype=self.input_dtype)
        shape = tuple(1 if d == -1 else d for d in self.input_shape)
        return np.random.default_rng(0).random((rows, *shape)).astype(self.input_dtype)

    def raw_outputs(self, x: np.ndarray) -> np.ndarray:
        """The Keras model's own output on ``x``, float32 ``[rows, values]`` (not named
        ``outputs``: the gates read ``outputs`` as a model's output specs)."""
        out = self.model(np.ascontiguousarray(x, dtype=self.input_dtype), training=False)
        out = np.asarray(out, dtype=np.float32)
        return out.reshape(len(out), -1)

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The parity reference: class probabilities (logits when ``output_kind`` is
        ``logits``; a sigmoid's two-class probabilities) or regression values ``[rows, k]``."""
        out = self.raw_outputs(x)
        if self.output_kind == "sigmoid":
            return np.concatenate([1.0 - out, out], axis=1)
        return out

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of a classifier (softmax of logits), as the SavedModel serves them."""
        out = self.reference(x)
        if self.output_kind != "logits":
            return out
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def served(self, x: np.ndarray) -> np.ndarray:
        """What the SavedModel's ``serving_default`` answers for ``x``: a classifier's class
        probabilities, a regressor's values (the parity reference of every TF compiler)."""
        return self.reference(x) if self.task == "regression" else self.probabilities(x)
