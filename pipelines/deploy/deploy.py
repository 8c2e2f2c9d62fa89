"""Entry point of the MLflow Project: a thin call into ``servegate run``.

MLflow runs this from ``pipelines/deploy``; when servegate is not installed in the environment
(the virtualenv built from python_env.yaml), the checkout's ``src`` is put on the path.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: The options whose MLproject parameters are declared ``float`` (MLproject has no int type that
#: MLflow would not pass as e.g. "8.0") while ``servegate run`` takes an int.
INTEGER_OPTIONS = frozenset({"--max-length", "--load-users", "--load-rounds", "--batch-size",
                             "--max-batch-delay-ms", "--workers-per-gpu"})


def cli_arguments(argv: list[str]) -> list[str]:
    """``argv`` with ``N.0`` turned into ``N`` where an integer option takes it, and nowhere else
    (a path or a name that looks like ``12.0`` is passed as it is)."""
    arguments = list(argv)
    for i in range(1, len(arguments)):
        if arguments[i - 1] in INTEGER_OPTIONS and re.fullmatch(r"-?[0-9]+\.0+", arguments[i]):
            arguments[i] = arguments[i].partition(".")[0]
    return arguments


def _main() -> None:
    try:
        import servegate  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from servegate.cli import main

    main(["run", *cli_arguments(sys.argv[1:])])


if __name__ == "__main__":
    _main()
