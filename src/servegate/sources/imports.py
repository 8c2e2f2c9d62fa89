"""Import a user's PyTorch model with its own evaluation data.

Sources: MLflow URIs (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN/PATH``) in
every format MLflow 3 logs (the default ExportedProgram ``pt2``, the pickle format), an
ExportedProgram ``.pt2`` file, a ``torch.save`` file (a whole module: pickle), or a state_dict
file with its model class (``model_class=file.py:Class``). Inputs (names, shapes, dtypes) come
from the MLflow signature, the ExportedProgram, or the evaluation data, never from the layers.

Pickle runs code when it is loaded: pickled artifacts load only with ``trust_pickle``.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from servegate.artifact_access import download, storage_uri
from servegate.config import SourceSettings
from servegate.errors import ConfigError, SourceError
from servegate.sources.base import TorchModel
from servegate.sources.eval_data import (
    EvalData,
    RawTable,
    conform,
    dataset_from_run,
    from_input_example,
    labels_as_indices,
    read_table,
)
from servegate.sources.options import read_labels
from servegate.sources.schema import (
    ModelSchema,
    TensorSpec,
    program_batch_is_dynamic,
    schema_from_program,
    schema_from_signature,
    signature_columns,
)
from servegate.sources.tasks import infer_task

#: Rows the reference runs on to learn the outputs and the task (the gates use every row).
PROBE_ROWS = 256

PICKLE_REFUSED = ("{what} is pickled: loading it runs code from the file. Pass trust_pickle=true "
                  "(-P trust_pickle=true, --trust-pickle) only if you trust its author, or log the "
                  "model in MLflow 3's default format (an ExportedProgram: "
                  "mlflow.pytorch.log_model(model, name=..., input_example=...))")

log = logging.getLogger(__name__)


def inside(folder: Path, relative: Any, *, what: str) -> Path:
    """``folder / relative`` for a path a downloaded model names (its MLmodel); refused when it
    leaves ``folder``."""
    path = (folder / str(relative)).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise SourceError(f"{what}: its MLmodel names {relative!r}, outside the model's directory")
    return path


def keep_until_exit(prefix: str) -> Path:
    """A fresh temporary directory removed when the process exits (it must outlive packaging)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@contextmanager
def _pickle_allowed() -> Iterator[None]:
    """MLflow's own pickle guard, lifted for one load the user said they trust."""
    saved = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
        else:
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = saved


def load_program(path: Path, *, trust_pickle: bool) -> Any:
    """A ``torch.export.ExportedProgram`` from ``path``; unless ``trust_pickle``, the archive is
    first checked to hold no pickle payload (MLflow's check; ``torch.export.load`` unpickles with
    ``weights_only=False``). Without that check the load is refused: it fails closed."""
    import torch

    if not trust_pickle:
        try:
            from mlflow.pytorch import _validate_pt2_archive_is_pickle_free
        except ImportError as exc:
            raise SourceError(
                f"cannot verify that {path} holds no pickle payload: this MLflow "
                "lacks mlflow.pytorch._validate_pt2_archive_is_pickle_free (servegate pins the "
                "MLflow it was tested with; reinstall it with `make setup`), and torch.export.load "
                "would unpickle the archive. Pass trust_pickle=true only if you trust its "
                "author") from exc
        try:
            _validate_pt2_archive_is_pickle_free(str(path))
        except Exception as exc:
            raise SourceError(PICKLE_REFUSED.format(what=f"part of {path}") + f" ({exc})") from exc
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise SourceError(f"cannot load the ExportedProgram {path}: {exc}") from exc
    return program_for_inference(program, what=str(path))


#: Ops an ExportedProgram traced in training mode holds with their training flag (argument
#: index): turned off, dropout passes its input through and batch norm uses its running
#: statistics, as after ``model.eval()``.
TRAINING_FLAGS = {"aten.dropout.default": 2, "aten.feature_dropout.default": 2,
                  "aten.alpha_dropout.default": 2, "aten.feature_alpha_dropout.default": 2,
                  "aten.native_dropout.default": 2, "aten.batch_norm.default": 5}
