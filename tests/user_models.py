"""Models the project does not ship, as a user would train and log them (for the tests).

Each trains in a second or two on data that ships with scikit-learn, deterministically, and
comes with its own held-out split: a 13-feature wine classifier, a 10-feature diabetes
regressor, a small conv net on 1x8x8 digit images, and a model with two inputs (float features
and int64 category ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


class WineNet(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiabetesRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


class TwoInputNet(nn.Module):
    """Wine features plus a category id (an embedding), -> 3 classes."""

    def __init__(self, categories: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(categories, 4)
        self.net = nn.Sequential(nn.Linear(13 + 4, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, features: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, self.embed(category)], dim=1))


@dataclass
class Trained:
    module: nn.Module
    x_test: Any  # an array, or a dict of arrays for several inputs
    y_test: np.ndarray
    x_train: Any


def _split(x: np.ndarray, y: np.ndarray, seed: int = 0):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=0.3, random_state=seed)


def _fit(module: nn.Module, inputs: tuple[torch.Tensor, ...], target: torch.Tensor, loss_fn: Any,
         epochs: int = 150, lr: float = 1e-2) -> nn.Module:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss_fn(module(*inputs), target).backward()
        optimiser.step()
    return module.eval()


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def wine_classifier(epochs: int = 150) -> Trained:
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    x_tr, x_te, y_tr, y_te = _split(x, y)
    x_tr, x_te = _standardise(x_tr, x_te)
    torch.manual_seed(0)
    module = _fit(WineNet(), (torch.from_numpy(x_tr),), torch.from_numpy(y_tr), nn.functional.cross_entropy,
                  epochs=epochs)
    return Trained(module, x_te, y_te.astype(np.int64), x_tr)


def diabetes_regressor(epochs: int = 300) -> Trained:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x_tr, x_te, y_tr, y_te = _split(x, y)
    x_tr, x_te = _standardise(x_tr, x_te)
    scale = float(y_tr.std())
    torch.manual_seed(0)
    target = torch.from_numpy((y_tr / scale).astype(np.float32)).unsqueeze(1)
    module = _fit(DiabetesRegressor(), (torch.from_numpy(x_tr),), target, nn.functional.mse_loss,
                  epochs=epochs)
    return Trained(module, x_te, (y_te / scale).astype(np.float32), x_tr)


def digit_images_convnet(epochs: int = 60) -> Trained:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = _split(x, y)
    torch.manual_seed(0)
    module = _fit(TinyConvNet(), (torch.from_numpy(x_tr),), torch.from_numpy(y_tr),
                  nn.functional.cross_entropy, epochs=epochs)
    return Trained(module, x_te, y_te.astype(np.int64), x_tr)


def two_input_classifier(epochs: int = 150) -> Trained:
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    rng = np.random.default_rng(0)
    category = rng.integers(0, 4, len(x)).astype(np.int64)
    index = np.arange(len(x))
    i_tr, i_te = _split(index, y)[:2]
    f_tr, f_te = _standardise(x[i_tr], x[i_te])
    torch.manual_seed(0)
    module = _fit(TwoInputNet(), (torch.from_numpy(f_tr), torch.from_numpy(category[i_tr])),
                  torch.from_numpy(y[i_tr]), nn.functional.cross_entropy, epochs=epochs)
    return Trained(module, {"features": f_te, "category": category[i_te]}, y[i_te].astype(np.int64),
                   {"features": f_tr, "category": category[i_tr]})


class PhotoNet(nn.Module):
    """A small RGB convolutional classifier for ``size`` x ``size`` images (any size: it pools)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def photos(size: int, rows: int = 24, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth RGB images (float32 ``[rows, 3, size, size]`` pixels in [0, 1]) whose class is the
    dominant colour channel, and their labels; a photo-like input that PNG compresses well."""
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


def photo_classifier(size: int, classes: int = 3, epochs: int = 40) -> Trained:
    """``PhotoNet`` trained a little on ``photos(size)`` (pixels in [0, 1], no normalisation)."""
    x_train, y_train = photos(size, rows=48, classes=classes, seed=1)
    x_test, y_test = photos(size, rows=24, classes=classes, seed=2)
    torch.manual_seed(0)
    module = PhotoNet(classes)
    _fit(module, (torch.from_numpy(x_train),), torch.from_numpy(y_train), nn.CrossEntropyLoss(),
         epochs)
    return Trained(module.eval(), x_test, y_test, x_train)


def shuffled(module: nn.Module) -> nn.Module:
    """A worse model of the same kind: the last layer's output rows rolled by one."""
    import copy

    worse = copy.deepcopy(module)
    last = [m for m in worse.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        perm = torch.roll(torch.arange(last.out_features), 1)
        if last.out_features > 1:
            last.weight.copy_(last.weight[perm])
            last.bias.copy_(last.bias[perm])
        else:
            last.weight.mul_(-1.0)
    return worse.eval()


def log_pytorch(module: nn.Module, example: Any, name: str, **kwargs: Any) -> str:
    """``mlflow.pytorch.log_model`` with MLflow 3's defaults (an ExportedProgram), a signature
    and an input example; registered as ``name``; returns the version."""
    import mlflow
    from mlflow.models import infer_signature

    if isinstance(example, dict):
        with torch.no_grad():
            output = module(*(torch.from_numpy(v) for v in example.values())).numpy()
        signature = infer_signature(example, output)
        example_arg: Any = tuple(example.values())
    else:
        with torch.no_grad():
            output = module(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        example_arg = example
    # Requirements written out, as many users do: MLflow's inference would load the model again
    # in a subprocess (~5 s a model), and nothing servegate reads depends on them.
    kwargs.setdefault("pip_requirements", ["torch"])
    with mlflow.start_run(nested=mlflow.active_run() is not None):
        info = mlflow.pytorch.log_model(module, name="model", input_example=example_arg,
                                        signature=signature, registered_model_name=name, **kwargs)
    return str(info.registered_model_version)
