"""The MLflow deployments plugin without a server (issue 22): MLflow's own plugin check accepts the
module, run parameters reach ``PipelineConfig`` through one table, request bodies are built from
what MLflow users pass, and the endpoint calls answer "not supported" clearly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException

from servegate import deployments
from servegate.config import RUN_PARAMETERS, PipelineConfig, config_from_parameters
from servegate.errors import ConfigError


def test_mlflows_plugin_manager_accepts_the_module() -> None:
    from mlflow.deployments.plugin_manager import DeploymentPlugins

    plugins = DeploymentPlugins()
    for target in deployments.TARGETS:
        plugins.register(target, "servegate.deployments")
        assert plugins[target] is deployments  # validated: one client class, run_local, target_help


def test_the_mlproject_defaults_make_the_default_config(monkeypatch) -> None:
    from pathlib import Path

    monkeypatch.delenv("SERVEGATE_SERVER", raising=False)
    monkeypatch.delenv("SERVEGATE_REPORT_DIR", raising=False)
    mlproject = Path(__file__).resolve().parents[2] / "pipelines" / "deploy" / "MLproject"
    parameters = yaml.safe_load(mlproject.read_text())["entry_points"]["main"]["parameters"]
    assert set(parameters) - {"verbose"} == set(RUN_PARAMETERS)  # verbose is the log's, not the config's
    texts = {n: str(p["default"]) for n, p in parameters.items() if n in RUN_PARAMETERS}
    assert config_from_parameters(texts) == PipelineConfig()


def test_run_parameters_convert_and_refuse_by_name() -> None:
    config = config_from_parameters({"model": "models:/wine/3", "p95_ms": "100", "image_size": "32,32",
                                     "trust_pickle": "false", "load_rounds": "3.0", "task": "auto"})
    assert (config.slos.p95_ms, config.image.size, config.load.rounds, config.task) == (
        100.0, (32, 32), 3, None)
    with pytest.raises(ConfigError, match="unknown parameters bogus"):
        config_from_parameters({"bogus": "1"})
    with pytest.raises(ConfigError, match="parameter trust_pickle='maybe'"):
        config_from_parameters({"trust_pickle": "maybe"})
    with pytest.raises(ConfigError, match="p95_ms.*gate policy"):
        config_from_parameters({"p95_ms": "999999"})


def test_request_bodies_from_what_mlflow_users_pass() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert deployments.request_body(rows) == {"instances": rows.tolist()}
    assert deployments.request_body(pd.DataFrame(rows, columns=list("abc"))) == {"instances": rows.tolist()}
    assert deployments.request_body([[1, 2]]) == {"instances": [[1, 2]]}
    assert deployments.request_body({"inputs": [[1, 2]]}) == {"inputs": [[1, 2]]}
    with pytest.raises(MlflowException, match="DataFrame, an array, a list or a dict"):
        deployments.request_body(object())


def test_endpoints_and_explanations_are_not_supported_and_say_so() -> None:
    client = deployments.ServegateDeploymentClient("torchserve")
    for call in (lambda: client.create_endpoint("e"), lambda: client.list_endpoints(),
                 lambda: client.get_endpoint("e"), lambda: client.delete_endpoint("e"),
                 lambda: client.update_endpoint("e"), lambda: client.get_deployment("m", endpoint="e")):
        with pytest.raises(MlflowException, match="has no endpoints: a deployment is a served model"):
            call()
    with pytest.raises(MlflowException, match="does not explain"):
        client.explain("m", pd.DataFrame())
    with pytest.raises(MlflowException, match="unknown servegate target"):
        deployments.ServegateDeploymentClient("triton")
    assert "-C name=value" in deployments.target_help() and "p95_ms" in deployments.target_help()