#: Training-mode ops with no flag to turn off (a decomposed program): refused.
TRAINING_ONLY = ("aten._native_batch_norm_legit_functional.default",
                 "aten._native_batch_norm_legit.default")


def program_for_inference(program: Any, *, what: str) -> Any:
    """``program`` computing as its model does after ``.eval()`` (its module cannot ``.eval()``;
    torch 2.13 has no ``move_exported_model_to_eval``): the training flags of dropout and batch
    norm (``TRAINING_FLAGS``) are turned off in its graph, in place. A program exported in
    training mode and then decomposed (``TRAINING_ONLY``) is refused: export it after
    ``model.eval()``."""
    changed = False
    for node in program.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if name in TRAINING_ONLY:
            raise SourceError(f"{what} was exported in training mode and decomposed ({name}): "
                              "call model.eval() before torch.export.export")
        index = TRAINING_FLAGS.get(name)
        if index is not None and len(node.args) > index and node.args[index] is True:
            node.args = (*node.args[:index], False, *node.args[index + 1:])
            changed = True
    if changed:
        program.graph_module.recompile()
        log.info("%s was exported in training mode: dropout and batch norm set to inference", what)
    return program


def _eval_mode(module: Any, program: Any) -> Any:
    """The module in inference mode (an ExportedProgram's module cannot ``.eval()``: its
    program was put in inference mode when loaded, ``program_for_inference``)."""
    return module.eval() if program is None else module


# ---- MLflow -----------------------------------------------------------------------------------
def import_mlflow_model(uri: str, settings: SourceSettings | None = None) -> TorchModel:
    """``models:/``, ``runs:/``: a PyTorch model in MLflow's pt2 or pickle format, or a text model
    logged by ``text_pyfunc.log_text_model``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from servegate.sources.text_pyfunc import is_text_model

    settings = settings or SourceSettings()
    storage_uri(uri, what=uri)  # every hop checked before MLflow reads anything there
    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError, ValueError) as exc:
        raise SourceError(f"cannot load {uri} from MLflow: {exc}") from exc
    if info.metadata is not None and is_text_model(info.metadata):
        from servegate.sources.text_pyfunc import import_registered_text_model

        task = None if settings.task in (None, "", "auto") else settings.task
        return import_registered_text_model(uri, str(info.metadata["task"]), task=task,
                                            max_length=settings.max_length, eval_data=settings.eval_data,
                                            label_column=settings.label_column,
                                            trust_pickle=settings.trust_pickle,
                                            registered_format=info.metadata.get("format"))
    if "pytorch" not in info.flavors:
        raise SourceError(f"{uri} is not a PyTorch model (flavors: {', '.join(sorted(info.flavors))}); "
                          "Keras models deploy with target=tfserving")
    flavor = info.flavors["pytorch"]
    local = download(uri, keep_until_exit("servegate-import-"), what=uri)
    data_dir = inside(local, flavor.get("model_data", "data"), what=uri)
    program = None
    if (data_dir / "model.pt2").exists():
        program = load_program(data_dir / "model.pt2", trust_pickle=settings.trust_pickle)
        module = program.module()
    else:
        module = _load_mlflow_pickle(uri, local, flavor, settings)
    schema = schema_from_signature(info.signature)
    if program is not None and schema is None:
        schema = schema_from_program(program)
    example = _input_example(local, schema)
    labels = (info.metadata or {}).get("labels")
    return build_tensor_model(
        module, program=program, schema=schema, columns=signature_columns(info.signature), uri=uri,
        settings=settings, run_id=info.run_id, example=example,
        labels_hint=[str(v) for v in labels] if isinstance(labels, list) else None)


def _load_mlflow_pickle(uri: str, local: Path, flavor: dict[str, Any], settings: SourceSettings) -> Any:
    import mlflow.pytorch

    if not settings.trust_pickle:
        raise SourceError(PICKLE_REFUSED.format(what=f"{uri} (MLflow pickle format)"))
    code = flavor.get("code")
    if code and str(inside(local, code, what=uri)) not in sys.path:
        sys.path.insert(0, str(inside(local, code, what=uri)))
    try:
        with _pickle_allowed():
            return mlflow.pytorch.load_model(str(local), map_location="cpu")
    except Exception as exc:  # unpickling raises anything the pickled code raises
        raise SourceError(f"cannot load {uri} (pickle format): {exc}") from exc


def _input_example(local: Path, schema: ModelSchema | None) -> tuple[np.ndarray, ...] | None:
    """The logged input example as arrays in the model's input order (None when absent)."""
    from mlflow.models import Model

    try:
        example = Model.load(str(local)).load_input_example(str(local))
    except Exception:  # no example, or one MLflow cannot read back: treated as absent
        return None
    if example is None:
        return None
    if isinstance(example, dict) and schema is not None:
        if all(n in example for n in schema.input_names):
            return tuple(np.asarray(example[n]) for n in schema.input_names)
        return tuple(np.asarray(v) for v in example.values())
    if isinstance(example, (tuple, list)) and example and isinstance(example[0], np.ndarray):
        return tuple(np.asarray(e) for e in example)
    if hasattr(example, "to_numpy"):  # a DataFrame example of a column signature
        return (example.to_numpy(dtype=np.float32),)
    return (np.asarray(example),)


