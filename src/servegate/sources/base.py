"""What every model source yields: a PyTorch module plus what serving and gating need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TorchModel:
    """A PyTorch model ready to compile, package and gate.

    ``model_file``/``model_class`` are set when the module's class lives in a self-contained file
    that can ship inside an archive (state_dict format); otherwise the model is exported.
    ``eval_x``/``eval_y`` are the held-out set the gates use.
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

    def example_batch(self, rows: int = 2) -> np.ndarray:
        """A few real rows (held-out data when known) for export, warm-up and parity."""
        if self.eval_x is not None and len(self.eval_x):
            return np.ascontiguousarray(self.eval_x[:rows]).astype(np.float32)
        rng = np.random.default_rng(0)
        return rng.standard_normal((rows, *self.input_shape)).astype(np.float32)

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The in-process output of the eager model (the reference for every parity check)."""
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
