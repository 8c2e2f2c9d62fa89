"""Text models in MLflow as a strings-in ``python_function`` model, and back.

``log_text_model`` logs a text ``TorchModel`` (``embedding`` or ``text-classification``) whose
``predict`` takes strings (a list, array or Series of them, or a DataFrame's ``text`` column, else
its first column) and answers, like the TorchServe text handler:

- ``embedding``: float32 ``[n, dim]``, L2-normalised embeddings;
- ``text-classification``: a DataFrame with ``label`` (str) and ``probabilities`` (softmax of the
  logits, float32, in the order of the model's ``labels``).

Tokenisation is the worker's own (``handlers/sg_text.py`` through ``TorchModel.text_encoder``),
so these outputs match serving. Artifacts: ``weights.pt`` (a state_dict when the module's class
lives in ``text_net.py``, else the whole pickled module), ``tokenizer.json`` and
``text_model.json`` (task, max_length, labels, format, model class and kwargs). The same fields,
with ``servegate_text: true``, are the MLflow model's ``metadata``, which is how an import
(``models:/``, ``runs:/``) recognises such a model; ``load_text_model`` rebuilds the
``TorchModel`` from a downloaded copy, and ``import_registered_text_model`` imports one from its
MLflow URI with the held-out set its task and head allow (``head``: ``checkpoint`` for a user's own
classifier, gated only on the user's ``eval_data``; ``topics`` for the project's demo head). Loading
needs servegate importable: it runs the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from servegate.errors import ConfigError, SourceError
from servegate.sources.base import TorchModel
from servegate.sources.eval_data import EvalData
from servegate.sources.hf import MODEL_FILE, reference_in_chunks
from servegate.sources.imports import keep_until_exit

TEXT_MARKER = "servegate_text"
CONFIG_FILE = "text_model.json"
WEIGHTS_FILE = "weights.pt"
TOKENIZER_FILE = "tokenizer.json"
EXAMPLE_ROWS = 3


def text_config(model: TorchModel) -> dict[str, Any]:
    """What rebuilding ``model`` needs besides weights and tokenizer (JSON-serialisable)."""
    return {
        "task": model.task, "max_length": int(model.max_length or 128), "labels": list(model.labels),
        "format": "state_dict" if model.model_class else "pickle",
        "model_class": model.model_class, "model_kwargs": dict(model.model_kwargs),
        # where a classifier's head came from: "checkpoint" (the user's own) or "topics" (demo)
        "head": model.params.get("head"),
    }


def _texts(model_input: Any) -> np.ndarray:
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input["text" if "text" in model_input.columns else model_input.columns[0]]
    if isinstance(model_input, str):
        model_input = [model_input]
    values = list(np.asarray(model_input, dtype=object).reshape(-1))  # no coercion to str
    if not values:
        raise ConfigError("a text model needs at least one text")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"a text model takes strings; row {bad[0]} is a {type(values[bad[0]]).__name__}")
    return np.array(values, dtype=object)


def text_outputs(model: TorchModel, texts: Any) -> np.ndarray | pd.DataFrame:
    """The pyfunc's answer for ``texts``: embeddings, or labels and probabilities."""
    from servegate._resources import handler_module

    rows = _texts(texts)
    outputs = reference_in_chunks(model, rows).astype(np.float32)
    if model.task == "embedding":
        return outputs
    probabilities = handler_module("sg_classification").softmax(outputs).astype(np.float32)
    return pd.DataFrame({"label": [model.labels[i] for i in probabilities.argmax(axis=1)],
                         "probabilities": list(probabilities)})


def _load_module(config: Mapping[str, Any], weights: Path):  # -> torch.nn.Module
    import torch

    if config["format"] == "pickle":
        return torch.load(weights, map_location="cpu", weights_only=False).eval()
    from servegate.sources import text_net

    cls = getattr(text_net, str(config["model_class"]).removeprefix("text_net."))
    module = cls(**config["model_kwargs"])
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return module.eval()


def build_text_model(config: Mapping[str, Any], weights: Path, tokenizer: Path, *,
                     source_uri: str = "") -> TorchModel:
    """A text ``TorchModel`` from the three artifacts (no held-out set: the importer adds it)."""
    state_dict = config["format"] == "state_dict"
    return TorchModel(
        module=_load_module(config, weights), input_shape=(), labels=list(config["labels"]),
        task=str(config["task"]), model_file=MODEL_FILE if state_dict else None,
        model_class=config["model_class"] if state_dict else None,
        model_kwargs=dict(config["model_kwargs"]) if state_dict else {},
        tokenizer_file=tokenizer, max_length=int(config["max_length"]), source_uri=source_uri,
        params={"head": config["head"]} if config.get("head") else {},
    )


