"""Entry point of the MLflow Project: a thin call into ``servegate run``.

MLflow runs this from ``pipelines/deploy``; when servegate is not installed in the environment
(the virtualenv built from python_env.yaml), the checkout's ``src`` is put on the path.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _main() -> None:
    try:
        import servegate  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from servegate.cli import main

    # MLflow passes int parameters declared as float as e.g. "8.0": accept both.
    argv = [a[:-2] if a.endswith(".0") and a[:-2].lstrip("-").isdigit() else a for a in sys.argv[1:]]
    main(["run", *argv])


if __name__ == "__main__":
    _main()
