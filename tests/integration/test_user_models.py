"""Users' own models: each logged with `mlflow.pytorch.log_model` (MLflow 3's default
ExportedProgram format) by the test, imported by `models:/` with its own eval_data, gated and
promoted on a real TorchServe; one re-gated against a worse challenger of the same kind and
rejected on the metric of its task. None of these models ships with the project. The first runs
through `make deploy` (the MLproject's parameters); the others call the library API in this
process (``servegate.api.deploy``, the same pipeline without the subprocess start-up)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import user_models
from mlflow import MlflowClient
from pipeline_env import pipeline_home
from test_pipeline import alias, backend_of, deploy

from servegate.errors import GateFailed

pytestmark = pytest.mark.integration
# One short load phase per target: these runs check the path, not the server's speed.
QUICK = ["-P", "load_rounds=1"]


def deploy_here(model: str, **options: object):
    """The pipeline run `deploy(..., *QUICK)` makes, through the library API in this process."""
    from rich.console import Console

    from servegate import api
    from servegate.config import LoadSettings, PipelineConfig

    config = PipelineConfig(model=model, compiler="eager", load=LoadSettings(users=4, seconds=3, rounds=1),
                            **options)
    return api.deploy(config, Console(quiet=True))


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory):
    """An MLflow store, a servegate home and a TorchServe of this module's own."""
    with pipeline_home(tmp_path_factory.mktemp("user-models")) as (home, server):
        mlflow.set_experiment("user-training")
        yield home, server


def _ok(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "promoted" in result.stdout, output[-4000:]
    return output


def test_tabular_classifier_with_13_features_and_csv_eval_data(user_env) -> None:
    home, server = user_env
    wine = user_models.wine_classifier()
    version = user_models.log_pytorch(wine.module, wine.x_test[:4], "wine")
    frame = pd.DataFrame(wine.x_test, columns=[f"f{i}" for i in range(13)])
    frame["cultivar"] = np.array(["barolo", "grignolino", "barbera"])[wine.y_test]
    frame.to_csv(home / "wine_eval.csv", index=False)
    output = _ok(deploy("-P", f"model=models:/wine/{version}", "-P", f"eval_data={home / 'wine_eval.csv'}",
                        "-P", "label_column=cultivar", "-P", "labels=barolo,grignolino,barbera", *QUICK))
    assert "gate: parity" in output and "evaluation data:" in output
    assert alias("wine", "champion") == version
    with backend_of(server) as backend:
        answer = backend.predict("wine", {"instances": wine.x_test[:2].tolist()})
    assert [p["label"] for p in answer["predictions"]] == [
        ["barolo", "grignolino", "barbera"][int(i)]
        for i in wine.module(__import__("torch").from_numpy(wine.x_test[:2])).argmax(1)]
    report = (Path(os.environ["SERVEGATE_HOME"]) / "logs").glob("run-*.log")
    assert list(report), "the run writes library logs to its own file"


def test_regressor_promoted_then_a_worse_one_rejected_on_rmse(user_env) -> None:
    home, server = user_env
    trained = user_models.diabetes_regressor()
    np.savez(home / "diabetes_eval.npz", x=trained.x_test, y=trained.y_test)
    eval_data = str(home / "diabetes_eval.npz")
    version = user_models.log_pytorch(trained.module, trained.x_test[:4], "diabetes")
    assert deploy_here(f"models:/diabetes/{version}", eval_data=eval_data).decision == "promoted"
    with backend_of(server) as backend:
        value = backend.predict("diabetes", {"instances": trained.x_test[:1].tolist()})["predictions"][0]
    assert isinstance(value, float)

    worse = user_models.log_pytorch(user_models.shuffled(trained.module), trained.x_test[:4], "diabetes")
    with pytest.raises(GateFailed) as rejected:
        deploy_here(f"models:/diabetes/{worse}", eval_data=eval_data)
    assert {c.name for c in rejected.value.checks if not c.passed} >= {"rmse_vs_champion"}
    assert alias("diabetes", "champion") == version
    tags = MlflowClient().get_model_version("diabetes", worse).tags
    assert tags["servegate.gate"] == "failed" and "rmse_vs_champion" in tags["servegate.failed_checks"]
    with backend_of(server) as backend:
        assert backend.default_version("diabetes") == version


def test_convolutional_image_model_fed_tensors(user_env) -> None:
    home, server = user_env
    trained = user_models.digit_images_convnet()
    np.savez(home / "images_eval.npz", x=trained.x_test, y=trained.y_test)
    version = user_models.log_pytorch(trained.module, trained.x_test[:4], "glyphs")
    result = deploy_here(f"models:/glyphs/{version}", eval_data=str(home / "images_eval.npz"))
    assert result.decision == "promoted", result.checks
    with backend_of(server) as backend:
        answer = backend.predict("glyphs", {"instances": trained.x_test[:3].tolist()})
    assert [p["label"] for p in answer["predictions"]] == [str(int(y)) for y in trained.module(
        __import__("torch").from_numpy(trained.x_test[:3])).argmax(1)]


def test_model_with_two_tensor_inputs(user_env) -> None:
    home, server = user_env
    trained = user_models.two_input_classifier()
    np.savez(home / "two_eval.npz", **trained.x_test, y=trained.y_test)
    example = {k: v[:4] for k, v in trained.x_test.items()}
    version = user_models.log_pytorch(trained.module, example, "blend")
    result = deploy_here(f"models:/blend/{version}", eval_data=str(home / "two_eval.npz"))
    assert result.decision == "promoted", result.checks
    row = {"features": trained.x_test["features"][0].tolist(), "category": int(trained.x_test["category"][0])}
    with backend_of(server) as backend:
        answer = backend.predict("blend", {"instances": [row]})
    assert answer["predictions"][0]["label"] in {"0", "1", "2"}


def test_the_served_name_must_be_the_registered_one(user_env) -> None:
    result = deploy("-P", "model=models:/wine/1", "-P", "name=other")
    assert result.returncode != 0
    assert "registered as 'wine' but name is 'other'" in result.stdout + result.stderr


SLOW_NET = """
import time

import torch
from torch import nn


class SlowDiabetes(nn.Module):
    \"\"\"The same regressor, with 60 ms of waiting in every forward pass.\"\"\"

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.06)
        return self.net(x)
"""


def test_a_slowed_challenger_is_rejected_on_latency_with_the_default_regression(user_env) -> None:
    """A regressor promoted, then its own weights behind a 60 ms sleep: parity passes, the p95
    ratio's whole interval lies beyond the default 50% (no test-only slack), the champion stays."""
    import torch

    home, server = user_env
    trained = user_models.diabetes_regressor()
    np.savez(home / "pace_eval.npz", x=trained.x_test, y=trained.y_test)
    eval_data = str(home / "pace_eval.npz")
    champion = user_models.log_pytorch(trained.module, trained.x_test[:4], "pace")
    assert deploy_here(f"models:/pace/{champion}", eval_data=eval_data).decision == "promoted"
    (home / "slow_net.py").write_text(SLOW_NET, encoding="utf-8")
    torch.save(trained.module.state_dict(), home / "slow.pt")
    with pytest.raises(GateFailed) as rejected:
        deploy_here(str(home / "slow.pt"), name="pace", eval_data=eval_data,
                    model_class=f"{home / 'slow_net.py'}:SlowDiabetes")
    failed = {c.name for c in rejected.value.checks if not c.passed}
    assert "p95_ratio_vs_champion" in failed and not any(c.startswith("rmse") for c in failed)
    assert alias("pace", "champion") == champion
    with backend_of(server) as backend:
        assert backend.default_version("pace") == champion