# ---- files ------------------------------------------------------------------------------------
def import_torch_file(path: Path, settings: SourceSettings | None = None) -> TorchModel:
    """An ExportedProgram ``.pt2``, a whole module saved with ``torch.save`` (pickle:
    ``trust_pickle``), or a state_dict with ``model_class=file.py:Class``."""
    import torch

    settings = settings or SourceSettings()
    if not path.exists():
        raise SourceError(f"model file not found: {path}")
    if path.suffix == ".pt2":
        program = load_program(path, trust_pickle=settings.trust_pickle)
        return build_tensor_model(program.module(), program=program, schema=schema_from_program(program),
                                  uri=str(path), settings=settings)
    if settings.model_class:
        module, model_file, class_name = _state_dict_module(path, settings)
        return build_tensor_model(module, uri=str(path), settings=settings, model_file=model_file,
                                  model_class=class_name)
    if not settings.trust_pickle:
        try:  # a state_dict loads without pickle; say what it needs
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise SourceError(PICKLE_REFUSED.format(what=str(path))) from None
        raise SourceError(f"{path} holds a state_dict: give its class with model_class=file.py:Class "
                          "(and model_kwargs as JSON if its constructor needs arguments)")
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SourceError(f"cannot load a PyTorch model from {path}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"{path} holds a {type(module).__name__}, not a torch.nn.Module "
                          "(a state_dict needs its class: model_class=file.py:Class)")
    return build_tensor_model(module, uri=str(path), settings=settings)


def _state_dict_module(path: Path, settings: SourceSettings) -> tuple[Any, Path, str]:
    """The module of a state_dict file and the self-contained file defining its class."""
    import torch

    file_part, _, class_name = str(settings.model_class).rpartition(":")
    model_file = Path(file_part).expanduser().resolve()
    if not file_part or not class_name or model_file.suffix != ".py" or not model_file.is_file():
        raise ConfigError("model_class must be FILE.py:CLASS naming an existing file, "
                          f"got {settings.model_class!r}")
    # Imported under a private name: a module of the same name elsewhere is left alone.
    private_name = f"_servegate_model_{model_file.stem}"
    spec = importlib.util.spec_from_file_location(private_name, model_file)
    assert spec is not None and spec.loader is not None
    module_code = importlib.util.module_from_spec(spec)
    sys.modules[private_name] = module_code
    try:
        spec.loader.exec_module(module_code)
        cls = getattr(module_code, class_name)
        module = cls(**settings.model_kwargs)
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise SourceError(f"cannot build {class_name} from {model_file} with the weights in {path}: "
                          f"{exc}") from exc
    return module, model_file, f"{model_file.stem}.{class_name}"


