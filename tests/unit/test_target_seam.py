"""What is server-specific belongs to its Target (issue 20): the answers are read by the
target's decoder, the Locust file and user are the target's, and the CLI's server commands
(`serve`, `models`, `predict`) reach any registered target by `--target`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from servegate import targets
from servegate.cli import app
from servegate.errors import ServerError
from servegate.gates.parity import run_parity
from servegate.targets import MeasuredTarget, get_target
from servegate.testing import MemoryBackend, ScriptedTarget

runner = CliRunner()


class _Model:
    """Three rows, two classes; rows are their own index so the server knows what to answer."""

    task = "classification"
    labels = ["a", "b"]
    outputs_are_probabilities = True

    def __init__(self) -> None:
        self.eval_x = np.arange(3, dtype=np.float32)[:, None]
        self.eval_y = np.array([0, 1, 1])
        self.probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])

    def reference_outputs(self, x: np.ndarray) -> tuple[np.ndarray]:
        return (self.probabilities[x[:, 0].astype(int)],)

    def request_rows(self, x: np.ndarray) -> list[Any]:
        return x.tolist()


class _Answers:
    """A server answering each row with ``shape(probabilities)``."""

    def __init__(self, probabilities: np.ndarray, shape: Any) -> None:
        self.probabilities, self.shape = probabilities, shape

    def predict(self, name: str, payload: Any, version: str | None = None) -> Any:
        return {"predictions": [self.shape(self.probabilities[int(row[0])].tolist())
                                for row in payload["instances"]]}


def test_the_default_decoder_reads_servegates_answer_format() -> None:
    decode = MeasuredTarget().prediction_values
    assert decode({"label": "b", "probabilities": [0.2, 0.8]}, "classification", ["out"]) == [[0.2, 0.8]]
    assert decode({"second": 2, "first": 1}, "regression", ["first", "second"]) == [1, 2]
    assert decode([1.0, 2.0], "embedding", ["output"]) == [[1.0, 2.0]]
    with pytest.raises(ServerError, match="no 'probabilities'"):
        decode([0.2, 0.8], "classification", ["out"])  # not what our handlers answer
    with pytest.raises(ServerError, match="no 'second'"):
        decode({"first": 1}, "regression", ["first", "second"])


def test_parity_reads_answers_with_the_targets_own_decoder() -> None:
    """A server whose answers differ (here: ``{"scores": ...}``) is one override in its target,
    not a branch in the parity gate."""

    class OtherServer(MeasuredTarget):
        def prediction_values(self, prediction: Any, task: str, outputs: list[str]) -> list[Any]:
            return [prediction["scores"]]

    model = _Model()
    backend: Any = _Answers(model.probabilities, lambda p: {"scores": p})
    result = OtherServer().check_parity(backend, "m", "2", model, None)
    assert result.top1_agreement == 1.0 and result.accuracy == 1.0
    with pytest.raises(ServerError):
        run_parity(backend, "m", "2", model, None, decode=MeasuredTarget().prediction_values)


def test_each_target_names_its_own_locust_user() -> None:
    class Rows:
        def example_batch(self, n: int) -> np.ndarray:
            return np.zeros((n, 2), dtype=np.float32)

        def request_rows(self, x: np.ndarray) -> list[Any]:
            return x.tolist()

    for name, user in (("torchserve", "TorchServePredictUser"), ("tfserving", "TFServingPredictUser")):
        profile = get_target(name).load_profile(Rows())
        assert profile.user_class == user and profile.locustfile.is_file()
        assert f"class {user}" in profile.locustfile.read_text(encoding="utf-8")


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MemoryBackend:
    """A registered third server (in memory) holding two versions of ``m``, 2 the default."""
    backend = MemoryBackend()
    artifact = tmp_path / "artifact"
    artifact.write_bytes(b"x")
    for version in ("1", "2"):
        backend.deploy(artifact, "m", version)
    backend.set_default("m", "2")
    monkeypatch.setitem(targets._REGISTRY, "toy", lambda: ScriptedTarget(backend, []))
    return backend


def test_models_and_predict_reach_a_registered_target(toy: MemoryBackend) -> None:
    listed = runner.invoke(app, ["models", "list", "m", "--target", "toy"])
    assert listed.exit_code == 0, listed.output
    assert [(v["version"], v["is_default"]) for v in json.loads(listed.output)] == [("1", False), ("2", True)]
    routed = runner.invoke(app, ["models", "default", "m", "1", "--target", "toy"])
    assert routed.exit_code == 0, routed.output
    assert toy.default_version("m") == "1"
    answer = runner.invoke(app, ["predict", "m", "--data", "{}", "--target", "toy"])
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output) == {"name": "m", "version": "1"}
    removed = runner.invoke(app, ["models", "unregister", "m", "2", "--target", "toy"])
    assert removed.exit_code == 0 and [v.version for v in toy.versions("m")] == ["1"]


def test_server_commands_refuse_what_a_target_does_not_have(toy: MemoryBackend, tmp_path: Path) -> None:
    no_local = runner.invoke(app, ["serve", "stop", "--target", "toy"])
    assert no_local.exit_code == 5 and "no local server" in no_local.output
    unknown = runner.invoke(app, ["models", "list", "m", "--target", "nope"])
    assert unknown.exit_code == 5 and "unknown target 'nope'" in unknown.output
    foreign = runner.invoke(app, ["serve", "start", "--target", "tfserving", "--host", "0.0.0.0",
                                  "--workdir", str(tmp_path)])
    assert foreign.exit_code == 5 and "--host: TorchServe's options, not tfserving's" in foreign.output
    stopped = runner.invoke(app, ["serve", "stop", "--target", "tfserving", "--workdir", str(tmp_path)])
    assert stopped.exit_code == 0 and "no tfserving was running" in stopped.output


def test_package_builds_each_targets_artifact_without_mlflow(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`servegate package --target tfserving`: a user's Keras model (built here) as a SavedModel
    version in TF Serving's layout, with its batching file; no MLflow run is opened."""
    pytest.importorskip("tensorflow")
    from tiny_keras_models import save_wine_classifier, wine_csv

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/never.db")
    model = save_wine_classifier(tmp_path / "wine.keras", epochs=2)
    data = wine_csv(tmp_path / "wine.csv")
    result = runner.invoke(app, ["package", str(model), "--name", "wine", "--version", "3",
                                 "--target", "tfserving", "--compiler", "savedmodel",
                                 "--batch-size", "16", "--eval-data", str(data),
                                 "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    version = tmp_path / "out" / "wine" / "3"
    assert (version / "saved_model.pb").is_file()
    assert "max_batch_size {\n  value: 16\n}" in (version / "batching_params.pbtxt").read_text()
    assert not (tmp_path / "never.db").exists()  # no MLflow run was opened
    again = runner.invoke(app, ["package", str(model), "--name", "wine", "--version", "3",
                                "--target", "tfserving", "--eval-data", str(data),
                                "--output-dir", str(tmp_path / "out")])
    assert again.exit_code == 5 and "versions are immutable" in again.output
