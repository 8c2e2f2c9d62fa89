"""target=tfserving: against FakeTFServing (a named fake: real HTTP + gRPC with the real protos,
SavedModels run in-process) `make deploy` and the library API gate, promote and roll back; without
a server a run builds, validates and logs the SavedModel and fails saying how to provide one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TF = ["-P", "target=tfserving", "-P", "model=builtin:digits-keras", "-P", "load_seconds=2",
      "-P", "load_users=4"]
SERVER_ENV = ("SERVEGATE_TFSERVING_URL", "SERVEGATE_TFSERVING_GRPC", "SERVEGATE_TFSERVING_MODEL_ROOT")


def deploy(env: dict[str, str], *params: str) -> subprocess.CompletedProcess[str]:
    import shlex

    return subprocess.run(["make", "-s", "deploy", f"DEPLOY_ARGS={shlex.join([*TF, *params])}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k not in SERVER_ENV}
                          | {"MAKEFLAGS": ""} | env)


@pytest.fixture
def store(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    yield tmp_path, {"MLFLOW_TRACKING_URI": uri, "SERVEGATE_HOME": str(tmp_path / "home")}
    mlflow.set_tracking_uri(None)


def test_gates_promotion_and_rollback_on_a_fake_tf_serving(store, tmp_path: Path, monkeypatch) -> None:
    """`make deploy` promotes the first version; a second one (through the library API, the same
    pipeline in this process) is gated against it and promoted; rollback moves the label back."""
    from servegate import api
    from servegate.backends.tfserving import TFServingBackend
    from servegate.config import LoadSettings, PipelineConfig
    from servegate.testing.tfserving_fake import FakeTFServing

    _, env = store
    root = tmp_path / "models"
    root.mkdir()
    with FakeTFServing() as fake:
        server = {"SERVEGATE_TFSERVING_URL": fake.rest_url, "SERVEGATE_TFSERVING_GRPC": fake.grpc_target,
                  "SERVEGATE_TFSERVING_MODEL_ROOT": str(root)}
        first = deploy(env | server)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "promoted" in first.stdout and "/labels/stable:predict" in first.stdout
        package = mlflow.search_runs(experiment_names=["servegate-deploy"], output_format="list",
                                     filter_string="attributes.run_name = 'package'")[0]
        files = {a.path for a in MlflowClient().list_artifacts(package.info.run_id, "savedmodel/1")}
        assert "savedmodel/1/saved_model.pb" in files
        assert package.data.metrics["tf1_max_abs_diff"] <= 1e-5

        for key, value in (env | server).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        config = PipelineConfig(target="tfserving", model="builtin:digits-keras",
                                load=LoadSettings(users=4, seconds=2))
        second = api.deploy(config)  # (rejections: test_pipeline_decisions, test_user_models)
        assert (second.decision, second.champion_before) == ("promoted", "1")
        backend = TFServingBackend.attach(fake.rest_url, fake.grpc_target, root)
        try:
            assert backend.default_version("digits-keras") == "2"
            assert {v.version for v in backend.versions("digits-keras")} == {"1", "2"}
            assert api.rollback("digits-keras", target="tfserving") == ("1", "2")
            assert backend.default_version("digits-keras") == "1"
            answer = backend.predict("digits-keras", {"instances": [[0.0] * 64]})
            assert len(answer["predictions"][0]["probabilities"]) == 10
        finally:
            backend.close()
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("digits-keras", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("digits-keras", "previous-champion").version) == "2"


def test_a_users_13_feature_keras_model_through_tfserving(store, tmp_path: Path, monkeypatch) -> None:
    """A user's own .keras classifier of 13 features, gated on the user's CSV (eval_data) on the
    fake TF Serving: parity and load gates, promotion; then a 13-feature regressor without a
    server: its SavedModel (values, no image signature) is built, validated and logged."""
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from tiny_keras_models import save_wine_classifier, save_wine_regressor, wine_csv, wine_npz

    from servegate import api
    from servegate.backends.tfserving import TFServingBackend
    from servegate.config import LoadSettings, PipelineConfig
    from servegate.errors import ServerError
    from servegate.pipeline import DeployPipeline
    from servegate.testing.tfserving_fake import FakeTFServing

    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("SERVEGATE_HOME", str(tmp_path / "home"))
    mlflow.set_experiment("servegate-deploy")
    model_file = save_wine_classifier(tmp_path / "wine.keras", epochs=10)
    eval_csv = wine_csv(tmp_path / "wine.csv")
    root = tmp_path / "models"
    root.mkdir()
    config = PipelineConfig(model=str(model_file), name="wine", target="tfserving",
                            eval_data=str(eval_csv), load=LoadSettings(users=4, seconds=2))
    with FakeTFServing() as fake:
        backend = TFServingBackend.attach(fake.rest_url, fake.grpc_target, root)
        try:
            result = DeployPipeline(config, backend).run()
            assert result.decision == "promoted", result.checks
            assert {c.name for c in result.checks} >= {"max_abs_diff", "top1_agreement", "p95_ms"}
            answer = backend.predict("wine", {"instances": [[13.0] * 13]})
            prediction = answer["predictions"][0]
            assert len(prediction["probabilities"]) == 3 and prediction["labels"][0] in {"0", "1", "2"}
        finally:
            backend.close()
    run = mlflow.search_runs(experiment_names=["servegate-deploy"], output_format="list",
                             filter_string="attributes.run_name = 'source'")[0]
    assert run.data.params["model.dataset"] == str(eval_csv)
    assert run.data.metrics["accuracy"] > 0.8

    regressor = save_wine_regressor(tmp_path / "alcohol.keras", outputs=2, epochs=5)
    no_server = config.model_copy(update={"model": str(regressor), "name": "alcohol",
                                          "eval_data": str(wine_npz(tmp_path / "two.npz", outputs=2))})
    for variable in SERVER_ENV:  # no server anywhere: the run builds, logs and says how
        monkeypatch.delenv(variable, raising=False)
    if shutil.which("tensorflow_model_server"):
        pytest.skip("tensorflow_model_server is installed: a local server would start")
    with pytest.raises(ServerError, match="no TF Serving reachable") as refused:
        api.deploy(no_server)
    assert "SERVEGATE_TFSERVING_URL" in str(refused.value)
    package = mlflow.search_runs(experiment_names=["servegate-deploy"], output_format="list",
                                 filter_string="attributes.run_name = 'package'",
                                 order_by=["attributes.start_time DESC"])[0]
    assert package.data.metrics["tf1_max_abs_diff"] <= 1e-5
    assert MlflowClient().get_model_version("alcohol", "1").tags["servegate.gate"] == "not run: no server"
