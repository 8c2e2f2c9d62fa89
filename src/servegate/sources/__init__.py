"""Where models come from: built-in trainers and importers."""

from __future__ import annotations

from servegate.errors import SourceError
from servegate.sources.base import TorchModel

BUILTINS = ("builtin:digits",)


def load_torch_model(uri: str) -> TorchModel:
    """Resolve a model URI (``builtin:digits`` for now) into a ``TorchModel``."""
    if uri == "builtin:digits":
        from servegate.sources.digits import builtin_digits

        return builtin_digits()
    raise SourceError(f"unknown model source {uri!r}; known: {', '.join(BUILTINS)}")


__all__ = ["TorchModel", "load_torch_model"]
