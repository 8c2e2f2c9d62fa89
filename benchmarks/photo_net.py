"""The bench's image model: a small RGB convolutional classifier (torch only: it ships in the
archive as the model file of a state_dict)."""

from __future__ import annotations

import torch
from torch import nn


class PhotoNet(nn.Module):
    """Two strided 3x3 convolutions, global average pooling, a linear head (any input size)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))
