"""Locate the data directories shipped beside the package (handlers, serving configs, locustfiles).

Installed: they are the packages ``servegate_handlers``, ``servegate_serving_configs`` and
``servegate_loadtests``. Run from a checkout (``src/`` layout: an editable install, or
``PYTHONPATH=src`` as the MLproject does): that checkout's top-level directories, even when
another checkout or installation provides the packages.

The handlers' modules are imported in this process from their files, under private names
(``_servegate_handlers.<name>``, see ``handler_module``): the handlers folder never joins
``sys.path``, so its modules neither shadow the user's nor are shadowed by them.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from types import ModuleType

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(package: str, repo_subdir: str) -> Path:
    """``repo_subdir`` of the checkout this module runs from, else the installed ``package``."""
    candidate = _REPO_ROOT / repo_subdir
    from_checkout = Path(__file__).resolve().parent.parent.name == "src"
    if from_checkout and candidate.is_dir():
        return candidate
    if importlib.util.find_spec(package) is not None:
        return Path(str(resources.files(package)))
    raise FileNotFoundError(f"neither package {package} nor {candidate} exists")


def handlers_dir() -> Path:
    return data_dir("servegate_handlers", "handlers")


def serving_configs_dir() -> Path:
    return data_dir("servegate_serving_configs", "serving_configs")


def loadtests_dir() -> Path:
    return data_dir("servegate_loadtests", "loadtests")


#: The package the handlers' modules are imported under in this process.
HANDLERS_PACKAGE = "_servegate_handlers"
_IMPORT_LOCK = threading.Lock()


def handler_module(name: str) -> ModuleType:
    """The module ``handlers/<name>.py`` (e.g. ``sg_loaders``), imported once from its file as
    ``_servegate_handlers.<name>``.

    In a TorchServe worker the archive puts the handlers side by side on ``sys.path`` and they
    import each other by top-level name (``from sg_errors import ...``). Here the siblings a module
    imports at its top are imported first, the same way, and are visible under their top-level
    names only while that module runs; whatever held those names before is put back after."""
    with _IMPORT_LOCK:
        return _import_handler(name, handlers_dir(), ())


def _import_handler(name: str, directory: Path, importing: tuple[str, ...]) -> ModuleType:
    qualified = f"{HANDLERS_PACKAGE}.{name}"
    if (loaded := sys.modules.get(qualified)) is not None:
        return loaded
    path = directory / f"{name}.py"
    if not path.is_file():
        raise ModuleNotFoundError(f"no handler module {name!r} in {directory}", name=qualified)
    if name in importing:
        raise ImportError(f"handler modules import each other in a cycle: {' -> '.join(importing)} "
                          f"-> {name}", name=qualified)
    siblings = {sibling: _import_handler(sibling, directory, (*importing, name))
                for sibling in _sibling_imports(path, directory)}
    spec = importlib.util.spec_from_file_location(qualified, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up while it runs
    try:
        with _visible_as_top_level(siblings):
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[qualified]
        raise
    return module


def _sibling_imports(path: Path, directory: Path) -> list[str]:
    """The handlers' modules that ``path`` imports (by top-level name) at its top level."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in tree.body
              if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module]
    return [n for n in dict.fromkeys(names) if (directory / f"{n}.py").is_file()]


@contextmanager
def _visible_as_top_level(modules: dict[str, ModuleType]) -> Iterator[None]:
    """``modules`` in ``sys.modules`` under their keys for the block; what was there before after."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
