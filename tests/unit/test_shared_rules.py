"""Rules that servegate (``src/servegate``) and the handlers it ships (``handlers/``) both hold.

The handlers import nothing of servegate (they run inside the archive), so each of these values is
written on both sides: every test here reads both and fails when one side changes alone.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import servegate
from servegate._resources import HANDLERS_PACKAGE, handler_module, handlers_dir
from servegate.artifacts import ModelFormat
from servegate.compilers.driver import worker_threads
from servegate.config import ImagePreprocessing, RequestLimits
from servegate.packaging.spec import SPEC_FILE, TASK_HANDLERS, ArtifactSpec, TextSpec
from servegate.sources.base import TASK_ALIASES, canonical_task

#: Keys of ``servegate.json`` the handlers still read that servegate no longer writes.
LEGACY_SPEC_KEYS = {"input"}  # schema 1: one unnamed input


def test_spec_file_name() -> None:
    assert SPEC_FILE == handler_module("sg_base").SPEC_FILE


def test_request_limits_defaults() -> None:
    assert RequestLimits().model_dump() == handler_module("sg_base").DEFAULT_LIMITS


@pytest.mark.parametrize("cores", [None, 1, 2, 3, 8, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_threads_per_worker(monkeypatch: pytest.MonkeyPatch, cores: int | None, workers: int) -> None:
    """``auto`` measures candidates on the threads each worker will run with."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert worker_threads(workers) == handler_module("sg_loaders").intra_op_threads({}, workers)


def test_every_model_format_has_a_loader() -> None:
    assert set(get_args(ModelFormat)) == set(handler_module("sg_loaders")._LOADERS)


def test_task_handlers_serve_their_tasks() -> None:
    assert {f"{module}.py" for module in TASK_HANDLERS.values()} <= {
        p.name for p in handlers_dir().glob("*.py")}
    tensor_tasks = {t for t, module in TASK_HANDLERS.items() if module == "tensor_handler"}
    assert handler_module("tensor_handler").TASKS == {
        t: canonical_task(t) for t in tensor_tasks | set(TASK_ALIASES)}


def test_text_defaults() -> None:
    sg_text = handler_module("sg_text")
    assert TextSpec().model_dump() == {"tokenizer_file": sg_text.DEFAULT_TOKENIZER_FILE,
                                       "max_length": sg_text.DEFAULT_MAX_LENGTH,
                                       "max_chars": sg_text.DEFAULT_MAX_CHARS}


def test_top_k_default(tmp_path: Path) -> None:
    classifier = handler_module("sg_classification").Classifier.from_spec({}, str(tmp_path))
    assert classifier.top_k == ArtifactSpec.model_fields["top_k"].default


def test_image_geometry_defaults(tmp_path: Path) -> None:
    """An archive without ``image`` is resized and scaled as ``ImagePreprocessing``'s defaults say (the
    handler's default normalisation is the identity, ``ImagePreprocessing``'s is ImageNet's: servegate
    always writes ``image`` for image archives)."""
    pytest.importorskip("PIL")
    handler = handler_module("image_classifier").ImageClassifierHandler()
    handler.configure(str(tmp_path))
    default = ImagePreprocessing()
    assert (handler.size, handler.mode, handler.scale) == (default.size, default.mode, default.scale)


def _keys_read(source: str, variables: set[str]) -> set[str]:
    """String keys read as ``v.get("key")`` or ``v["key"]`` where ``v`` is one of ``variables``
    (a name, or an attribute such as ``self.spec``)."""
    def named(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in variables) or (
            isinstance(node, ast.Attribute) and node.attr in variables)

    keys = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and named(node.func.value) and node.args
                and isinstance(node.args[0], ast.Constant)):
            keys.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and named(node.value) and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
    return keys


def test_handlers_read_only_what_the_spec_holds() -> None:
    """Every key the handlers read from ``servegate.json`` is a field servegate writes."""
    sources = {p.stem: p.read_text(encoding="utf-8") for p in handlers_dir().glob("*.py")}
    spec_keys = set().union(*(_keys_read(s, {"spec"}) for s in sources.values()))
    assert spec_keys and spec_keys <= set(ArtifactSpec.model_fields) | LEGACY_SPEC_KEYS
    assert _keys_read(sources["image_classifier"], {"image"}) == set(ImagePreprocessing.model_fields)
    assert _keys_read(sources["text_handler"], {"text"}) == set(TextSpec.model_fields)


def test_handler_modules_import_by_path_under_private_names() -> None:
    """In a fresh interpreter whose ``sys.path`` lacks ``handlers/``: every handler module imports
    (siblings included) under ``_servegate_handlers.*`` only; ``sys.path`` is left alone, and a
    module already known by a handler's top-level name (a user's, a test's) is left in place."""
    names = sorted(p.stem for p in handlers_dir().glob("*.py") if p.stem != "__init__")
    script = f"""
import importlib.util, sys, types
from servegate._resources import handler_module
assert importlib.util.find_spec("sg_codecs") is None, "handlers/ is on sys.path"
users = sys.modules["sg_errors"] = types.ModuleType("sg_errors")
path, before = list(sys.path), set(sys.modules)
for name in {names!r}:
    handler_module(name)
assert sys.path == path, sys.path
leaked = (set(sys.modules) - before) & set({names!r})
assert not leaked and sys.modules["sg_errors"] is users, leaked
base = handler_module("sg_base")
assert base.sg_loaders is handler_module("sg_loaders") is sys.modules["{HANDLERS_PACKAGE}.sg_loaders"]
assert base.ModelLoadError.__module__ == "{HANDLERS_PACKAGE}.sg_errors"
"""
    src = str(Path(servegate.__file__).resolve().parents[1])
    folder = handlers_dir().resolve()
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != folder]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *kept])}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=src, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
