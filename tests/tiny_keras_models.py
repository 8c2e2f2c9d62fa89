"""Users' own Keras models, written by the tests as ``.keras`` files, with evaluation data:
a 13-feature wine classifier (softmax or logits), a 13-feature regressor, a small image model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WINE_COLUMNS = [f"f{i}" for i in range(13)]


def wine(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's wine (178 rows, 13 features, 3 classes): train and held-out split."""
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    return x[:130], y[:130], x[130:], y[130:]


def save_wine_classifier(path: Path, *, logits: bool = False, epochs: int = 30) -> Path:
    import keras

    x, y, _, _ = wine()
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization(name="scale")
    norm.adapt(x)
    model = keras.Sequential([keras.Input(shape=(13,), name="features"), norm,
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation=None if logits else "softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return path


def save_wine_regressor(path: Path, *, outputs: int = 1, epochs: int = 30) -> Path:
    """Predicts the alcohol feature (and the class index, with ``outputs=2``) from all 13."""
    import keras

    x, y, _, _ = wine()
    target = np.stack([x[:, 0], y.astype(np.float32)], axis=1)[:, :outputs]
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential([keras.Input(shape=(13,)), norm, keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(outputs)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x, target, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return path


def save_image_model(path: Path) -> Path:
    """6x6 RGB images in [0, 1] -> 4 softmax classes (untrained)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(6, 6, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(4, activation="softmax")])
    model.save(path)
    return path


def wine_csv(path: Path, *, labels: list | None = None, columns: int = 13) -> Path:
    """The held-out wine rows as a CSV: one column per feature and a ``label`` column."""
    import pandas as pd

    _, _, x, y = wine()
    frame = pd.DataFrame(x[:, :columns], columns=WINE_COLUMNS[:columns])
    frame["label"] = [labels[i] for i in y] if labels else y
    frame.to_csv(path, index=False)
    return path


def wine_npz(path: Path, *, outputs: int = 1) -> Path:
    _, _, x, y = wine()
    target = np.stack([x[:, 0], y.astype(np.float32)], axis=1)[:, :outputs]
    np.savez(path, x=x, y=target[:, 0] if outputs == 1 else target)
    return path
