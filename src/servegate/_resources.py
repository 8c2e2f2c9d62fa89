"""Locate the data directories shipped beside the package (handlers, serving configs, locustfiles).

Installed: they are the packages ``servegate_handlers``, ``servegate_serving_configs`` and
``servegate_loadtests``. Run from a checkout with ``PYTHONPATH=src`` (as the MLproject does):
the repository's top-level directories.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(package: str, repo_subdir: str) -> Path:
    if importlib.util.find_spec(package) is not None:
        return Path(str(resources.files(package)))
    candidate = _REPO_ROOT / repo_subdir
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(f"neither package {package} nor {candidate} exists")


def handlers_dir() -> Path:
    return data_dir("servegate_handlers", "handlers")


def serving_configs_dir() -> Path:
    return data_dir("servegate_serving_configs", "serving_configs")


def loadtests_dir() -> Path:
    return data_dir("servegate_loadtests", "loadtests")


def handler_module(name: str):  # -> types.ModuleType
    """A module of ``handlers/`` (e.g. ``sg_loaders``), imported as the worker imports it."""
    import importlib
    import sys

    path = str(handlers_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)