# ---- the common part ----------------------------------------------------------------------------
def _schema_from_table(table: RawTable) -> ModelSchema:
    """Inputs read off evaluation data, for a model that records none (a pickled module)."""
    if table.tabular:
        return ModelSchema((TensorSpec("input", (len(table.arrays),), "float32"),))
    names = sorted(table.arrays) if "x" not in table.arrays else ["x"]
    specs = []
    for name in names:
        array = table.arrays[name]
        dtype = "float32" if array.dtype.kind == "f" else np.dtype(array.dtype).name
        specs.append(TensorSpec("input" if name == "x" else name, tuple(array.shape[1:]), dtype))
    return ModelSchema(tuple(specs))


def _decoded_images(table: RawTable, settings: SourceSettings) -> RawTable:
    """Image evaluation data (an ImageFolder, an ``image`` column) as the model's input rows,
    through the worker's own preprocessing; the images are kept to be sent as they are."""
    from servegate.sources.images import decode_all

    if settings.task != "image-classification":
        raise ConfigError(f"eval_data {table.source} holds images: pass task=image-classification "
                          "(and image_size, image_mean, image_std as the model was trained)")
    assert table.images is not None
    x = decode_all(table.images, settings.image_record(), table.source)
    return RawTable({"x": x}, table.labels, tabular=False, source=table.source, images=table.images)


def _as_served_images(data: EvalData, table: RawTable, image: dict[str, Any]) -> EvalData:
    """The held-out rows of an image model as encoded images and what the worker makes of them:
    the table's own images, else its tensor rows encoded as lossless PNG."""
    from servegate.sources.images import decode_all, encode_png

    images = table.images if table.images is not None else encode_png(np.asarray(data.x), image)
    x = data.x if table.images is not None else decode_all(images, image, data.source)
    return EvalData(x, data.y, data.source, images=tuple(images))


def _evaluation_rows(uri: str, schema: ModelSchema | None, columns: list[str] | None,
                     settings: SourceSettings, run_id: str | None,
                     example: tuple[np.ndarray, ...] | None) -> tuple[ModelSchema, EvalData, str]:
    """(schema, data, note): the user's eval_data, else a dataset logged to the model's run, else
    the logged input example (parity alone, said loudly); never another model's data."""
    table = None
    if settings.eval_data:
        table = read_table(settings.eval_data, label_column=settings.label_column)
    elif run_id:
        table = dataset_from_run(run_id, label_column=settings.label_column)
    if table is not None and table.images is not None:
        table = _decoded_images(table, settings)
    if schema is None:
        if table is None:
            raise SourceError(f"{uri} records no input signature and no eval_data was given: pass "
                              "eval_data (.npz/.csv/.parquet) or log the model with a signature")
        schema = _schema_from_table(table)
    if table is not None:
        data = conform(table, schema, feature_columns=columns)
        if settings.image_record():  # an image model is gated on images, decoded as the worker decodes
            data = _as_served_images(data, table, settings.image_record())
        return schema, data, f"evaluation data: {data.source} ({len(data)} rows, " + (
            "labelled)" if data.y is not None else "no labels: accuracy is not gated)")
    if example is not None:
        data = from_input_example(example, schema, source=f"the input example logged with {uri}")
        return schema, data, (f"NO EVALUATION DATA: {uri} has no eval_data and no logged dataset; "
                              f"parity runs on its logged input example alone ({len(data)} rows) and "
                              "accuracy is not gated. Pass eval_data= to gate on held-out data.")
    raise SourceError(f"no evaluation data for {uri}: pass eval_data (a .npz/.csv/.parquet path or an "
                      "MLflow artifact URI), log a dataset with mlflow.log_input, or log the model "
                      "with an input_example")


