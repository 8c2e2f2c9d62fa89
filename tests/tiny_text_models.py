"""A user's own fine-tuned text classifier, as ``save_pretrained`` writes it: a tiny random-init
``BertForSequenceClassification`` (transformers) with MiniLM's tokenizer, and held-out texts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

SENTIMENT = ["negative", "neutral", "positive"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
TEXTS = [
    "I loved every minute of this film.", "The service was slow and the food was cold.",
    "The parcel arrived on Tuesday.", "What a fantastic, friendly team!",
    "This is the worst phone I have ever owned.", "The meeting is at three o'clock.",
    "Absolutely brilliant, I would buy it again.", "The screen cracked after a week.",
    "The report has twelve pages.", "Great value and quick delivery.",
    "I am very disappointed with the support I received from the shop.", "It is a blue car.",
]


def save_tiny_bert_classifier(folder: Path, *, seed: int = 0, labels: list[str] = SENTIMENT) -> Path:
    """``folder`` with config.json (BertForSequenceClassification, id2label), model.safetensors and
    the packaged MiniLM tokenizer files (vocabulary 30522)."""
    import torch
    import transformers

    from servegate.sources.hf import packaged_minilm_dir

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    source = packaged_minilm_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    return folder


def transformers_logits(folder: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch
    import transformers

    model = transformers.BertForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def write_eval_texts(path: Path, labels: list, texts: list[str] = TEXTS) -> Path:
    """``texts`` and ``labels`` (cycled) as .csv or .jsonl with ``text`` and ``label`` columns."""
    import pandas as pd

    frame = pd.DataFrame({"text": texts, "label": [labels[i % len(labels)] for i in range(len(texts))]})
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path
