"""What every model source yields: a PyTorch module plus what serving and gating need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from servegate.errors import ConfigError, SourceError


@dataclass
class TorchModel:
    """A PyTorch model ready to compile, package and gate.

    ``model_file``/``model_class`` are set when the module's class lives in a self-contained file
    that can ship inside an archive (state_dict format); otherwise the model is exported.
    ``eval_x``/``eval_y`` are the held-out set the gates use.

    Text models (``task`` ``embedding`` or ``text-classification``) set ``tokenizer_file`` (a
    Hugging Face ``tokenizer.json``, shipped in the archive) and ``max_length`` (truncation, in
    tokens). Their rows (``eval_x``, ``example_batch``) are strings, as requests carry them; their
    module takes ``(input_ids, attention_mask)``, int64 ``[batch, sequence]``, which
    ``model_inputs`` makes from rows exactly as the worker does (dynamic padding to the longest).
    ``input_shape`` is ``()`` for them.
    """

    module: Any  # torch.nn.Module (torch is imported lazily)
    input_shape: tuple[int, ...]
    labels: list[str]
    task: str = "tensor-classification"
    model_file: Path | None = None
    model_class: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_x: np.ndarray | None = None
    eval_y: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    source_uri: str = ""
    tokenizer_file: Path | None = None
    max_length: int | None = None

    @property
    def is_text(self) -> bool:
        return self.tokenizer_file is not None

    def example_batch(self, rows: int = 2) -> np.ndarray:
        """A few real rows (held-out data when known) for warm-up, load samples and parity:
        float32 feature rows, or strings for a text model."""
        if self.is_text:
            if self.eval_x is None or not len(self.eval_x):
                raise SourceError("a text model needs held-out sentences (eval_x)")
            return np.resize(np.asarray(self.eval_x, dtype=str), rows)
        if self.eval_x is not None and len(self.eval_x):
            return np.ascontiguousarray(self.eval_x[:rows]).astype(np.float32)
        rng = np.random.default_rng(0)
        return rng.standard_normal((rows, *self.input_shape)).astype(np.float32)

    # ---- model inputs --------------------------------------------------------------------------
    def model_inputs(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Rows (as requests carry them) -> the module's positional inputs, as numpy arrays."""
        if self.is_text:
            return self.text_encoder().encode([str(t) for t in np.asarray(rows).reshape(-1)])
        return (np.ascontiguousarray(rows),)

    def example_inputs(self, rows: int = 2) -> tuple[np.ndarray, ...]:
        """Real module inputs for export and tracing (float32 rows, or token ids + mask)."""
        if self.is_text:
            return self.model_inputs(self.example_batch(rows))
        return (self.example_batch(rows),)

    def inputs_at(self, batch: int, tokens: int | None = None) -> tuple[np.ndarray, ...]:
        """Module inputs of exactly ``batch`` rows (held-out rows, repeated as needed) and, for a
        text model, exactly ``tokens`` tokens per row: real held-out text, [CLS] ... [SEP], no
        padding. This is what compilers are timed on at each shape."""
        if not self.is_text:
            rows = self.example_batch(max(1, len(self.eval_x) if self.eval_x is not None else 1))
            return (np.ascontiguousarray(np.resize(rows, (batch, *rows.shape[1:]))),)
        sentences = [str(t) for t in np.asarray(self.eval_x).reshape(-1)]
        limit = int(self.max_length or 128)
        tokens = limit if tokens is None else tokens
        if not 2 <= tokens <= limit:
            raise ConfigError(f"tokens must be in [2, {limit}] (max_length), got {tokens}")
        texts = [" ".join(np.roll(sentences, -i)) for i in range(batch)]
        ids, mask = self.text_encoder().encode(texts)  # truncated at max_length, ends in [SEP]
        if int(mask.sum(1).min()) < tokens:
            raise SourceError(f"the held-out text is shorter than {tokens} tokens")
        sep = ids[0, int(mask[0].sum()) - 1]
        ids = np.ascontiguousarray(ids[:, :tokens])
        ids[:, -1] = sep
        return ids, np.ones_like(ids)

    def dynamic_shapes(self, max_batch: int) -> tuple[dict[int, Any], ...]:
        """torch.export ``dynamic_shapes`` of ``example_inputs``: the batch dimension, and for
        text the sequence dimension too (from 2 tokens, [CLS] [SEP], to ``max_length``)."""
        import torch

        batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
        if not self.is_text:
            return ({0: batch},)
        seq = torch.export.Dim("sequence", min=2, max=max(3, int(self.max_length or 512)))
        return ({0: batch, 1: seq}, {0: batch, 1: seq})

    def text_encoder(self):  # -> sg_text.TextEncoder (the handlers' own tokenisation)
        """The worker's tokenisation (``handlers/sg_text.py``), so references match serving."""
        if self.tokenizer_file is None:
            raise SourceError("not a text model: no tokenizer_file")
        cached = getattr(self, "_text_encoder", None)
        if cached is None:
            from servegate._resources import handler_module

            cached = handler_module("sg_text").TextEncoder(
                str(self.tokenizer_file), max_length=int(self.max_length or 128))
            self._text_encoder = cached
        return cached

    # ---- reference -----------------------------------------------------------------------------
    def forward(self, *inputs: np.ndarray) -> np.ndarray:
        """The eager module on numpy inputs."""
        import torch

        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.numpy()

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The in-process output of the eager model (the reference for every parity check)."""
        return self.forward(*self.model_inputs(x))
