"""``builtin:digits``: a small PyTorch network trained on sklearn's digits in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servegate.sources.base import TorchModel

DIGIT_LABELS = [str(i) for i in range(10)]
MODEL_FILE = Path(__file__).with_name("digits_net.py")
MODEL_CLASS = "digits_net.DigitsMLP"


@dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    """sklearn's digits, scaled to [0, 1], with a fixed stratified held-out split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return DigitsData(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64))


def train_digits(data: DigitsData, *, epochs: int = 30, hidden: int = 128, lr: float = 3e-3,
                 seed: int = 0):  # -> DigitsMLP (torch imported lazily)
    """Train ``DigitsMLP`` with Adam; deterministic for a given seed."""
    import torch

    from servegate.sources.digits_net import DigitsMLP

    torch.manual_seed(seed)
    model = DigitsMLP(hidden=hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
    return model.eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=-1) == labels).mean())


def builtin_digits(*, epochs: int = 30, seed: int = 0) -> TorchModel:
    """Train the built-in model and return it with its held-out set and accuracy."""
    data = load_digits_split(seed=seed)
    module = train_digits(data, epochs=epochs, seed=seed)
    model = TorchModel(
        module=module,
        input_shape=(64,),
        labels=DIGIT_LABELS,
        model_file=MODEL_FILE,
        model_class=MODEL_CLASS,
        model_kwargs={"hidden": 128},
        eval_x=data.x_test,
        eval_y=data.y_test,
        params={"epochs": epochs, "seed": seed, "hidden": 128, "dataset": "sklearn.digits"},
        source_uri="builtin:digits",
    )
    model.metrics["accuracy"] = accuracy(model.reference(data.x_test), data.y_test)
    return model
