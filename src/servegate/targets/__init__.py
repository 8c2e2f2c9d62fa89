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
    """The target called ``name``; ``ConfigError`` lists the known ones otherwise, or says what
    a registered one lacks of the ``Target`` protocol."""
    _builtins()
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown target {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    target = factory()
    if not isinstance(target, Target):
        members = [m for m in dir(Target) if not m.startswith("_")] + ["name", "attach_needs"]
        lacks = sorted({m for m in members if not hasattr(target, m)})
        raise ConfigError(f"registered target {name!r} is not a servegate Target: it lacks "
                          f"{', '.join(lacks)}")
    return target


def _builtins() -> None:
    from servegate.targets.tfserving import TFServingTarget
    from servegate.targets.torchserve import TorchServeTarget

    _REGISTRY.setdefault("torchserve", TorchServeTarget)
    _REGISTRY.setdefault("tfserving", TFServingTarget)


__all__ = ["Built", "LoadProfile", "MeasuredTarget", "Target", "get_target", "register_target"]
