"""Entry point of the MLflow Project: a thin call into ``servegate run``.

MLflow runs this from ``pipelines/deploy``, wherever ``mlflow run`` was typed. So that a run
behaves the same from anywhere:

- relative paths among the parameters (a model file, ``hf:<dir>``, ``eval_data``, a labels file,
  ``model_class``'s file, ``handler``) are resolved against the directory ``mlflow run`` was called
  from (``SERVEGATE_CALLER_DIR``, which ``make deploy`` sets; else the working directory of the
  ``mlflow`` process that started this one; else the checkout's root);
- the local server lives in the checkout's ``.servegate`` unless ``SERVEGATE_HOME`` says otherwise
  (``servegate serve status`` from the checkout finds it);
- when servegate is not installed in the environment (the virtualenv built from python_env.yaml),
  the checkout's ``src`` is put on the path.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
#: Options whose value may be a path (resolved against the caller's directory when relative).
PATH_OPTIONS = frozenset({"--model", "--eval-data", "--labels", "--model-class", "--handler"})
#: Values that are URIs or names, never paths.
_NOT_A_PATH = re.compile(r"^(builtin:|models:/|runs:/|mlflow-artifacts:|[a-z][a-z0-9+.-]*://)")

#: The options whose MLproject parameters are declared ``float`` (MLproject has no int type that
#: MLflow would not pass as e.g. "8.0") while ``servegate run`` takes an int.
INTEGER_OPTIONS = frozenset({"--max-length", "--load-users", "--load-rounds", "--load-processes",
                             "--batch-size",
                             "--max-batch-delay-ms", "--workers", "--workers-per-gpu", "--threads",
                             "--tune-points", "--max-artifacts"})


def cli_arguments(argv: list[str]) -> list[str]:
    """``argv`` with ``N.0`` turned into ``N`` where an integer option takes it, and nowhere else
    (a path or a name that looks like ``12.0`` is passed as it is)."""
    arguments = list(argv)
    for i in range(1, len(arguments)):
        if arguments[i - 1] in INTEGER_OPTIONS and re.fullmatch(r"-?[0-9]+\.0+", arguments[i]):
            arguments[i] = arguments[i].partition(".")[0]
    return arguments


def flag_values(arguments: list[str]) -> list[str]:
    """``--verbose true|false`` (an MLproject parameter has a value) as the flag or nothing."""
    out: list[str] = []
    skip = False
    for i, argument in enumerate(arguments):
        if skip:
            skip = False
            continue
        if argument == "--verbose" and i + 1 < len(arguments):
            skip = True
            if arguments[i + 1].strip().lower() in ("true", "1", "yes"):
                out.append("--verbose")
            continue
        out.append(argument)
    return out


def caller_dir() -> Path:
    """Where ``mlflow run`` (or ``make deploy``) was called from (see the module docstring)."""
    given = os.environ.get("SERVEGATE_CALLER_DIR")
    if given:
        return Path(given)
    here = Path(__file__).resolve().parent
    pid = os.getppid()
    for _ in range(8):  # bash -c <command> -> mlflow run: the first ancestor working elsewhere
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if cwd != here:
            return cwd
        pid = parent
    return CHECKOUT


def resolve_paths(arguments: list[str], base: Path) -> list[str]:
    """Relative path values of ``PATH_OPTIONS`` made absolute against ``base``; URIs, names and
    comma lists (``labels=a,b``) are left as they are."""
    resolved = list(arguments)
    for i in range(1, len(resolved)):
        option, value = resolved[i - 1], resolved[i]
        if option not in PATH_OPTIONS or not value or _NOT_A_PATH.match(value):
            continue
        prefix = ""
        if value.startswith("hf:"):
            prefix, value = "hf:", value.removeprefix("hf:")
            if "/" not in value:  # a packaged name such as hf:minilm
                continue
        suffix = ""
        if option == "--model-class" and ":" in value:
            value, _, cls = value.rpartition(":")
            suffix = f":{cls}"
        path = Path(value).expanduser()
        if path.is_absolute() or not (base / path).exists():
            continue
        resolved[i] = f"{prefix}{(base / path).resolve()}{suffix}"
    return resolved


def _main() -> None:
    try:
        import servegate  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from servegate.cli import main

    os.environ.setdefault("SERVEGATE_HOME", str(CHECKOUT / ".servegate"))
    arguments = flag_values(cli_arguments(sys.argv[1:]))
    main(["run", *resolve_paths(arguments, caller_dir())])


if __name__ == "__main__":
    _main()