def build_tensor_model(module: Any, *, uri: str, settings: SourceSettings, program: Any = None,
                       schema: ModelSchema | None = None, columns: list[str] | None = None,
                       run_id: str | None = None, example: tuple[np.ndarray, ...] | None = None,
                       labels_hint: list[str] | None = None, model_file: Path | None = None,
                       model_class: str | None = None) -> TorchModel:
    """A tensor ``TorchModel`` with its evaluation data, task, labels and reference metrics."""
    schema, data, note = _evaluation_rows(uri, schema, columns, settings, run_id, example)
    model = TorchModel(module=_eval_mode(module, program), input_shape=(), labels=[],
                       inputs=schema.inputs, eval_x=data.x, eval_images=data.images,
                       source_uri=uri, program=program,
                       model_file=model_file, model_class=model_class,
                       model_kwargs=dict(settings.model_kwargs) if model_class else {},
                       eval_note=note, image=settings.image_record())
    try:
        outputs = model.reference_outputs(data.x[:PROBE_ROWS])
    except Exception as exc:  # the user's forward raising on the user's data
        raise SourceError(f"{uri} fails on its evaluation data {schema.describe()}: "
                          f"{type(exc).__name__}: {exc}") from exc
    class_names = read_labels(settings.labels) or labels_hint or _folder_classes(data, outputs[0])
    model.task = infer_task(outputs, data.y, given=settings.task, class_names=class_names)
    model.outputs = schema.outputs if len(schema.outputs) == len(outputs) else tuple(
        TensorSpec(f"output_{i}" if len(outputs) > 1 else "output", tuple(o.shape[1:]), o.dtype.name)
        for i, o in enumerate(outputs))
    if program is not None and not program_batch_is_dynamic(program):
        model.max_batch = 1
        note += ("; the ExportedProgram has a fixed batch size (it was logged with a one-row example):"
                 " the worker runs one row at a time (log it with an input_example of 2+ rows)")
        model.eval_note = note
    _attach_labels(model, data, class_names, outputs[0])
    model.params = {"task": model.task, "eval_data": data.source, "eval_rows": len(data),
                    "labelled": data.y is not None, "inputs": schema.describe(),
                    "format": "exported_program" if program is not None else "module"}
    return model


def _folder_classes(data: EvalData, first: np.ndarray) -> list[str] | None:
    """Class names of image data labelled by name (an ImageFolder's folders), in name order,
    when there are as many as the model has classes (torchvision's ImageFolder convention)."""
    if data.images is None or data.y is None or np.asarray(data.y).dtype.kind not in "UO":
        return None
    names = sorted({str(v) for v in np.asarray(data.y).tolist()})
    return names if first.ndim == 2 and len(names) == first.shape[1] else None


def _attach_labels(model: TorchModel, data: EvalData, class_names: list[str] | None,
                   first: np.ndarray) -> None:
    """Class names and label indices (classification), or target values (regression)."""
    if model.task in ("classification", "image-classification"):
        classes = int(first.shape[1])
        if class_names is not None and len(class_names) != classes:
            raise ConfigError(f"{len(class_names)} labels given for a model with {classes} outputs")
        model.labels = class_names or [str(i) for i in range(classes)]
        if data.y is not None:
            model.eval_y = labels_as_indices(np.asarray(data.y), model.labels, data.source)
            if model.eval_y.min() < 0 or model.eval_y.max() >= classes:
                raise ConfigError(f"eval_data {data.source}: labels outside the model's {classes} classes")
            reference = model.reference(data.x)
            model.metrics["accuracy"] = float((reference.argmax(-1) == model.eval_y).mean())
    elif model.task == "regression" and data.y is not None:
        try:
            target = np.asarray(data.y, dtype=np.float64).reshape(len(data.y), *first.shape[1:])
        except ValueError as exc:
            raise ConfigError(f"eval_data {data.source}: targets of shape {list(np.shape(data.y))} do not "
                              f"match the model's output per row {list(first.shape[1:])}") from exc
        model.eval_y = target
        error = model.reference(data.x).astype(np.float64) - target
        model.metrics["rmse"] = float(np.sqrt(np.mean(error ** 2)))
        model.metrics["mae"] = float(np.mean(np.abs(error)))
