"""Keras / TensorFlow model sources: ``builtin:digits-keras`` or a ``.keras`` file."""

from __future__ import annotations

from pathlib import Path

from servegate.errors import SourceError
from servegate.sources.digits_keras import KerasModel


def load_keras_model(uri: str) -> KerasModel:
    """``builtin:digits-keras`` (trained here) or a saved ``.keras`` model with 64 inputs (gated
    on the digits held-out set)."""
    if uri == "builtin:digits-keras":
        from servegate.sources.digits_keras import builtin_digits_keras

        return builtin_digits_keras()
    path = Path(uri).expanduser()
    if path.suffix != ".keras":
        raise SourceError(f"TensorFlow sources: builtin:digits-keras or a .keras file, got {uri!r}")
    if not path.exists():
        raise SourceError(f"model file not found: {path}")
    import keras

    from servegate.sources.digits import DIGIT_LABELS, load_digits_split

    try:
        model = keras.models.load_model(path)
    except Exception as exc:
        raise SourceError(f"cannot load a Keras model from {path}: {exc}") from exc
    if tuple(model.input_shape[1:]) != (64,):
        raise SourceError(f"no held-out data for inputs of shape {list(model.input_shape[1:])}")
    data = load_digits_split()
    return KerasModel(model=model, labels=list(DIGIT_LABELS), eval_x=data.x_test,
                      eval_y=data.y_test, source_uri=str(path))
