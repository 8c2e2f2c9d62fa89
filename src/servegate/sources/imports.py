"""Import PyTorch models: MLflow URIs (``models:/``, ``runs:/``) or a file saved with torch."""

from __future__ import annotations

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


def import_mlflow_model(uri: str) -> TorchModel:
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``runs:/RUN/PATH``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        info = mlflow.models.get_model_info(uri)
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
