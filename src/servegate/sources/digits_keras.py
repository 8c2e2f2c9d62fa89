"""``builtin:digits-keras``: a small Keras 3 network trained on sklearn's digits in seconds.

TensorFlow and Keras are imported lazily (servegate imports without them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from servegate.errors import SourceError
from servegate.sources.digits import DIGIT_LABELS, load_digits_split


@dataclass
class KerasModel:
    """A Keras model that outputs class probabilities, with what export and the gates need."""

    model: Any  # keras.Model (imported lazily)
    labels: list[str]
    outputs_are_probabilities: ClassVar[bool] = True
    input_shape: tuple[int, ...] = (64,)
    eval_x: np.ndarray | None = None
    eval_y: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    source_uri: str = ""

    def example_batch(self, rows: int = 2) -> np.ndarray:
        """A few real held-out rows (random ones when none are known)."""
        if self.eval_x is not None and len(self.eval_x):
            return np.ascontiguousarray(self.eval_x[:rows], dtype=np.float32)
        return np.random.default_rng(0).random((rows, *self.input_shape), dtype=np.float32)

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The in-process probabilities of the Keras model (the parity reference)."""
        return np.asarray(self.model(np.ascontiguousarray(x, dtype=np.float32), training=False))


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
