"""Sentence-embedding and text-classification networks. Shipped inside archives as a model file:
imports torch only.

``BertEncoder`` is a small self-contained BERT encoder whose parameter names follow Hugging Face's
``BertModel`` (``embeddings.*``, ``encoder.layer.N.*``), so a ``model.safetensors`` of a BERT
checkpoint (all-MiniLM-L6-v2) loads into it without ``transformers``. ``SentenceEmbedding`` wraps
any encoder (this one or a ``transformers`` model) with mean pooling over the attention mask and
L2 normalisation, INSIDE the module, so every exported artifact returns finished embeddings.
``TextClassifier`` adds a linear head on those embeddings. ``BertSequenceClassifier`` is a user's
own fine-tuned BERT classifier (Hugging Face's ``BertForSequenceClassification``: encoder, pooler
``tanh(dense([CLS]))``, ``classifier`` linear), parameter names as in its checkpoint (``bert.*``,
``bert.pooler.*``, ``classifier.*``). ``SequenceClassifierLogits`` wraps any ``transformers``
sequence-classification model to return its logits tensor.

Inputs everywhere: ``input_ids`` and ``attention_mask``, int64, ``[batch, sequence]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _AttentionOutput(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815 (checkpoint name)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden, heads)
        self.output = _AttentionOutput(hidden, eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        heads = self.self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, heads, hidden // heads).transpose(1, 2)

        q, k, v = (split(layer(x)) for layer in (self.self.query, self.self.key, self.self.value))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        context = context.transpose(1, 2).reshape(batch, seq, hidden)
        return self.output.LayerNorm(self.output.dense(context) + x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)


class _Output(nn.Module):
    def __init__(self, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, eps)
        self.intermediate = _Intermediate(hidden, intermediate)
        self.output = _Output(hidden, intermediate, eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, keep)
        h = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(h) + x)


class _Embeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_positions: int, type_vocab_size: int,
                 eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings.weight[0])
        return self.LayerNorm(x)


class _Stack(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(hidden, heads, intermediate, eps) for _ in range(layers))


class BertEncoder(nn.Module):
    """BERT (absolute positions, GELU, post-LayerNorm): ``[batch, seq]`` ids -> hidden states."""

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 384, num_hidden_layers: int = 6,
                 num_attention_heads: int = 12, intermediate_size: int = 1536,
                 max_position_embeddings: int = 512, type_vocab_size: int = 2,
                 layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of "
                             f"{num_attention_heads} heads")
        self.embeddings = _Embeddings(vocab_size, hidden_size, max_position_embeddings,
                                      type_vocab_size, layer_norm_eps)
        self.encoder = _Stack(num_hidden_layers, hidden_size, num_attention_heads,
                              intermediate_size, layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask[:, None, None, :].to(torch.bool)  # [batch, 1, 1, seq]: key padding
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x


#: The keys of a Hugging Face BERT ``config.json`` that ``BertEncoder`` takes.
BERT_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size",
                    "layer_norm_eps")


def mean_pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over real tokens, then L2 normalisation (sentence-transformers),
    computed in float32 whatever the model's precision and given back in it: in float16 the
    ``1e-9`` floor of the token count and normalize's ``1e-12`` are 0 (a row without real tokens
    would be NaN), and a sum over many tokens overflows at 65504."""
    weights = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return F.normalize(summed / counts, p=2.0, dim=1).to(hidden.dtype)


class SentenceEmbedding(nn.Module):
    """``(input_ids, attention_mask)`` -> L2-normalised mean-pooled embeddings ``[batch, hidden]``.

    ``encoder`` may be any module whose output is the hidden states or has them first
    (a ``transformers`` model); without it a ``BertEncoder(**bert_config)`` is built.
    """

    def __init__(self, encoder: nn.Module | None = None, **bert_config: Any) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else BertEncoder(**bert_config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, BertEncoder):
            hidden = self.encoder(input_ids, attention_mask)
        else:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return mean_pool_normalize(hidden, attention_mask)


class TextClassifier(nn.Module):
    """A linear head on sentence embeddings: ``(input_ids, attention_mask)`` -> class logits."""

    def __init__(self, classes: int = 2, embedding: SentenceEmbedding | None = None,
                 hidden_size: int = 384, **bert_config: Any) -> None:
        super().__init__()
        self.embedding = embedding if embedding is not None else SentenceEmbedding(
            hidden_size=hidden_size, **bert_config)
        self.head = nn.Linear(hidden_size, classes)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden_size))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(input_ids, attention_mask))


class _Pooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class BertWithPooler(BertEncoder):
    """``BertEncoder`` plus BERT's pooler (``pooler.dense``); forward still gives hidden states."""

    def __init__(self, **bert_config: Any) -> None:
        super().__init__(**bert_config)
        self.pooler = _Pooler(self.embeddings.word_embeddings.embedding_dim)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler.dense(hidden[:, 0]))


class BertSequenceClassifier(nn.Module):
    """``BertForSequenceClassification`` (single-label): ``(input_ids, attention_mask)`` -> logits
    ``[batch, classes]`` (dropout is the identity at inference)."""

    def __init__(self, classes: int = 2, **bert_config: Any) -> None:
        super().__init__()
        self.bert = BertWithPooler(**bert_config)
        self.classifier = nn.Linear(self.bert.embeddings.word_embeddings.embedding_dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bert.pool(self.bert(input_ids, attention_mask)))


class SequenceClassifierLogits(nn.Module):
    """A ``transformers`` ``...ForSequenceClassification`` model returning its logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
