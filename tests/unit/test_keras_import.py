"""TensorFlow sources: a .keras file, a plain SavedModel and an MLflow Keras model import with
the same outputs as the model that was saved, gated on the user's eval_data (never the digits
set), any feature count, classification (probabilities, logits) or regression."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from servegate.errors import ConfigError, SourceError  # noqa: E402
from servegate.sources.keras_import import load_keras_model  # noqa: E402


@pytest.fixture(scope="module")
def keras_digits():
    from servegate.sources.digits_keras import builtin_digits_keras

    return builtin_digits_keras(epochs=3)


@pytest.fixture(scope="module")
def digits_npz(keras_digits, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("digits") / "eval.npz"
    np.savez(path, x=keras_digits.eval_x, y=keras_digits.eval_y)
    return str(path)


def test_keras_file_and_savedmodel_import_with_parity(keras_digits, digits_npz: str,
                                                      tmp_path: Path) -> None:
    import tensorflow as tf

    x = keras_digits.eval_x[:16]
    expected = keras_digits.reference(x)
    keras_digits.model.save(tmp_path / "m.keras")
    with pytest.raises(SourceError, match="pass eval_data"):
        load_keras_model(str(tmp_path / "m.keras"))  # the digits set is never borrowed
    from_file = load_keras_model(str(tmp_path / "m.keras"), eval_data=digits_npz)
    np.testing.assert_allclose(from_file.reference(x), expected, atol=1e-6)
    assert from_file.task == "classification" and from_file.output_kind == "probabilities"
    assert from_file.eval_y is not None and from_file.labels[3] == "3"
    assert from_file.image_shape is None  # a 64-feature vector is not an image unless built-in
    assert from_file.metrics["accuracy"] == pytest.approx(keras_digits.metrics["accuracy"])

    module = tf.Module()
    module.model = keras_digits.model  # tracks the variables
    module.f = tf.function(lambda t: {"probabilities": keras_digits.model(t)},
                           input_signature=[tf.TensorSpec([None, 64], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.f})
    from_savedmodel = load_keras_model(str(tmp_path / "sm"), eval_data=digits_npz)
    np.testing.assert_allclose(from_savedmodel.reference(x), expected, atol=1e-6)


def test_mlflow_keras_model_import(keras_digits, digits_npz: str, tmp_path: Path, monkeypatch) -> None:
    import mlflow
    import mlflow.keras

    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # another store's id
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        mlflow.set_experiment("keras-import")
        with mlflow.start_run():
            # requirements written out: inference would load the model again in a subprocess
            info = mlflow.keras.log_model(keras_digits.model, name="model", pip_requirements=["keras"])
        imported = load_keras_model(info.model_uri, eval_data=digits_npz)
        x = keras_digits.eval_x[:8]
        np.testing.assert_allclose(imported.reference(x), keras_digits.reference(x), atol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)


def test_builtin_keeps_its_own_data() -> None:
    builtin = load_keras_model("builtin:digits-keras")
    assert builtin.image_shape == (8, 8, 1) and len(builtin.eval_x) == len(builtin.eval_y) > 100


def test_unknown_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        load_keras_model(str(tmp_path / "missing.keras"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match="TensorFlow sources"):
        load_keras_model(str(tmp_path / "weights.bin"))
    with pytest.raises(SourceError, match="unknown built-in"):
        load_keras_model("builtin:nothing")


# ---- 13 features: classification and regression -----------------------------------------------
@pytest.fixture(scope="module")
def wine_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_keras_models import save_wine_classifier, save_wine_regressor, wine_csv, wine_npz

    folder = tmp_path_factory.mktemp("wine")
    return {"classifier": save_wine_classifier(folder / "wine.keras"),
            "logits": save_wine_classifier(folder / "logits.keras", logits=True),
            "regressor": save_wine_regressor(folder / "alcohol.keras"),
            "regressor2": save_wine_regressor(folder / "two.keras", outputs=2),
            "csv": wine_csv(folder / "wine.csv"), "npz": wine_npz(folder / "alcohol.npz"),
            "npz2": wine_npz(folder / "two.npz", outputs=2),
            "names": wine_csv(folder / "names.csv", labels=["barolo", "grignolino", "barbera"]),
            "narrow": wine_csv(folder / "narrow.csv", columns=12)}


def test_thirteen_feature_classifier_from_csv(wine_files) -> None:
    from tiny_keras_models import wine

    _, _, x, y = wine()
    model = load_keras_model(str(wine_files["classifier"]), eval_data=str(wine_files["csv"]))
    assert model.task == "classification" and model.output_kind == "probabilities"
    assert model.input_shape == (13,) and model.input_dtype == "float32" and model.image_shape is None
    assert model.labels == ["0", "1", "2"] and list(model.eval_y) == list(y)
    np.testing.assert_allclose(model.eval_x, x, rtol=1e-6)
    assert model.metrics["accuracy"] > 0.8
    assert model.params["dataset"] == str(wine_files["csv"]) and model.params["test_rows"] == len(x)


def test_logits_classifier_with_class_names(wine_files) -> None:
    model = load_keras_model(str(wine_files["logits"]), eval_data=str(wine_files["names"]),
                             class_names=["barolo", "grignolino", "barbera"])
    assert model.output_kind == "logits" and not model.outputs_are_probabilities
    assert model.labels == ["barolo", "grignolino", "barbera"] and model.metrics["accuracy"] > 0.8
    probabilities = model.probabilities(model.eval_x)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert (probabilities.argmax(1) == model.reference(model.eval_x).argmax(1)).all()
    with pytest.raises(ConfigError, match="class_names"):
        load_keras_model(str(wine_files["logits"]), eval_data=str(wine_files["names"]))


@pytest.mark.parametrize("outputs", [1, 2])
def test_regressor_from_npz(wine_files, outputs: int) -> None:
    key = "regressor" if outputs == 1 else "regressor2"
    data = wine_files["npz" if outputs == 1 else "npz2"]
    model = load_keras_model(str(wine_files[key]), eval_data=str(data),
                             task=None if outputs == 1 else "regression")
    assert model.task == "regression" and model.output_kind == "values" and model.labels == []
    assert model.reference(model.eval_x).shape == (len(model.eval_x), outputs)
    target = np.asarray(model.eval_y, np.float64).reshape(len(model.eval_x), -1)
    error = model.reference(model.eval_x) - target
    assert model.metrics["mae"] == pytest.approx(float(np.abs(error).mean()), rel=1e-6)
    assert model.metrics["rmse"] == pytest.approx(float(np.sqrt((error ** 2).mean())), rel=1e-6)


def test_eval_data_must_fit_the_model(wine_files, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rows of shape \[12\], the model takes inputs: float32\[13\]"):
        load_keras_model(str(wine_files["classifier"]), eval_data=str(wine_files["narrow"]))
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.zeros((4, 13), np.float32))
    with pytest.raises(ConfigError, match="pass task= one of classification, regression"):
        load_keras_model(str(wine_files["classifier"]), eval_data=str(unlabelled))
    parity_only = load_keras_model(str(wine_files["classifier"]), eval_data=str(unlabelled),
                                   task="classification")
    assert parity_only.eval_y is None and parity_only.labels == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="does not apply to a Keras model"):
        load_keras_model(str(wine_files["classifier"]), eval_data=str(unlabelled), task="embedding")
    out_of_range = tmp_path / "range.npz"
    np.savez(out_of_range, x=np.zeros((2, 13), np.float32), y=np.array([0, 5]))
    with pytest.raises(ConfigError, match=r"indices \[5\] are outside"):
        load_keras_model(str(wine_files["classifier"]), eval_data=str(out_of_range))
