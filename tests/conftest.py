"""Shared fixtures: the built-in model (trained once) and archive building."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from servegate.config import BatchingConfig


@pytest.fixture(scope="session")
def digits():
    """The built-in digits model, trained once per test session (a few seconds)."""
    from servegate.sources.digits import builtin_digits

    return builtin_digits(epochs=10)


@pytest.fixture(scope="session")
def build_archive(tmp_path_factory: pytest.TempPathFactory, digits) -> Callable[..., Path]:
    """Build a .mar of the digits model: ``build_archive(version="1", compiler="eager", ...)``."""
    from servegate.packaging.builder import package_model

    def build(version: str = "1", *, name: str = "digits", compiler: str = "eager",
              batching: BatchingConfig | None = None, model=None, store: Path | None = None) -> Path:
        output = store or tmp_path_factory.mktemp("store")
        return package_model(model or digits, name=name, version=version, compiler=compiler,
                             batching=batching or BatchingConfig(), output_dir=output)

    return build
