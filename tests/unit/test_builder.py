"""One build path (issue 20): ``TorchServeTarget.build`` and the CLI/API/test ``package_model``
both compile and archive through ``packaging.builder.build_archive``, so a run's archive gets the
compile cache and the user's handler, and what the run logs is what the archive carries."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from servegate.config import BatchingConfig, PipelineConfig
from servegate.packaging.mar import MODEL_CONFIG_FILE, read_archive_member

SRC = Path(__file__).resolve().parents[2] / "src" / "servegate"
BUILD_STEPS = {"compile_model", "contents_for", "build_mar"}


def _called_names(function: ast.AST) -> set[str]:
    return {ast.unparse(node.func).rpartition(".")[2] for node in ast.walk(function)
            if isinstance(node, ast.Call)}


def test_only_the_builder_compiles_and_archives() -> None:
    """A second function that compiles and archives a model is a second build path."""
    builds = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and len(_called_names(node) & BUILD_STEPS) >= 2:
                builds.append(f"{path.relative_to(SRC)}:{node.name}")
    assert builds == ["packaging/builder.py:build_archive"]


class _Cache:
    """A compile cache that records when compiling happened inside it."""

    def __init__(self) -> None:
        self.entered = 0

    @contextmanager
    def activate(self) -> Iterator[None]:
        self.entered += 1
        yield

    def fingerprint(self) -> int:
        return self.entered


def test_a_runs_build_uses_its_cache_and_handler_and_logs_what_it_built(
        digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from servegate import tracking
    from servegate.targets.torchserve import TorchServeTarget

    cache, logged, saved = _Cache(), {}, []
    monkeypatch.setattr(tracking, "compile_cache", lambda mode: cache if mode == "shared" else None)
    monkeypatch.setattr(tracking, "save_compile_cache", saved.append)
    monkeypatch.setattr(tracking, "log_build", lambda params, metrics: logged.update(params))
    monkeypatch.setattr(tracking, "log_artifact_file", lambda path, where: f"runs:/r/{where}/{path.name}")
    handler = tmp_path / "my_handler.py"
    handler.write_text("from image_classifier import handle  # noqa: F401\n", encoding="utf-8")
    config = PipelineConfig(model="builtin:digits", compiler="eager", compile_cache="shared",
                            handler=handler, batching=BatchingConfig(batch_size=4, max_batch_delay_ms=3))

    built = TorchServeTarget().build(digits, config, "7", tmp_path / "work", Console(quiet=True))

    manifest = json.loads(read_archive_member(built.path, "MAR-INF/MANIFEST.json"))
    assert manifest["model"]["handler"] == "my_handler.py"
    assert (cache.entered, saved) == (1, [cache])  # compiled inside the cache, which was saved
    written = yaml.safe_load(read_archive_member(built.path, MODEL_CONFIG_FILE))
    assert written["batchSize"] == 4
    assert {k: logged[k] for k in written} == written
    assert (logged["compiler.chosen"], built.uri) == ("eager", f"runs:/r/archive/{built.path.name}")


def test_package_model_builds_the_same_archive_without_mlflow(digits, tmp_path: Path) -> None:
    from servegate.packaging.builder import build_archive, package_model

    archive = package_model(digits, name="digits", version="3", compiler="eager",
                            batching=BatchingConfig(), output_dir=tmp_path / "a")
    built: Any = build_archive(digits, name="digits", version="3", compiler="eager",
                               batching=BatchingConfig(), output_dir=tmp_path / "b")
    assert archive.name == built.archive.name
    assert yaml.safe_load(read_archive_member(archive, MODEL_CONFIG_FILE)) == built.model_config
