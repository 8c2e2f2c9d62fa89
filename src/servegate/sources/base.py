"""What every model source yields: a PyTorch module plus what serving and gating need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from servegate.choices import TASK_ALIASES
from servegate.errors import ConfigError, SourceError
from servegate.sources.schema import Batch, Rows, TensorSpec, batch_arrays, batch_rows


def canonical_task(task: str) -> str:
    return TASK_ALIASES.get(task, task)


@dataclass
class TorchModel:
    """A PyTorch model ready to compile, package and gate.

    ``inputs``/``outputs`` describe the module's positional inputs and its outputs per instance
    (from the MLflow signature, the ExportedProgram or the evaluation data; ``input_shape`` alone
    means one float32 input). ``program`` is set when the source already is a
    ``torch.export.ExportedProgram``: compilers start from it instead of exporting again.
    ``model_file``/``model_class`` are set when the module's class lives in a self-contained file
    that can ship inside an archive (state_dict format); otherwise the model is exported.
    ``eval_x``/``eval_y`` are the held-out set the gates use: an array (one input, or strings for
    a text model), or ``Rows`` for several inputs; ``eval_y`` is None when there are no labels.
    ``eval_note`` says where they came from, and loudly when it is only the input example.

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
    task: str = "classification"
    model_file: Path | None = None
    model_class: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_x: Batch | None = None
    eval_y: np.ndarray | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    source_uri: str = ""
    tokenizer_file: Path | None = None
    max_length: int | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    program: Any = None  # torch.export.ExportedProgram, when the source is one
    eval_note: str = ""
    #: Image models: preprocessing recorded in the archive (size, mode, scale, mean, std).
    image: dict[str, Any] = field(default_factory=dict)
    #: The largest batch the artifact may be compiled for (None: the serving maximum).
    max_batch: int | None = None
    #: Image models: ``eval_x``'s rows as encoded images (what the gate sends); ``eval_x`` is
    #: what the worker's preprocessing makes of them.
    eval_images: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        self.task = canonical_task(self.task)
        if not self.inputs and not self.is_text:
            self.inputs = (TensorSpec("input", tuple(self.input_shape), "float32"),)
        elif self.inputs and not self.input_shape:
            self.input_shape = tuple(self.inputs[0].shape)

    @property
    def is_text(self) -> bool:
        return self.tokenizer_file is not None

    def example_batch(self, rows: int = 2) -> Batch:
        """A few real rows (held-out data when known) for warm-up, load samples and parity:
        feature rows (``Rows`` for several inputs), or strings for a text model."""
        if self.is_text:
            if self.eval_x is None or not len(self.eval_x):
                raise SourceError("a text model needs held-out sentences (eval_x)")
            return np.resize(np.asarray(self.eval_x, dtype=str), rows)
        if self.eval_x is not None and len(self.eval_x):
            return self.eval_x[:rows]
        rng = np.random.default_rng(0)
        arrays = tuple(_random_input(rng, spec, rows) for spec in self.inputs)
        return arrays[0] if len(arrays) == 1 else Rows(arrays, tuple(s.name for s in self.inputs))

    # ---- model inputs --------------------------------------------------------------------------
    def model_inputs(self, rows: Batch) -> tuple[np.ndarray, ...]:
        """Rows (as requests carry them) -> the module's positional inputs, as numpy arrays."""
        if self.is_text:
            return self.text_encoder().encode([str(t) for t in np.asarray(rows).reshape(-1)])
        arrays = batch_arrays(rows)
        return tuple(np.ascontiguousarray(a, dtype=spec.dtype)
                     for a, spec in zip(arrays, self.inputs, strict=True))

    def example_inputs(self, rows: int = 2) -> tuple[np.ndarray, ...]:
        """Real module inputs for export and tracing (feature rows, or token ids + mask)."""
        return self.model_inputs(self.example_batch(rows))

    def inputs_at(self, batch: int, tokens: int | None = None) -> tuple[np.ndarray, ...]:
        """Module inputs of exactly ``batch`` rows (held-out rows, repeated as needed) and, for a
        text model, exactly ``tokens`` tokens per row: real held-out text, [CLS] ... [SEP], no
        padding. This is what compilers are timed on at each shape."""
        if not self.is_text:
            available = len(self.eval_x) if self.eval_x is not None else 1
            return self.model_inputs(batch_rows(self.example_batch(max(1, available)), batch))
        sentences = [str(t) for t in np.asarray(self.eval_x).reshape(-1)]
        limit = int(self.max_length or 128)
        tokens = limit if tokens is None else tokens
        if not 2 <= tokens <= limit:
            raise ConfigError(f"tokens must be in [2, {limit}] (max_length), got {tokens}")
        # Each row joins every sentence (rolled), repeated until it is long enough to truncate.
        repeat = 1 + tokens // max(1, sum(len(s.split()) for s in sentences))
        texts = [" ".join(np.tile(np.roll(sentences, -i), repeat)) for i in range(batch)]
        ids, mask = self.text_encoder().encode(texts)  # truncated at max_length, ends in [SEP]
        if int(mask.sum(1).min()) < tokens:
            raise SourceError(f"the held-out text is shorter than {tokens} tokens")
        sep = ids[0, int(mask[0].sum()) - 1]
        ids = np.ascontiguousarray(ids[:, :tokens])
        ids[:, -1] = sep
        return ids, np.ones_like(ids)

    def dynamic_shapes(self, max_batch: int) -> tuple[dict[int, Any], ...]:
        """torch.export ``dynamic_shapes`` of ``example_inputs``: the batch dimension (shared by
        every input), dimensions of any size (``-1``), and for text the sequence dimension."""
        import torch

        batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
        if not self.is_text:
            shapes = []
            for spec in self.inputs:
                dims: dict[int, Any] = {0: batch}
                dims |= {i + 1: torch.export.Dim.AUTO for i, d in enumerate(spec.shape) if d == -1}
                shapes.append(dims)
            return tuple(shapes)
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
    def forward_all(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every output of the eager module on numpy inputs (a dict's values in order)."""
        import torch

        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
        if isinstance(out, dict):
            out = tuple(out.values())
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return tuple(o.detach().float().numpy() if o.is_floating_point() else o.detach().numpy()
                     for o in out)

    def forward(self, *inputs: np.ndarray) -> np.ndarray:
        """The eager module's first output on numpy inputs."""
        return self.forward_all(*inputs)[0]

    def reference(self, x: Batch) -> np.ndarray:
        """The in-process first output of the eager model (the reference of parity checks)."""
        return self.forward(*self.model_inputs(x))

    def reference_outputs(self, x: Batch) -> tuple[np.ndarray, ...]:
        """Every in-process output of the eager model on rows ``x``."""
        return self.forward_all(*self.model_inputs(x))

    @property
    def sends_images(self) -> bool:
        """An image model with its preprocessing recorded: requests carry encoded images."""
        return self.task == "image-classification" and bool(self.image)

    def request_rows(self, x: Batch) -> list[Any]:
        """Rows as JSON request instances: lists, dicts of named inputs, strings (text), or
        ``{"b64": ...}`` images (the held-out images themselves for ``eval_x``, else the rows
        encoded as lossless PNG)."""
        if self.is_text:
            return [str(t) for t in np.asarray(x).reshape(-1)]
        if self.sends_images:
            import base64

            from servegate.sources.images import encode_png

            images = (self.eval_images if self.eval_images is not None and x is self.eval_x
                      else encode_png(np.asarray(x), self.image))
            return [{"b64": base64.b64encode(data).decode("ascii")} for data in images]
        return x.tolist()


def _random_input(rng: np.random.Generator, spec: TensorSpec, rows: int) -> np.ndarray:
    shape = (rows, *(1 if d == -1 else d for d in spec.shape))
    kind = np.dtype(spec.dtype).kind
    if kind == "b":
        return rng.random(shape) < 0.5
    if kind in "iu":
        return rng.integers(0, 2, shape).astype(spec.dtype)
    return rng.standard_normal(shape).astype(spec.dtype)