class TextPyfunc(mlflow.pyfunc.PythonModel):
    """Strings in; embeddings, or labels and probabilities, out (see the module docstring)."""

    def load_context(self, context) -> None:
        config = json.loads(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
        self.model = build_text_model(config, Path(context.artifacts["weights"]),
                                      Path(context.artifacts["tokenizer"]))

    def predict(self, context, model_input, params=None):
        return text_outputs(self.model, model_input)


def log_text_model(model: TorchModel, *, name: str = "model",
                   registered_model_name: str | None = None):  # -> mlflow.models.model.ModelInfo
    """Log (and register, given a name) ``model`` as a strings-in pyfunc with a signature and
    real held-out sentences as its input example, in the active run."""
    import importlib.metadata

    import torch
    from mlflow.models import infer_signature

    if not model.is_text:
        raise SourceError("log_text_model needs a text model (with a tokenizer_file)")
    assert model.tokenizer_file is not None
    config = text_config(model)
    examples = [str(t) for t in model.example_batch(EXAMPLE_ROWS)]
    signature = infer_signature(examples, text_outputs(model, examples))
    requirements = [f"{p}=={importlib.metadata.version(p)}"
                    for p in ("mlflow", "torch", "tokenizers", "numpy", "pandas", "servegate")]
    with tempfile.TemporaryDirectory(prefix="servegate-text-") as tmp:
        folder = Path(tmp)
        weights = folder / WEIGHTS_FILE
        torch.save(model.module.state_dict() if config["format"] == "state_dict" else model.module,
                   weights)
        shutil.copyfile(model.tokenizer_file, folder / TOKENIZER_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=name, python_model=TextPyfunc(), signature=signature, input_example=examples,
            artifacts={"weights": str(weights), "tokenizer": str(folder / TOKENIZER_FILE),
                       "config": str(folder / CONFIG_FILE)},
            metadata={TEXT_MARKER: True, **config}, pip_requirements=requirements,
            registered_model_name=registered_model_name,
        )


def is_text_model(metadata: Mapping[str, Any] | None) -> bool:
    """Whether an MLflow model's ``metadata`` marks a model logged by ``log_text_model``."""
    return bool((metadata or {}).get(TEXT_MARKER))


def load_text_model(model_dir: Path, *, source_uri: str = "") -> TorchModel:
    """The ``TorchModel`` of a downloaded copy of a model logged by ``log_text_model``; its
    tokenizer file stays in ``model_dir``, which must outlive packaging."""
    from mlflow.models import Model

    try:
        artifacts = Model.load(str(model_dir)).flavors["python_function"]["artifacts"]
        paths = {key: model_dir / value["path"] for key, value in artifacts.items()}
        config = json.loads(paths["config"].read_text(encoding="utf-8"))
        return build_text_model(config, paths["weights"], paths["tokenizer"], source_uri=source_uri)
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        raise SourceError(f"{source_uri or model_dir} is not a loadable servegate text model: "
                          f"{exc}") from exc


def import_registered_text_model(uri: str, registered_task: str, *, task: str | None = None,
                                 max_length: int | None = None,
                                 eval_data: EvalData | str | None = None,
                                 label_column: str = "label") -> TorchModel:
    """A model logged by ``log_text_model`` (``models:/``, ``runs:/``): downloaded next to its
    tokenizer (kept until the process exits), with its task and labels, gated on ``eval_data``
    (an ``EvalData`` or a path/URI of texts and labels) when given. Without it, the project's
    topic set gates embedding models and the topic demo head only; a classifier with its own
    labels then raises a ``SourceError`` saying how to pass eval_data."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from servegate.sources.hf import class_indices, held_out, needs_eval_data, text_eval_data
    from servegate.sources.topics import TOPIC_LABELS, topic_sentences

    if task is not None and task != registered_task:
        raise SourceError(f"{uri} is a registered {registered_task} model; it cannot be imported "
                          f"with task {task!r} (omit the task or pass {registered_task!r})")
    data = text_eval_data(eval_data, label_column=label_column)
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(keep_until_exit("servegate-import-"))))
    except (MlflowException, OSError) as exc:
        raise SourceError(f"cannot download {uri} from MLflow: {exc}") from exc
    model = load_text_model(local, source_uri=uri)
    if max_length is not None:
        model.max_length = int(max_length)
    head = model.params.get("head")
    if data is not None:
        model.eval_x = np.asarray(data.x, dtype=str)
        model.eval_y = (class_indices(data, model.labels)
                        if model.task == "text-classification" else None)
        dataset = data.source
    else:
        topics_head = head == "topics" or (head is None and model.labels == TOPIC_LABELS)
        if model.task == "text-classification" and not topics_head:
            raise needs_eval_data(uri, model.labels)
        model.eval_x, model.eval_y = held_out(topic_sentences(), model.task)
        dataset = "servegate.topics (templates)"
    model.params = {"task": model.task, "max_length": model.max_length, "dataset": dataset}
    if head:
        model.params["head"] = head
    if model.labels:
        model.params["labels"] = ",".join(model.labels)
    if model.eval_y is not None:
        logits = reference_in_chunks(model, model.eval_x)
        model.metrics["accuracy"] = float((logits.argmax(1) == model.eval_y).mean())
    return model
