"""The bench's image model as a user brings it: ``PhotoNet`` trained here on smooth synthetic RGB
photos, saved as a state_dict, imported with its held-out pixels (``.npz``) as an
``image-classification`` model; the gate and the load rows send those pixels as PNG images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from servegate.sources.base import TorchModel

MODEL_FILE = Path(__file__).with_name("photo_net.py")
CLASSES = 3
#: Pixels in [0, 1] with no normalisation (the model was trained on them as they are).
PREPROCESSING = {"mode": "RGB", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def photos(size: int, rows: int, classes: int = CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth RGB images (float32 ``[rows, 3, size, size]`` in [0, 1]) whose class is the dominant
    colour channel, and their labels: photo-like inputs that PNG compresses as it would a photo."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % classes
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    x = np.empty((rows, 3, size, size), np.float32)
    for i in range(rows):
        fx, fy = rng.uniform(0.5, 3.0, 2)
        base = 0.5 + 0.25 * np.sin(fx * np.pi * grid)[None, :] * np.cos(fy * np.pi * grid)[:, None]
        for c in range(3):
            x[i, c] = base * (1.0 if c == y[i] else 0.45) + 0.1 * c
    return np.clip(x, 0.0, 1.0), y


def photo_model(workdir: Path, *, size: int = 32, rows: int = 64, epochs: int = 40) -> TorchModel:
    """``PhotoNet`` trained on ``photos(size)``, imported from its state_dict file with ``rows``
    held-out images (each a PNG, ``model.eval_images``; ``model.eval_x`` the worker's decode)."""
    import torch
    from torch import nn

    from benchmarks.photo_net import PhotoNet
    from servegate.api import load_model

    x_train, y_train = photos(size, rows=96, seed=1)
    x_test, y_test = photos(size, rows=rows, seed=2)
    torch.manual_seed(0)
    module = PhotoNet(CLASSES)
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-2)
    inputs, target = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(epochs):
        optimiser.zero_grad()
        nn.functional.cross_entropy(module(inputs), target).backward()
        optimiser.step()
    workdir.mkdir(parents=True, exist_ok=True)
    weights, held_out = workdir / "photo_net.pt", workdir / "photos.npz"
    torch.save(module.eval().state_dict(), weights)
    np.savez(held_out, x=x_test, y=y_test)
    return load_model(str(weights), task="image-classification", eval_data=str(held_out),
                      model_class=f"{MODEL_FILE}:PhotoNet",
                      image={"size": [size, size], **PREPROCESSING})
