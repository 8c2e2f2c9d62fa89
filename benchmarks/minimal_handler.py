"""A minimal TorchServe handler written the way TorchServe's documentation shows (the baseline).

No batching, no thread setting, no validation: one JSON request in, the logits out.
Runs inside a TorchServe worker; ``digits_net.py`` ships as the archive's model file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch


class MinimalDigitsHandler:
    """initialize / preprocess / inference / postprocess, as in TorchServe's custom-handler docs."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        from digits_net import DigitsMLP  # the archive's model file

        model_dir = context.system_properties.get("model_dir")
        serialized_file = context.manifest["model"]["serializedFile"]
        model = DigitsMLP(hidden=128)
        weights = torch.load(os.path.join(model_dir, serialized_file), map_location="cpu")
        model.load_state_dict(weights)
        self.model = model.eval()
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        body: Any = data[0].get("data") or data[0].get("body")
        if isinstance(body, (bytes, bytearray, str)):  # TorchServe already decodes JSON bodies
            body = json.loads(body)
        return torch.tensor([body["inputs"]], dtype=torch.float32)

    def inference(self, inputs: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        with torch.no_grad():
            return self.model(inputs)

    def postprocess(self, output: torch.Tensor) -> list[Any]:
        return [output.tolist()]

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        return self.postprocess(self.inference(self.preprocess(data)))
