"""Keras / TensorFlow model sources: ``builtin:digits-keras``, a ``.keras`` file, a SavedModel
directory, or an MLflow Keras model (``models:/`` / ``runs:/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servegate.errors import SourceError
from servegate.sources.digits_keras import KerasModel


def load_keras_model(uri: str) -> KerasModel:
    """Resolve a TensorFlow model source into a ``KerasModel`` (gated on the digits held-out set
    when its inputs have 64 features)."""
    if uri == "builtin:digits-keras":
        from servegate.sources.digits_keras import builtin_digits_keras

        return builtin_digits_keras()
    if uri.startswith(("models:/", "runs:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            model = mlflow.keras.load_model(uri)
        except (MlflowException, OSError) as exc:
            raise SourceError(f"cannot load {uri} from MLflow as a Keras model: {exc}") from exc
        return _with_held_out(model, uri)
    path = Path(uri).expanduser()
    if not path.exists():
        raise SourceError(f"model not found: {path}")
    if path.is_dir() and (path / "saved_model.pb").exists():
        return _with_held_out(_savedmodel_as_keras(path), str(path))
    if path.suffix == ".keras":
        import keras

        try:
            return _with_held_out(keras.models.load_model(path), str(path))
        except Exception as exc:
            raise SourceError(f"cannot load a Keras model from {path}: {exc}") from exc
    raise SourceError(f"TensorFlow sources: builtin:digits-keras, a .keras file, a SavedModel "
                      f"directory or an MLflow Keras model; got {uri!r}")


def _savedmodel_as_keras(path: Path) -> Any:
    """A SavedModel's ``serving_default`` wrapped as a Keras model (so it can be re-exported with
    our pre/post-processing); its single output must be class probabilities."""
    import keras
    import tensorflow as tf

    try:
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        specs = list(signature.structured_input_signature[1].values())
        if len(specs) != 1:
            raise SourceError(f"{path}: serving_default takes {len(specs)} inputs; expected one")
        spec = specs[0]
        layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
        inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name)
        outputs = layer(inputs)
        if isinstance(outputs, dict):
            if len(outputs) != 1:
                raise SourceError(f"{path}: serving_default has outputs {sorted(outputs)}; expected "
                                  "one (class probabilities)")
            outputs = next(iter(outputs.values()))
        return keras.Model(inputs, outputs)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"cannot wrap the SavedModel at {path}: {exc}") from exc


def _with_held_out(model: Any, uri: str) -> KerasModel:
    from servegate.sources.digits import DIGIT_LABELS, load_digits_split

    shape = tuple(model.input_shape[1:])
    if shape != (64,):
        raise SourceError(f"no held-out data for inputs of shape {list(shape)}: the gates need one")
    data = load_digits_split()
    return KerasModel(model=model, labels=list(DIGIT_LABELS), eval_x=data.x_test,
                      eval_y=data.y_test, source_uri=uri)
