"""The README and docs/ cannot go stale silently (issue 26): the parameter table against the
MLproject and `servegate run`, every environment variable the code reads, every path, link and
make target they name, and every `servegate ...` and `make ...` command they show (parsed by the
CLI's own parser, or `make -n`)."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: Code whose environment reads must be documented.
CODE_DIRS = ("src", "pipelines", "loadtests")
#: Variables the code sets for others, or that name a prefix; not settings a person gives.
NOT_SETTINGS = {"MLFLOW_TRACKING_INSECURE_TLS"}


def _text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


def _readme_parameters() -> dict[str, str]:
    """``name -> default`` of the README's parameter table (``—`` is empty)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Parameters"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([a-z0-9_]+)` \| (.*?) \| .* \|$", line)
        if match:
            default = match[2].strip().strip("`")
            rows[match[1]] = "" if default == "—" else default
    return rows


def _same(a: object, b: object) -> bool:
    try:
        return float(str(a)) == float(str(b))
    except ValueError:
        return str(a).lower() == str(b).lower()


def test_the_parameter_table_is_the_mlproject_and_the_cli() -> None:
    from servegate import cli

    mlproject = yaml.safe_load((ROOT / "pipelines" / "deploy" / "MLproject").read_text())
    parameters = mlproject["entry_points"]["main"]["parameters"]
    documented = _readme_parameters()
    assert set(documented) == set(parameters), (
        f"undocumented: {sorted(set(parameters) - set(documented))}; "
        f"invented: {sorted(set(documented) - set(parameters))}")
    options = {n: p.default for n, p in __import__("inspect").signature(cli.run).parameters.items()}
    for name, spec in parameters.items():
        assert _same(documented[name], spec["default"]), (name, documented[name], spec["default"])
        assert name in options, f"{name}: no `servegate run --{name.replace('_', '-')}`"
        assert _same(options[name], spec["default"]), (name, options[name], spec["default"])


def _read_variables() -> set[str]:
    """Names of environment variables the code reads: string literals in ``os.environ`` /
    ``getenv`` calls and subscripts, ``*_ENV`` constants, and the attach settings' fields."""
    from servegate.config import TFServingAttach, TorchServeAttach

    names: set[str] = set()
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                        "os.environ.get", "os.getenv", "environ.get", "env.get", "os.environ.setdefault"):
                    arg = node.args[0] if node.args else None
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        names.add(arg.value)
                elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ",):
                    if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                        names.add(node.slice.value)
                elif isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id.endswith("_ENV") for t in node.targets):
                    if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                        names.add(node.value.value)
    for attach in (TorchServeAttach, TFServingAttach):
        names |= {f"{attach.PREFIX}{field.upper()}" for field in attach.model_fields}
    return {n for n in names if re.fullmatch(r"[A-Z][A-Z0-9_]*[A-Z0-9]", n)} - NOT_SETTINGS


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    text = _text()
    read = _read_variables()
    assert {"SERVEGATE_HOME", "MLFLOW_TRACKING_URI", "SERVEGATE_TORCHSERVE_KEYS"} <= read
    missing = sorted(n for n in read if not re.search(rf"\b{n}\b", text))
    assert not missing, f"read by the code, documented nowhere: {missing}"


def test_the_variable_scan_finds_what_it_should(tmp_path: Path) -> None:
    """The scan itself can fail: a variable read in a new way is found."""
    assert "SERVEGATE_CALLER_DIR" in _read_variables()
    assert "GITHUB_ACTIONS" in _read_variables()


_TOP = ("src/", "handlers/", "pipelines/", "serving_configs/", "loadtests/", "benchmarks/", "tests/",
        "docs/", ".github/", ".ci/")


def test_every_path_and_link_named_exists() -> None:
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.name}: link {target}")
        for token in re.findall(r"`([^`\s]+)`", text):
            path = token.rstrip(".,:;")
            if path.startswith(_TOP) and not any(c in path for c in "<>*{}$"):
                if not (ROOT / path.split(":")[0]).exists():
                    missing.append(f"{page.name}: {path}")
            elif re.fullmatch(r"[a-z_]+/[a-z_]+\.py", path) and not (
                    (ROOT / "src" / "servegate" / path).exists() or (ROOT / path).exists()):
                missing.append(f"{page.name}: {path}")
    assert not missing, missing


def _shell_blocks(text: str) -> list[str]:
    """The contents of the fenced ``bash``/``sh`` code blocks of a Markdown text."""
    blocks: list[str] = []
    current: list[str] | None = None
    shell = False
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, shell = [], line[3:].strip() in ("bash", "sh", "shell")
            else:
                if shell:
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _commands(prefix: str) -> list[list[str]]:
    """Command lines starting with ``prefix`` (or ``.venv/bin/prefix``) in the pages' code."""
    found = []
    for page in PAGES:
        for block in _shell_blocks(page.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                words = shlex.split(line, comments=True) if line else []
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # VAR=value before the command
                if words and words[0] in (prefix, f".venv/bin/{prefix}"):
                    found.append(words[1:])
    return found


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))


def test_every_make_target_named_exists_and_every_make_command_parses() -> None:
    text = _text()
    targets = _make_targets()
    named = set(re.findall(r"`make ([a-z][a-z-]*)", text))
    assert named and named <= targets, sorted(named - targets)
    commands = _commands("make")
    assert commands
    for words in commands:
        done = subprocess.run(["make", "-n", *words], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, (words, done.stderr[-500:])


def test_every_servegate_command_shown_parses() -> None:
    """Each `servegate ...` line goes through the CLI's own parser (no command runs). Typer
    vendors its click, so groups and errors are recognised by what they do."""
    import typer

    from servegate.cli import app

    root = typer.main.get_command(app)
    commands = _commands("servegate")
    assert len(commands) >= 5
    for words in commands:
        command, args, name = root, list(words), "servegate"
        ctx = root.context_class(root, info_name=name)
        while hasattr(command, "resolve_command") and args and not args[0].startswith("-"):
            name, sub, args = command.resolve_command(ctx, args)
            assert sub is not None, words
            command, ctx = sub, sub.context_class(sub, info_name=name, parent=ctx)
        try:
            command.make_context(name, list(args), parent=ctx.parent)
        except Exception as exc:  # noqa: BLE001 (click's own exception classes, vendored)
            if type(exc).__name__ == "Exit":
                continue
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            pytest.fail(f"`servegate {shlex.join(words)}` does not parse: {message}")


def test_the_readme_stays_short_and_links_the_rest() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in README.read_text(encoding="utf-8"), page.name
