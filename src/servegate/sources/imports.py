"""Import PyTorch models: MLflow URIs (``models:/``, ``runs:/``) or a file saved with torch."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np

from servegate.errors import SourceError
from servegate.sources.base import TorchModel


def _held_out_for(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """The held-out set the gates use for an imported model: digits-shaped inputs get digits'."""
    if shape == (64,):
        from servegate.sources.digits import load_digits_split

        data = load_digits_split()
        return data.x_test, data.y_test
    return None


def _input_shape(module, hint: tuple[int, ...] | None) -> tuple[int, ...]:
    if hint:
        return hint
    first = next((m for m in module.modules() if hasattr(m, "in_features")), None)
    if first is None:
        raise SourceError("cannot infer the model's input shape; log it with a signature")
    return (int(first.in_features),)


def _finish(module, uri: str, shape_hint: tuple[int, ...] | None) -> TorchModel:
    shape = _input_shape(module, shape_hint)
    held_out = _held_out_for(shape)
    if held_out is None:
        raise SourceError(f"no held-out data for inputs of shape {list(shape)}: the gates need one")
    model = TorchModel(module=module.eval(), input_shape=shape, labels=[], eval_x=held_out[0],
                       eval_y=held_out[1], source_uri=uri)
    classes = model.reference(model.example_batch(1)).shape[-1]
    model.labels = [str(i) for i in range(classes)]
    return model


#: Tasks a PyTorch (tensor) model may be imported with; text models carry their own.
TENSOR_TASKS = (None, "tensor-classification", "image-classification")


def _keep_until_exit(prefix: str) -> Path:
    """A fresh temporary directory removed when the process exits (it must outlive packaging)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def import_text_model(uri: str, registered_task: str, *, task: str | None = None,
                      max_length: int | None = None) -> TorchModel:
    """A model logged by ``text_pyfunc.log_text_model``: downloaded next to its tokenizer (kept
    until the process exits), with the held-out set ``hf:`` imports build for its task."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from servegate.sources.hf import held_out
    from servegate.sources.text_pyfunc import load_text_model
    from servegate.sources.topics import topic_sentences

    if task is not None and task != registered_task:
        raise SourceError(f"{uri} is a registered {registered_task} model; it cannot be imported "
                          f"with task {task!r} (omit the task or pass {registered_task!r})")
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(_keep_until_exit("servegate-import-"))))
    except (MlflowException, OSError) as exc:
        raise SourceError(f"cannot download {uri} from MLflow: {exc}") from exc
    model = load_text_model(local, source_uri=uri)
    if max_length is not None:
        model.max_length = int(max_length)
    data = topic_sentences()
    if model.task == "text-classification" and model.labels != data.labels:
        raise SourceError(f"{uri}: no held-out data for labels {model.labels} (the gates need one; "
                          f"the project's text set has {data.labels})")
    model.eval_x, model.eval_y = held_out(data, model.task)
    model.params = {"task": model.task, "max_length": model.max_length,
                    "dataset": "servegate.topics (templates)"}
    if model.labels:
        model.params["labels"] = ",".join(model.labels)
    return model


def import_mlflow_model(uri: str, *, task: str | None = None,
                        max_length: int | None = None) -> TorchModel:
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``runs:/RUN/PATH``: a PyTorch model,
    or a text model logged by ``text_pyfunc.log_text_model`` (``task``, when given, must be its
    task; ``max_length`` overrides its truncation)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from servegate.sources.text_pyfunc import is_text_model

    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as exc:
        raise SourceError(f"cannot load {uri} from MLflow: {exc}") from exc
    if is_text_model(info.metadata):
        return import_text_model(uri, str(info.metadata["task"]), task=task, max_length=max_length)
    if task not in TENSOR_TASKS:
        raise SourceError(f"task {task!r} applies to hf: models only (or a registered servegate "
                          f"text model), not {uri}")
    try:
        module = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError) as exc:
        raise SourceError(f"cannot load {uri} from MLflow: {exc}") from exc
    hint = None
    if info.signature is not None and info.signature.inputs is not None:
        shape = info.signature.inputs.to_dict()[0].get("tensor-spec", {}).get("shape")
        if shape:
            hint = tuple(int(d) for d in shape[1:])
    return _finish(module, uri, hint)


def import_torch_file(path: Path) -> TorchModel:
    """A whole module saved with ``torch.save`` or an ExportedProgram (``.pt2``)."""
    import torch

    if not path.exists():
        raise SourceError(f"model file not found: {path}")
    try:
        if path.suffix == ".pt2":
            module = torch.export.load(path).module()
        else:
            module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SourceError(f"cannot load a PyTorch model from {path}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"{path} holds a {type(module).__name__}, not a torch.nn.Module "
                          "(a state_dict needs its model class: use the MLflow model instead)")
    return _finish(module, str(path), None)
