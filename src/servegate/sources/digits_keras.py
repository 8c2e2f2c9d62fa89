"""``builtin:digits-keras``: a small Keras 3 network trained on sklearn's digits in seconds.

TensorFlow and Keras are imported lazily (servegate imports without them).
"""

from __future__ import annotations

from typing import Any

from servegate.errors import SourceError
from servegate.sources.digits import DIGIT_LABELS, load_digits_split
from servegate.sources.keras_model import KerasModel


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
