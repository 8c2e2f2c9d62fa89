"""Serving targets, registered by name (as compilers are): ``get_target("torchserve")``."""

from __future__ import annotations

from collections.abc import Callable

from servegate.errors import ConfigError
from servegate.targets.base import Built, LoadProfile, MeasuredTarget, Target

_REGISTRY: dict[str, Callable[[], Target]] = {}


def register_target(name: str, factory: Callable[[], Target]) -> None:
    """Make ``factory`` the target called ``name`` (a plugin's entry point calls this)."""
    _REGISTRY[name] = factory


def get_target(name: str) -> Target:
    """The target called ``name``; ``ConfigError`` lists the known ones otherwise."""
    _builtins()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def _builtins() -> None:
    from servegate.targets.tfserving import TFServingTarget
    from servegate.targets.torchserve import TorchServeTarget

    _REGISTRY.setdefault("torchserve", TorchServeTarget)
    _REGISTRY.setdefault("tfserving", TFServingTarget)


__all__ = ["Built", "LoadProfile", "MeasuredTarget", "Target", "get_target", "register_target"]
