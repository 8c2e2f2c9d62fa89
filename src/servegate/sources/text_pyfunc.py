"""Text models in MLflow as a strings-in ``python_function`` model, and back.

``log_text_model`` logs a text ``TorchModel`` (``embedding`` or ``text-classification``) whose
``predict`` takes strings (a list, array or Series of them, or a DataFrame's ``text`` column, else
its first column) and answers, like the TorchServe text handler:

- ``embedding``: float32 ``[n, dim]``, L2-normalised embeddings;
- ``text-classification``: a DataFrame with ``label`` (str) and ``probabilities`` (softmax of the
  logits, float32, in the order of the model's ``labels``).

Tokenisation is the worker's own (``handlers/sg_text.py`` through ``TorchModel.text_encoder``),
so these outputs match serving. Artifacts, none of them pickled: ``weights.safetensors`` (a
state_dict, when the module's class lives in ``text_net.py``) or ``model.pt2`` (an
ExportedProgram with dynamic batch and sequence, any other class), ``tokenizer.json`` and
``text_model.json`` (task, max_length, labels, format, model class and kwargs). Models logged
before this (``format: pickle``, a whole pickled module) load only with ``trust_pickle``, which is
checked before any file is read: a registry writer controls both the metadata and the files. The same fields,
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
from mlflow.pyfunc import PythonModel

from servegate.artifact_access import download
from servegate.errors import ConfigError, SourceError
from servegate.sources.base import TorchModel
from servegate.sources.eval_data import EvalData
from servegate.sources.hf import MODEL_FILE, reference_in_chunks
from servegate.sources.imports import PICKLE_REFUSED, inside, keep_until_exit, load_program

TEXT_MARKER = "servegate_text"
CONFIG_FILE = "text_model.json"
WEIGHTS_FILE = "weights.safetensors"
PROGRAM_FILE = "model.pt2"
TOKENIZER_FILE = "tokenizer.json"
EXAMPLE_ROWS = 3
#: How the module is stored: ``state_dict`` (safetensors + a ``text_net`` class),
#: ``exported_program`` (pickle-free ``.pt2``), ``pickle`` (old logs: ``trust_pickle`` only).
FORMATS = ("state_dict", "exported_program", "pickle")
#: The largest batch a logged ExportedProgram takes (the pyfunc predicts in chunks of 32).
PROGRAM_MAX_BATCH = 256


def text_config(model: TorchModel) -> dict[str, Any]:
    """What rebuilding ``model`` needs besides weights and tokenizer (JSON-serialisable)."""
    return {
        "task": model.task, "max_length": int(model.max_length or 128), "labels": list(model.labels),
        "format": "state_dict" if model.model_class else "exported_program",
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


def text_net_class(name: str) -> type:
    """The ``text_net`` module class ``name`` (``text_net.X`` or ``X``): public ``nn.Module``
    subclasses defined there only, whatever a logged config asks for."""
    import torch

    from servegate.sources import text_net

    short = str(name).removeprefix("text_net.")
    cls = getattr(text_net, short, None) if not short.startswith("_") else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)
            and cls.__module__ == text_net.__name__):
        raise SourceError(f"model class {name!r} is not one of servegate's text networks "
                          "(text_net.BertEncoder, SentenceEmbedding, TextClassifier, ...)")
    return cls


def check_format(config: Mapping[str, Any], *, trust_pickle: bool, what: str) -> str:
    """The config's storage format, refused when it is unknown or pickled without trust."""
    fmt = config.get("format")
    if fmt not in FORMATS:
        raise SourceError(f"{what}: unknown text model format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "pickle" and not trust_pickle:
        raise SourceError(PICKLE_REFUSED.format(what=f"{what} (a text model logged as a pickled "
                                                     "module)"))
    return str(fmt)


def _load_module(config: Mapping[str, Any], weights: Path, *, trust_pickle: bool,
                 what: str) -> tuple[Any, Any]:
    """(module in eval mode, its ExportedProgram or None) from the stored weights."""
    import torch

    fmt = check_format(config, trust_pickle=trust_pickle, what=what)  # refuses untrusted pickle
    if fmt == "pickle" and trust_pickle:  # the guard beside the load it guards
        return torch.load(weights, map_location="cpu", weights_only=False).eval(), None
    if fmt == "exported_program":
        program = load_program(weights, trust_pickle=trust_pickle)
        return program.module(), program
    cls = text_net_class(str(config["model_class"]))
    kwargs = config.get("model_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise SourceError(f"{what}: model_kwargs must be a JSON object")
    module = cls(**kwargs)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights), device="cpu")
    else:  # logged before safetensors: a state_dict read without pickle
        state = torch.load(weights, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.eval(), None


def build_text_model(config: Mapping[str, Any], weights: Path, tokenizer: Path, *,
                     source_uri: str = "", trust_pickle: bool = False) -> TorchModel:
    """A text ``TorchModel`` from the three artifacts (no held-out set: the importer adds it).
    A pickled module loads only with ``trust_pickle``."""
    state_dict = config["format"] == "state_dict"
    module, program = _load_module(config, weights, trust_pickle=trust_pickle,
                                   what=source_uri or str(weights))
    return TorchModel(
        module=module, input_shape=(), labels=list(config["labels"]),
        task=str(config["task"]), model_file=MODEL_FILE if state_dict else None,
        model_class=config["model_class"] if state_dict else None,
        model_kwargs=dict(config["model_kwargs"]) if state_dict else {},
        tokenizer_file=tokenizer, max_length=int(config["max_length"]), source_uri=source_uri,
        params={"head": config["head"]} if config.get("head") else {}, program=program,
    )


class TextPyfunc(PythonModel):
    """Strings in; embeddings, or labels and probabilities, out (see the module docstring)."""

    def load_context(self, context) -> None:
        config = json.loads(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
        # MLflow unpickled this PythonModel to get here: whoever loads a pyfunc trusts pickle.
        self.model = build_text_model(config, Path(context.artifacts["weights"]),
                                      Path(context.artifacts["tokenizer"]), trust_pickle=True)

    def predict(self, context, model_input, params=None):
        return text_outputs(self.model, model_input)


def log_text_model(model: TorchModel, *, name: str = "model",
                   registered_model_name: str | None = None):  # -> mlflow.models.model.ModelInfo
    """Log (and register, given a name) ``model`` as a strings-in pyfunc with a signature and
    real held-out sentences as its input example, in the active run."""
    import importlib.metadata

    from mlflow.models import infer_signature

    if not model.is_text:
        raise SourceError("log_text_model needs a text model (with a tokenizer_file)")
    assert model.tokenizer_file is not None
    config = text_config(model)
    examples = [str(t) for t in np.asarray(model.example_batch(EXAMPLE_ROWS)).reshape(-1)]
    signature = infer_signature(examples, text_outputs(model, examples))
    requirements = [f"{p}=={importlib.metadata.version(p)}"
                    for p in ("mlflow", "torch", "tokenizers", "numpy", "pandas", "servegate")]
    with tempfile.TemporaryDirectory(prefix="servegate-text-") as tmp:
        folder = Path(tmp)
        weights = _save_module(model, config["format"], folder)
        shutil.copyfile(model.tokenizer_file, folder / TOKENIZER_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=name, python_model=TextPyfunc(), signature=signature, input_example=examples,
            artifacts={"weights": str(weights), "tokenizer": str(folder / TOKENIZER_FILE),
                       "config": str(folder / CONFIG_FILE)},
            metadata={TEXT_MARKER: True, **config}, pip_requirements=requirements,
            registered_model_name=registered_model_name,
        )


def _save_module(model: TorchModel, fmt: str, folder: Path) -> Path:
    """The module's weights without pickle: safetensors (a ``text_net`` class) or an
    ExportedProgram with dynamic batch and sequence dimensions."""
    import torch

    if fmt == "state_dict":
        from safetensors.torch import save_file

        path = folder / WEIGHTS_FILE
        state = {k: v.detach().contiguous() for k, v in model.module.state_dict().items()}
        save_file(state, str(path))
        return path
    path = folder / PROGRAM_FILE
    try:
        if model.program is not None:
            program = model.program
        else:
            tensors = tuple(torch.from_numpy(a) for a in model.example_inputs(EXAMPLE_ROWS))
            program = torch.export.export(model.module.eval(), tensors,
                                          dynamic_shapes=model.dynamic_shapes(PROGRAM_MAX_BATCH))
        torch.export.save(program, str(path))
    except Exception as exc:
        raise SourceError(f"cannot log the text model without pickle: torch.export of "
                          f"{type(model.module).__name__} failed ({exc}); its class must be "
                          "exportable, or one of servegate's text_net classes") from exc
    return path


def is_text_model(metadata: Mapping[str, Any] | None) -> bool:
    """Whether an MLflow model's ``metadata`` marks a model logged by ``log_text_model``."""
    return bool((metadata or {}).get(TEXT_MARKER))


def load_text_model(model_dir: Path, *, source_uri: str = "", trust_pickle: bool = False,
                    registered_format: Any = None) -> TorchModel:
    """The ``TorchModel`` of a downloaded copy of a model logged by ``log_text_model``; its
    tokenizer file stays in ``model_dir``, which must outlive packaging. The stored config's
    format is checked (and must agree with ``registered_format``, the metadata's, when given)
    before the weights are read."""
    from mlflow.models import Model

    what = source_uri or str(model_dir)
    try:
        artifacts = Model.load(str(model_dir)).flavors["python_function"]["artifacts"]
        paths = {key: inside(model_dir, value["path"], what=what) for key, value in artifacts.items()}
        config = json.loads(paths["config"].read_text(encoding="utf-8"))
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise SourceError(f"{what} is not a loadable servegate text model: {exc}") from exc
    if not isinstance(config, dict):
        raise SourceError(f"{what}: {CONFIG_FILE} is not a JSON object")
    check_format(config, trust_pickle=trust_pickle, what=what)
    if registered_format is not None and config.get("format") != registered_format:
        raise SourceError(f"{what}: its metadata says format {registered_format!r} but its "
                          f"{CONFIG_FILE} says {config.get('format')!r}; refusing a model whose "
                          "files disagree with its registration")
    try:
        return build_text_model(config, paths["weights"], paths["tokenizer"], source_uri=source_uri,
                                trust_pickle=trust_pickle)
    except SourceError:
        raise
    except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise SourceError(f"{what} is not a loadable servegate text model: {exc}") from exc


def import_registered_text_model(uri: str, registered_task: str, *, task: str | None = None,
                                 max_length: int | None = None,
                                 eval_data: EvalData | str | None = None,
                                 label_column: str = "label", trust_pickle: bool = False,
                                 registered_format: Any = None) -> TorchModel:
    """A model logged by ``log_text_model`` (``models:/``, ``runs:/``): downloaded next to its
    tokenizer (kept until the process exits), with its task and labels, gated on ``eval_data``
    (an ``EvalData`` or a path/URI of texts and labels) when given. Without it, the project's
    topic set gates embedding models and the topic demo head only; a classifier with its own
    labels then raises a ``SourceError`` saying how to pass eval_data. A pickled module is
    refused before anything is downloaded unless ``trust_pickle``."""

    from servegate.sources.hf import class_indices, held_out, needs_eval_data, text_eval_data
    from servegate.sources.topics import TOPIC_LABELS, topic_sentences

    if task is not None and task != registered_task:
        raise SourceError(f"{uri} is a registered {registered_task} model; it cannot be imported "
                          f"with task {task!r} (omit the task or pass {registered_task!r})")
    if registered_format is not None:
        check_format({"format": registered_format}, trust_pickle=trust_pickle, what=uri)
    data = text_eval_data(eval_data, label_column=label_column)
    local = download(uri, keep_until_exit("servegate-import-"), what=uri)
    model = load_text_model(local, source_uri=uri, trust_pickle=trust_pickle,
                            registered_format=registered_format)
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
