"""The built-in digits network. Shipped inside archives as a model file: imports torch only."""

from __future__ import annotations

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """64 pixel intensities (8x8, scaled to [0, 1]) -> 10 class logits."""

    def __init__(self, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
