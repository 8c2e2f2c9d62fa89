"""The layers hold (issue 20): every import in src/servegate (at module level or inside a function)
points down this list, or sideways where named; no import cycle; MLflow is spoken only at its
boundary; settings are read from the environment only in config.py.

    cli, api, testing, deployments (the MLflow plugin)
    pipeline, steps, reconcile
    targets, tracking, promotion, kserve, tuning
    compilers, packaging, backends, gates      (packaging may use compilers; anything may type
                                                against backends.base, the server protocol)
    sources
    leaf modules (errors, config, naming, registry, lease, policy, redact, ...)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "servegate"
LEVELS = {
    "cli": 5, "api": 5, "testing": 5, "deployments": 5,
    "pipeline": 4, "steps": 4, "reconcile": 4,
    "targets": 3, "tracking": 3, "promotion": 3, "kserve": 3, "tuning": 3, "image": 3,
    "compilers": 2, "packaging": 2, "backends": 2, "gates": 2,
    "sources": 1,
}
#: Imports across one level that are part of the design.
SIDEWAYS = {("packaging", "compilers")}
#: Modules any layer may type against.
INTERFACES = {"servegate.backends.base"}
#: Where MLflow is spoken: writes (tracking), aliases and tags (registry, lease), artifact reads
#: (artifact_access), model imports (sources), and MLflow's deployments plugin (deployments).
MLFLOW_BOUNDARY = ("tracking.py", "registry.py", "lease.py", "artifact_access.py", "sources/",
                   "deployments.py")
#: Settings are read here only; dispatch.py runs on a bare Python before servegate is installed.
ENV_READERS = ("config.py", "dispatch.py")
#: Where the environment is changed, for a library that takes its settings from it (torch's
#: compile caches, MLflow's pickle switch, TensorFlow's and MLflow's noise).
ENV_WRITERS = ("compilers/cache.py", "sources/imports.py", "runlog.py")
#: Where a child process's environment is built from this one's.
ENV_COPIERS = ("backends/_process.py",)


def _modules() -> Iterator[tuple[str, Path, ast.AST]]:
    for path in sorted(SRC.rglob("*.py")):
        if "tfserving_protos" in path.parts and path.name.endswith("_pb2.py"):
            continue
        name = ".".join(("servegate", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text(encoding="utf-8"))


def _imports(name: str, tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("servegate")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("servegate"):
            if node.module == "servegate":  # from servegate import tracking
                found |= {f"servegate.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "servegate"


def _level(module: str) -> int:
    return LEVELS.get(_component(module), 0)


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name, tree) for name, _, tree in _modules()}


def test_every_import_points_down_or_sideways_where_named() -> None:
    upward = []
    for module, imported in _graph().items():
        for target in imported:
            if target in INTERFACES or _component(target) == _component(module):
                continue
            if _level(target) > _level(module) or (
                    _level(target) == _level(module) and _level(module) in (1, 2)
                    and (_component(module), _component(target)) not in SIDEWAYS):
                upward.append(f"{module} -> {target}")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles_between_components() -> None:
    edges: dict[str, set[str]] = {}
    for module, imported in _graph().items():
        if _level(module) == 0:  # a leaf module is its own component
            source = module
        else:
            source = _component(module)
        for target in imported:
            sink = target if _level(target) == 0 else _component(target)
            if sink != source:
                edges.setdefault(source, set()).add(sink)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node)


def _relative(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def test_mlflow_is_spoken_only_at_its_boundary() -> None:
    speakers = []
    for _, path, tree in _modules():
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                speakers.append(_relative(path))
    outside = sorted({s for s in speakers if not s.startswith(MLFLOW_BOUNDARY)})
    assert speakers and not outside, outside


def _environment_uses(tree: ast.AST) -> Iterator[str]:
    """``read``, ``write`` or ``copy`` for each use of ``os.environ`` / ``os.getenv``."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        text = ast.unparse(node) if isinstance(node, (ast.Attribute, ast.Name)) else ""
        if text == "os.getenv":
            yield "read"
        if text != "os.environ":
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute):
            method = parent.attr
            yield ("read" if method in ("get", "__contains__") else
                   "write" if method in ("pop", "setdefault", "update", "__setitem__") else "copy")
        elif isinstance(parent, ast.Subscript):
            yield "write" if isinstance(parent.ctx, (ast.Store, ast.Del)) else "read"
        elif isinstance(parent, ast.Compare):
            yield "read"
        else:
            yield "copy"


def test_the_environment_is_read_in_config_only() -> None:
    misplaced = []
    for _, path, tree in _modules():
        where = _relative(path)
        for use in _environment_uses(tree):
            allowed = {"read": ENV_READERS + ENV_WRITERS,  # a writer saves and restores
                       "write": ENV_WRITERS, "copy": ENV_COPIERS + ENV_READERS}[use]
            if not where.startswith(allowed):
                misplaced.append(f"{where}: {use}")
    assert not misplaced, sorted(set(misplaced))


def test_the_checks_see_what_they_forbid(tmp_path: Path) -> None:
    """The scans find an upward import, a cycle's edge and an environment read when there is one."""
    tree = ast.parse("import os\nfrom servegate.pipeline import x\ny = os.environ.get('A')\n"
                     "z = os.environ['B']\nos.environ['C'] = '1'\nw = dict(os.environ)\n")
    assert _imports("servegate.sources.x", tree) == {"servegate.pipeline"}
    assert _level("servegate.pipeline") > _level("servegate.sources.x")
    assert sorted(_environment_uses(tree)) == ["copy", "read", "read", "write"]
