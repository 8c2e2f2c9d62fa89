"""`servegate tune` and `tune=true` on TF Serving, against FakeTFServing (a named fake: real HTTP
and gRPC with the real protos, SavedModels run in process; it does not model batching, so the
figures are the fake's and only the mechanics are checked here): a user's own Keras classifier
is deployed with `tune=true` (scratch versions served unlabelled, measured by real Locust, then
removed; the challenger served with the winner's `batching_params.pbtxt` or, without one, the
build's), then tuned again through the CLI, its stable label untouched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NAME = "winetune"


def test_tune_true_and_servegate_tune_on_a_fake_tf_serving(tmp_path: Path, monkeypatch) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from tiny_keras_models import save_wine_classifier, wine_csv

    from servegate.backends.tfserving import STABLE, TFServingBackend
    from servegate.cli import app
    from servegate.config import LoadSettings, PipelineConfig, SLOs
    from servegate.pipeline import DeployPipeline
    from servegate.registry import ARCHIVE_SHA256_TAG
    from servegate.testing.tfserving_fake import FakeTFServing
    from servegate.tuning.tfserving import savedmodel_point

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("SERVEGATE_HOME", str(tmp_path / "home"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("servegate-deploy")
    model_file = save_wine_classifier(tmp_path / "wine.keras", epochs=10)
    root = tmp_path / "models"
    root.mkdir()
    config = PipelineConfig(model=str(model_file), name=NAME, target="tfserving",
                            eval_data=str(wine_csv(tmp_path / "wine.csv")), tune=True,
                            tune_points=1, slos=SLOs(p95_ms=250.0, p99_ms=500.0),
                            load=LoadSettings(users=4, seconds=3, rounds=1))
    try:
        with FakeTFServing() as fake:
            backend = TFServingBackend.attach(fake.rest_url, fake.grpc_target, root)
            try:
                result = DeployPipeline(config, backend).run()
                assert result.decision == "promoted", result.checks
                version = result.version
                tune_run = mlflow.search_runs(experiment_names=["servegate-deploy"], output_format="list",
                                              filter_string="attributes.run_name = 'tune'")[0]
                logged = json.loads(mlflow.artifacts.load_text(
                    f"{tune_run.info.artifact_uri}/tune/frontier.json"))
                measured = [p for p in logged["points"] if p["levels"]]
                assert measured and all(m["requests"] > 0 for p in measured for m in p["levels"])
                served = savedmodel_point(root / NAME / version, cores=1)
                params = tune_run.data.params
                if "tune.batch_size" in params:  # the winner beat the build's batching when confirmed
                    assert (served.batch_size, served.max_batch_delay_ms, served.workers) == (
                        int(params["tune.batch_size"]), int(params["tune.max_batch_delay_ms"]),
                        int(params["tune.workers"]))
                else:  # the build's batching (the run's batch size and delay) stays
                    assert logged["confirmation"] is not None and not logged["confirmation"]["kept"]
                    assert (served.batch_size, served.max_batch_delay_ms) == (
                        config.batching.batch_size, config.batching.max_batch_delay_ms)
                from servegate.integrity import artifact_sha256

                tags = mlflow.MlflowClient().get_model_version(NAME, version).tags
                assert tags[ARCHIVE_SHA256_TAG] == artifact_sha256(root / NAME / version)
                # no scratch version left: configured, loaded or on disk
                assert backend.entry(NAME).versions == (int(version),)
                assert [v.version for v in backend.versions(NAME)] == [version]
                assert sorted(p.name for p in (root / NAME).iterdir()) == [version]

                # `servegate tune` on the served version, attached by the environment
                monkeypatch.setenv("SERVEGATE_TFSERVING_URL", fake.rest_url)
                monkeypatch.setenv("SERVEGATE_TFSERVING_GRPC", fake.grpc_target)
                monkeypatch.setenv("SERVEGATE_TFSERVING_MODEL_ROOT", str(root))
                before = backend.predict(NAME, {"instances": [[13.0] * 13]})
                cli = CliRunner().invoke(app, [
                    "tune", NAME, "--target", "tfserving", "--server", "attach", "--max-points", "1",
                    "--users", "2", "--batch-sizes", "4", "--delays-ms", "1", "--workers", "1",
                    "--duration-s", "1", "--p95-ms", "250", "--p99-ms", "500"])
                assert cli.exit_code == 0, cli.output + repr(cli.exception)
                assert "MLflow run:" in cli.output and "frontier" in cli.output
                assert "--threads" not in cli.output
                assert backend.labels(NAME) == {STABLE: int(version)}
                assert sorted(p.name for p in (root / NAME).iterdir()) == [version]
                assert backend.predict(NAME, {"instances": [[13.0] * 13]}) == before
                refused = CliRunner().invoke(app, ["tune", NAME, "--target", "tfserving",
                                                   "--server", "attach", "--threads", "0,2"])
                assert refused.exit_code != 0 and "server-wide" in refused.output
            finally:
                backend.close()
    finally:
        mlflow.set_tracking_uri(None)
