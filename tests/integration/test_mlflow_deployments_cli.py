"""`mlflow deployments -t torchserve` (issue 22): a user's model (not a built-in) created, listed,
got, queried and deleted through MLflow's own CLI against a real TorchServe, a worse challenger
refused by `update` with the champion untouched, and the Python API's `predict`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import user_models
from pipeline_env import pipeline_home
from test_pipeline import alias, backend_of

pytestmark = pytest.mark.integration
MLFLOW = [sys.executable, "-m", "mlflow", "deployments"]
QUICK = ["-C", "compiler=eager", "-C", "load_seconds=3", "-C", "load_users=4", "-C", "load_rounds=1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    with pipeline_home(tmp_path_factory.mktemp("plugin")) as (home, server):
        import mlflow

        mlflow.set_experiment("user-training")
        yield home, server


def mlflow_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # mlflow.set_experiment exported MLFLOW_EXPERIMENT_ID for subprocesses; a shell has neither
    shell = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    return subprocess.run([*MLFLOW, *args], capture_output=True, text=True, timeout=900,
                          env=shell | {"MLFLOW_EXPERIMENT_NAME": "plugin"})


def test_the_mlflow_deployments_cli_drives_the_gated_pipeline(env, tmp_path: Path) -> None:
    home, server = env
    wine = user_models.wine_classifier()
    first = user_models.log_pytorch(wine.module, wine.x_test[:4], "wine")
    np.savez(home / "wine_eval.npz", x=wine.x_test, y=wine.y_test)
    data = ["-C", f"eval_data={home / 'wine_eval.npz'}"]

    created = mlflow_cli("create", "-t", "torchserve", "--name", "wine", "-m", f"models:/wine/{first}",
                         *data, *QUICK)
    assert created.returncode == 0, (created.stdout + created.stderr)[-3000:]
    # MLflow's CLI prints one line; the gate's progress is on stderr (the dict is the API's)
    assert "deployment wine is created" in created.stdout and "wine v1 is the champion" in created.stderr
    assert alias("wine", "champion") == first

    again = mlflow_cli("create", "-t", "torchserve", "--name", "wine", "-m", f"models:/wine/{first}")
    assert again.returncode != 0 and "is deployed already: update it" in again.stderr

    listed = mlflow_cli("list", "-t", "torchserve")
    assert listed.returncode == 0 and "wine" in listed.stdout, listed.stderr
    got = mlflow_cli("get", "-t", "torchserve", "--name", "wine")
    assert got.returncode == 0 and f"default_version: {first}\n" in got.stdout, got.stderr

    rows = tmp_path / "rows.json"
    rows.write_text(pd.DataFrame(wine.x_test[:3]).to_json(), encoding="utf-8")  # read_json's default
    predicted = mlflow_cli("predict", "-t", "torchserve", "--name", "wine", "--input-path", str(rows))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    expected = wine.module(torch.from_numpy(wine.x_test[:3])).argmax(1).tolist()
    assert [p["label"] for p in json.loads(predicted.stdout)["predictions"]] == [str(i) for i in expected]

    worse = user_models.log_pytorch(user_models.shuffled(wine.module), wine.x_test[:4], "wine")
    refused = mlflow_cli("update", "-t", "torchserve", "--name", "wine", "-m", f"models:/wine/{worse}",
                         *data, *QUICK)
    assert refused.returncode != 0 and "accuracy_vs_champion" in refused.stderr
    assert alias("wine", "champion") == first
    with backend_of(server) as backend:
        assert backend.default_version("wine") == first

    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("torchserve")
    answer = client.predict("wine", pd.DataFrame(wine.x_test[:3]))
    assert [p["label"] for p in answer["predictions"]] == [str(i) for i in expected]

    deleted = mlflow_cli("delete", "-t", "torchserve", "--name", "wine")
    assert deleted.returncode == 0, deleted.stderr
    with backend_of(server) as backend:
        assert backend.versions("wine") == []
    assert "is not deployed" in mlflow_cli("get", "-t", "torchserve", "--name", "wine").stderr
