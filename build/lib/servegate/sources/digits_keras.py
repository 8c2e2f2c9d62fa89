"""``builtin:digits-keras``: a small Keras 3 network trained on sklearn's digits in seconds.

TensorFlow and Keras are imported lazily (servegate imports without them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servegate.errors import SourceError
from servegate.sources.digits import DIGIT_LABELS, load_digits_split

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


def build_digits_keras(hidden: int = 64) -> Any:
    """The network: 64 floats in [0, 1] -> ``hidden`` ReLU -> 10 softmax probabilities."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(64,), name="inputs", dtype="float32"),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits_keras",
    )


def builtin_digits_keras(*, epochs: int = 25, hidden: int = 64, seed: int = 0) -> KerasModel:
    """Train the built-in Keras model (deterministic for a seed) on the shared digits split."""
    try:
        import keras
    except ImportError as exc:
        raise SourceError("builtin:digits-keras needs TensorFlow (servegate[tf])") from exc

    data = load_digits_split(seed=seed)
    keras.utils.set_random_seed(seed)
    model = build_digits_keras(hidden)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=64, shuffle=True, verbose=0)
    result = KerasModel(
        model=model,
        labels=list(DIGIT_LABELS),
        image_shape=(8, 8, 1),
        eval_x=data.x_test,
        eval_y=data.y_test,
        params={"epochs": epochs, "seed": seed, "hidden": hidden, "dataset": "sklearn.digits",
                "framework": f"keras {keras.__version__}"},
        source_uri="builtin:digits-keras",
    )
    result.metrics["accuracy"] = float(
        (result.reference(data.x_test).argmax(axis=-1) == data.y_test).mean()
    )
    return result
