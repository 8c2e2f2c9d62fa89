"""Keras / TensorFlow model sources: ``builtin:digits-keras``, a ``.keras`` file, a SavedModel
directory, or an MLflow Keras model (``models:/`` / ``runs:/``), with any input shape.

A user's model is gated on the user's evaluation data (``eval_data``: .npz, .csv, .parquet,
.jsonl or an MLflow artifact URI, read by ``eval_data.read_table`` and checked against a
``ModelSchema`` made from the model's input shape and dtype); the digits set is never borrowed.
The task is ``classification`` (softmax probabilities, logits, or a one-column sigmoid with
``task="classification"``) or ``regression`` (one or more values per row): given, or inferred
from the output width and the labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from servegate.errors import ConfigError, SourceError
from servegate.sources.keras_model import KERAS_TASKS, KerasModel

#: ``task`` spellings taken for Keras models (the tensor tasks of the PyTorch side included).
TASK_ALIASES = {"classification": "classification", "tensor-classification": "classification",
                "image-classification": "classification", "regression": "regression"}
BUILTIN = "builtin:digits-keras"


def load_keras_model(uri: str, *, eval_data: str | None = None, label_column: str = "label",
                     task: str | None = None, class_names: list[str] | None = None,
                     trust_pickle: bool = False) -> KerasModel:
    """Resolve a TensorFlow model source into a ``KerasModel`` gated on ``eval_data``.

    ``builtin:digits-keras`` keeps its own held-out set (``eval_data`` replaces it when given);
    every other source needs ``eval_data``. ``task``: ``classification`` or ``regression`` (None:
    inferred). ``class_names``: the class labels in index order (default ``"0"``, ``"1"``, ...);
    string labels in the data are looked up in them. ``trust_pickle``: load a model whose files
    name code (``keras_safety``) without vetting it.
    """
    if uri == BUILTIN:
        from servegate.sources.digits_keras import builtin_digits_keras

        builtin = builtin_digits_keras()
        if eval_data is None:
            return builtin
        model = with_eval_data(builtin.model, uri, eval_data, label_column=label_column,
                               task=task or "classification", class_names=builtin.labels)
        model.image_shape = builtin.image_shape  # flattened 8x8 grayscale digits
        return model
    if uri.startswith("builtin:"):
        raise SourceError(f"unknown built-in TensorFlow model {uri!r}; known: {BUILTIN}")
    keras_model = _load(uri, trust_pickle=trust_pickle)
    if eval_data is None:
        raise SourceError(
            f"{uri}: a Keras model is gated on your held-out data, and its inputs cannot be guessed: "
            "pass eval_data (-P eval_data=PATH_OR_URI: .npz with x (and y), or .csv/.parquet/.jsonl "
            f"with one column per feature and a '{label_column}' column; label_column names another)")
    return with_eval_data(keras_model, uri, eval_data, label_column=label_column, task=task,
                          class_names=class_names)


def _load(uri: str, *, trust_pickle: bool = False) -> Any:
    """The Keras model at ``uri``, its files vetted first unless ``trust_pickle``
    (``keras_safety``): a registry or a file can name code."""
    if uri.startswith(("models:/", "runs:/")):
        return _load_from_mlflow(uri, trust_pickle=trust_pickle)
    path = Path(uri).expanduser()
    if not path.exists():
        raise SourceError(f"model not found: {path}")
    if path.is_dir() and (path / "saved_model.pb").exists():
        return _savedmodel_as_keras(path, trust_pickle=trust_pickle)
    if path.suffix == ".keras":
        return _load_keras_file(path, trust_pickle=trust_pickle, what=str(path))
    raise SourceError(f"TensorFlow sources: {BUILTIN}, a .keras file, a SavedModel "
                      f"directory or an MLflow Keras model; got {uri!r}")


def _load_keras_file(path: Path, *, trust_pickle: bool, what: str) -> Any:
    import keras

    from servegate.sources.keras_safety import vet_keras_archive

    if not trust_pickle:
        vet_keras_archive(path, what=what)
    try:
        return keras.saving.load_model(path, safe_mode=not trust_pickle)
    except Exception as exc:
        raise SourceError(f"cannot load a Keras model from {what}: {exc}") from exc


def _load_from_mlflow(uri: str, *, trust_pickle: bool) -> Any:
    """An MLflow Keras model (``.keras``, or an exported SavedModel), downloaded through
    ``artifact_access`` and vetted before it is loaded."""
    from mlflow.models import Model

    from servegate.artifact_access import download
    from servegate.sources.imports import inside, keep_until_exit

    local = download(uri, keep_until_exit("servegate-import-"), what=uri)
    try:
        flavor = Model.load(str(local)).flavors["keras"]
    except (KeyError, OSError, ValueError) as exc:
        raise SourceError(f"{uri} is not an MLflow Keras model (target=tfserving takes the keras "
                          f"flavor): {exc}") from exc
    data = inside(local, flavor.get("data", "model"), what=uri)
    if data.is_dir():
        data = data / "model"
    if flavor.get("save_exported_model"):
        return _savedmodel_as_keras(data, trust_pickle=trust_pickle, what=uri)
    return _load_keras_file(data.with_name(data.name + ".keras"), trust_pickle=trust_pickle,
                            what=uri)


#: Outputs of a SavedModel's serving_default taken as the model's output, in order of preference
#: (servegate's own exports have probabilities/classes/scores/labels, or values).
PREFERRED_OUTPUTS = ("probabilities", "values", "logits", "predictions", "outputs", "output_0")


def _savedmodel_as_keras(path: Path, *, trust_pickle: bool = False, what: str = "") -> Any:
    """A SavedModel's ``serving_default`` wrapped as a Keras model (so it can be re-exported with
    our pre/post-processing): one input; one output, or the first of ``PREFERRED_OUTPUTS``.
    Unless ``trust_pickle``, its signatures must reach no op that touches files or Python."""
    import keras
    import tensorflow as tf

    from servegate.sources.keras_safety import vet_savedmodel

    if not trust_pickle:
        vet_savedmodel(path, what=what or str(path))

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
            key = next((k for k in PREFERRED_OUTPUTS if k in outputs), None)
            if key is None and len(outputs) == 1:
                key = next(iter(outputs))
            if key is None:
                raise SourceError(f"{path}: serving_default has outputs {sorted(outputs)}; expected "
                                  f"one, or one named {', '.join(PREFERRED_OUTPUTS)}")
            outputs = outputs[key]
        return keras.Model(inputs, outputs)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"cannot wrap the SavedModel at {path}: {exc}") from exc


# ---- the model's input and the user's data ---------------------------------------------------
def keras_schema(keras_model: Any, uri: str):  # -> ModelSchema
    """The ``ModelSchema`` of a single-input Keras model (``inputs``: its row shape and dtype)."""
    from servegate.sources.schema import INPUT_DTYPES, ModelSchema, TensorSpec

    inputs = list(getattr(keras_model, "inputs", None) or [])
    if len(inputs) != 1:
        raise SourceError(f"{uri}: the model has {len(inputs) or 'no known'} inputs; servegate's "
                          "TensorFlow path takes Keras models with exactly one input")
    shape = tuple(-1 if d is None else int(d) for d in inputs[0].shape[1:])
    dtype = np.dtype(str(getattr(inputs[0].dtype, "name", inputs[0].dtype))).name
    if dtype not in INPUT_DTYPES:
        raise SourceError(f"{uri}: input dtype {dtype} cannot be served; "
                          f"supported: {', '.join(INPUT_DTYPES)}")
    if not shape:
        raise SourceError(f"{uri}: the model takes scalars per row; expected a vector or an image")
    return ModelSchema((TensorSpec("inputs", shape, dtype),))


def _image_shape(shape: tuple[int, ...], dtype: str) -> tuple[int, int, int] | None:
    """``(height, width, channels)`` of an image input (2-D, or 3-D with 1, 3 or 4 channels)."""
    if np.dtype(dtype).kind != "f" or -1 in shape:
        return None
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        return (shape[0], shape[1], shape[2])
    return None


def _labels_array(labels: np.ndarray | None) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.dtype == object and len(labels) and isinstance(labels[0], (list, tuple, np.ndarray)):
        labels = np.stack([np.asarray(v) for v in labels])
    return labels


def _is_probabilities(out: np.ndarray) -> bool:
    return bool(out.min() >= -1e-6 and out.max() <= 1 + 1e-6
                and np.allclose(out.sum(axis=1), 1.0, atol=1e-4))


def infer_keras_task(out: np.ndarray, labels: np.ndarray | None, *, given: str | None,
                     class_names: list[str] | None) -> str:
    """``given`` (checked) or: one output per row -> regression; otherwise classification when
    the labels are integral (or class names), regression when they are fractional; without
    labels or class names the task is ambiguous and a ``ConfigError`` lists the choices."""
    if given not in (None, "", "auto"):
        task = TASK_ALIASES.get(str(given))
        if task is None:
            raise ConfigError(f"task {given!r} does not apply to a Keras model; choose one of "
                              f"{', '.join(KERAS_TASKS)}")
        return task
    if out.shape[1] == 1:
        return "regression"
    if class_names:
        return "classification"
    if labels is not None and labels.dtype.kind in "iuf" and labels.ndim == 1:
        return "classification" if np.array_equal(labels, np.round(labels)) else "regression"
    if labels is not None and labels.ndim == 2 and labels.dtype.kind in "iuf":
        return "regression"
    if labels is not None and labels.dtype.kind in "USO":
        raise ConfigError("the labels are names: pass class_names (the classes in index order) "
                          "and task=classification")
    raise ConfigError(f"cannot tell the task of a Keras model with {out.shape[1]} outputs per row "
                      + ("" if labels is not None else "without labelled eval_data")
                      + f": pass task= one of {', '.join(KERAS_TASKS)}")


def with_eval_data(keras_model: Any, uri: str, eval_data: str, *, label_column: str = "label",
                   task: str | None = None, class_names: list[str] | None = None) -> KerasModel:
    """``keras_model`` as a ``KerasModel`` gated on ``eval_data`` (read and checked against its
    input), with its task, output kind, labels and held-out metrics."""
    from servegate.sources.eval_data import conform, labels_as_indices, read_table

    schema = keras_schema(keras_model, uri)
    spec = schema.inputs[0]
    data = conform(read_table(eval_data, label_column=label_column), schema)
    x = np.asarray(data.x)
    labels = _labels_array(data.y)
    model = KerasModel(model=keras_model, labels=[], input_shape=spec.shape, input_dtype=spec.dtype,
                       image_shape=_image_shape(spec.shape, spec.dtype), eval_x=x, source_uri=uri)
    try:
        out = model.raw_outputs(x[:256])
    except Exception as exc:  # Keras/TensorFlow raise many kinds
        raise SourceError(f"{uri}: the model fails on the eval_data rows: {exc}") from exc
    chosen = infer_keras_task(out, labels, given=task, class_names=class_names)
    model.task = chosen
    width = out.shape[1]
    model.params = {"task": chosen, "input_shape": list(spec.shape), "input_dtype": spec.dtype,
                    "dataset": data.source, "test_rows": len(x), "outputs": width}
    if chosen == "regression":
        model.output_kind = "values"
        if labels is not None:
            target = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
            if target.shape[1] != width:
                raise ConfigError(f"eval_data {data.source}: {target.shape[1]} label values per row, "
                                  f"the model outputs {width}")
            model.eval_y = target if width > 1 else target[:, 0]
            error = model.reference(x).astype(np.float64) - target
            model.metrics["rmse"] = float(np.sqrt(np.mean(error ** 2)))
            model.metrics["mae"] = float(np.mean(np.abs(error)))
        return model
    if width == 1:
        if not (out.min() >= 0 and out.max() <= 1):
            raise ConfigError(f"{uri}: one output per row outside [0, 1] is not a sigmoid "
                              "probability; a binary classifier needs one (or use task=regression)")
        model.output_kind, width = "sigmoid", 2
    else:
        model.output_kind = "probabilities" if _is_probabilities(out) else "logits"
    names = list(class_names) if class_names else [str(i) for i in range(width)]
    if len(names) != width:
        raise ConfigError(f"{uri}: {len(names)} class names for {width} classes")
    model.labels = names
    model.params["labels"] = ",".join(names)
    model.params["output_kind"] = model.output_kind
    if labels is not None:
        if labels.ndim != 1:
            raise ConfigError(f"eval_data {data.source}: a classifier needs one label per row")
        y = labels_as_indices(labels, names, data.source)
        model.eval_y = y
        model.metrics["accuracy"] = float((model.reference(x).argmax(1) == y).mean())
    return model
