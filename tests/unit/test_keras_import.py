"""TensorFlow sources: a .keras file, a plain SavedModel and an MLflow Keras model import with
the same outputs as the model that was saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servegate.errors import SourceError
from servegate.sources.keras_import import load_keras_model


@pytest.fixture(scope="module")
def keras_digits():
    from servegate.sources.digits_keras import builtin_digits_keras

    return builtin_digits_keras(epochs=3)


def test_keras_file_and_savedmodel_import_with_parity(keras_digits, tmp_path: Path) -> None:
    import tensorflow as tf

    x = keras_digits.eval_x[:16]
    expected = keras_digits.reference(x)
    keras_digits.model.save(tmp_path / "m.keras")
    from_file = load_keras_model(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(from_file.reference(x), expected, atol=1e-6)
    assert from_file.eval_y is not None and from_file.labels[3] == "3"

    module = tf.Module()
    module.model = keras_digits.model  # tracks the variables
    module.f = tf.function(lambda t: {"probabilities": keras_digits.model(t)},
                           input_signature=[tf.TensorSpec([None, 64], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.f})
    from_savedmodel = load_keras_model(str(tmp_path / "sm"))
    np.testing.assert_allclose(from_savedmodel.reference(x), expected, atol=1e-6)


def test_mlflow_keras_model_import(keras_digits, tmp_path: Path, monkeypatch) -> None:
    import mlflow
    import mlflow.keras

    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # another store's id
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        mlflow.set_experiment("keras-import")
        with mlflow.start_run():
            info = mlflow.keras.log_model(keras_digits.model, name="model")
        imported = load_keras_model(info.model_uri)
        x = keras_digits.eval_x[:8]
        np.testing.assert_allclose(imported.reference(x), keras_digits.reference(x), atol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)


def test_unknown_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        load_keras_model(str(tmp_path / "missing.keras"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="TensorFlow sources"):
        load_keras_model(str(tmp_path / "weights.bin"))
