"""A run's log file: library warnings and logs go there, not to the terminal (unless verbose).

The terminal keeps servegate's own lines (steps, progress, the summary); torch.onnx, TensorFlow,
MLflow, Locust and Python warnings are written to ``<home>/logs/run-<time>.log``, whose path an
unexpected failure names in its one-line message.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Loggers of the libraries a run drives (their records go to the run's log file).
LIBRARY_LOGGERS = ("servegate", "mlflow", "torch", "tensorflow", "absl", "keras", "onnxscript", "onnx",
                   "onnxruntime", "py.warnings", "urllib3", "alembic", "httpx", "matplotlib",
                   "model_archiver", "locust", "git")


def new_log_path(log_dir: Path) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextmanager
def run_log(path: Path, *, verbose: bool = False) -> Iterator[Path]:
    """Send library logs and warnings to ``path`` for the duration (and to the terminal too when
    ``verbose``); restore the loggers afterwards."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []
    logging.captureWarnings(True)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logs
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate, logger.level))
        if not verbose:
            for existing in list(logger.handlers):
                logger.removeHandler(existing)
            logger.propagate = False
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield path
    finally:
        logging.captureWarnings(False)
        for logger, handlers, propagate, level in saved:
            logger.removeHandler(handler)
            for existing in handlers:
                if existing not in logger.handlers:
                    logger.addHandler(existing)
            logger.propagate, logger.level = propagate, level
        handler.close()
