"""An isolated MLflow store and servegate home for the pipeline tests (shared by their modules)."""

from __future__ import annotations

import contextlib

from servegate.backends._process import group_processes
from servegate.backends.torchserve import LocalTorchServe
from servegate.config import TorchServeSettings


@contextlib.contextmanager
def pipeline_home(home, **extra_env: str):
    """An MLflow store (SQLite) and a servegate home in ``home`` for the whole pipeline, set in
    the environment (``extra_env`` too) and restored afterwards; the TorchServe a run starts
    there is stopped, and none of its processes is left."""
    import os

    import mlflow

    values = {"MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
              "SERVEGATE_HOME": str(home / "servegate")} | extra_env
    saved = {k: os.environ.get(k) for k in (*values, "MLFLOW_EXPERIMENT_ID")}
    os.environ.update(values)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    mlflow.set_tracking_uri(values["MLFLOW_TRACKING_URI"])
    server = LocalTorchServe(TorchServeSettings(workdir=home / "servegate" / "torchserve"))
    try:
        yield home, server
    finally:
        recorded = server.state()
        server.stop()
        if recorded is not None:
            assert group_processes(recorded.pid) == [], "TorchServe processes left behind"
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        mlflow.set_tracking_uri(None)
