"""`servegate tune` on a real TorchServe: a tiny MLP of the test's own (not a built-in) served as
v1, tuned with scratch versions loaded by Locust, and v1 untouched afterwards."""

from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pytest
import torch
from pipeline_env import pipeline_home
from rich.console import Console
from typer.testing import CliRunner

from servegate.backends.torchserve import TorchServeBackend
from servegate.config import BatchingConfig
from servegate.packaging.builder import package_model
from servegate.sources import TorchModel
from servegate.tuning.search import GAIN

pytestmark = pytest.mark.integration
NAME = "tunemlp"


class TinyMLP(torch.nn.Module):
    """16 features -> 4 classes, random weights: the serving path is what is tuned."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A TorchServe of this module's own (with an MLflow store) serving the MLP as v1, with
    batching at 4 / 5 ms."""
    torch.manual_seed(0)
    rows = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    model = TorchModel(module=TinyMLP().eval(), input_shape=(16,), labels=["a", "b", "c", "d"],
                       eval_x=rows, source_uri="test:tiny-mlp")
    with pipeline_home(tmp_path_factory.mktemp("tune")) as (home, server):
        mlflow.set_experiment("tune-test")
        state = server.start()
        backend = TorchServeBackend.from_state(state)
        archive = package_model(model, name=NAME, version="1", compiler="eager",
                                batching=BatchingConfig(batch_size=4, max_batch_delay_ms=5),
                                output_dir=home / "built")
        backend.deploy(archive, NAME, "1")
        try:
            yield backend, rows, state
        finally:
            backend.close()


def _label(point: dict) -> str:
    return f"b{point['batch_size']}-d{point['max_batch_delay_ms']}ms-w{point['workers']}"


def _dominates(a: dict, b: dict) -> bool:
    return a["rps"] >= b["rps"] and a["p95_ms"] <= b["p95_ms"] and (
        a["rps"] > b["rps"] or a["p95_ms"] < b["p95_ms"])


def test_tune_measures_a_frontier_and_leaves_only_the_champion(served) -> None:
    """`servegate tune` as a person runs it (the CLI, in this process), then its MLflow run."""
    from servegate.cli import app

    backend, rows, state = served
    before = backend.predict(NAME, {"instances": rows[:2].tolist()})
    shown = CliRunner().invoke(app, [
        "tune", NAME, "--p95-ms", "200", "--p99-ms", "400", "--max-points", "3",
        "--duration-s", "1.5", "--users", "2,8", "--batch-sizes", "1,4,16",
        "--delays-ms", "1,5,80", "--workers", "1,2", "--server", "local", "--all"])
    print(shown.output)
    assert shown.exit_code == 0, shown.output
    run_id = re.search(r"MLflow run: ([0-9a-f]{32})", shown.output)[1]
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/tune/frontier.json"))
    points = logged["points"]
    measured = [p for p in points if p["levels"]]

    assert 1 <= len(measured) <= 3
    assert all(m["requests"] > 0 and m["error_rate"] == 0.0 for p in measured for m in p["levels"])
    assert logged["measurements"] < logged["grid_measurements"] == 2 * (2 + 6 + 6)  # users x points
    # The search's best met the archive's own configuration (b4, 5 ms, 1 worker) in alternating
    # rounds: the winner if it beat it, else the CLI says to keep the current configuration.
    confirmation = logged["confirmation"]
    if confirmation is not None:
        assert len(confirmation["winner"]) == len(confirmation["current"]) == 3
        assert all(m["requests"] > 0 for m in confirmation["winner"] + confirmation["current"])
        assert confirmation["incumbent"] == {"batch_size": 4, "max_batch_delay_ms": 5,
                                             "workers": 1, "threads": 0}
    if logged["winner"] is None:
        assert confirmation is not None and not confirmation["kept"], logged
        assert "keep the current configuration b4-d5ms-w1" in shown.output
    else:
        assert confirmation is None or confirmation["kept"]
        # the winner is the fastest measured point within the SLO, or one within 5% of it (a tie
        # on one reading each) that is quicker at the lowest load level; the CLI says how to use it
        winner = next(p for p in points if p["point"] == logged["winner"])
        best = winner["best"]
        assert best["p95_ms"] <= 200 and best["p99_ms"] <= 400 and best["error_rate"] == 0
        fastest = max((p for p in measured if p["best"]), key=lambda p: p["best"]["rps"])
        assert best["rps"] >= (1 - GAIN) * fastest["best"]["rps"]
        if winner is not fastest:
            assert winner["levels"][0]["p95_ms"] <= fastest["levels"][0]["p95_ms"]
        w = logged["winner"]
        assert (f"mlflow run pipelines/deploy -P batch_size={w['batch_size']} "
                f"-P max_batch_delay_ms={w['max_batch_delay_ms']}") in shown.output
    # A delay a lone request would wait too long for (80 ms > 25% of 200) is never applied.
    trapped = [p for p in points if p["point"]["max_batch_delay_ms"] == 80]
    assert trapped and all(p["status"] == "pruned" and not p["levels"] for p in trapped)
    # No frontier point is beaten on both axes by another measured point; the beaten are marked.
    for a in (p for p in points if p["status"] == "frontier"):
        assert not any(_dominates(b["best"], a["best"]) for b in measured if b is not a and b["best"])
    for d in (p for p in points if p["status"] == "dominated"):
        better = next(b for b in measured if d["reason"] == f"dominated by {_label(b['point'])}")
        assert _dominates(better["best"], d["best"])

    # Scratch versions are gone (server and model store); the champion serves as before.
    assert [v.version for v in backend.versions(NAME)] == ["1"]
    assert backend.default_version(NAME) == "1"
    assert sorted(p.name for p in backend.delivery.model_store.glob(f"{NAME}.v*.mar")) == [f"{NAME}.v1.mar"]
    assert backend.predict(NAME, {"instances": rows[:2].tolist()}) == before

    # Logged to MLflow: the winner as params and metrics, the plot beside the table of points.
    run = mlflow.get_run(run_id)
    if logged["winner"] is not None:
        assert run.data.metrics["winner.rps"] == pytest.approx(best["rps"])
        assert run.data.params["tune.batch_size"] == str(w["batch_size"])
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "tune")}
    assert files == {"tune/frontier.png", "tune/frontier.json"}


def test_tune_true_in_the_pipeline_serves_the_challenger_with_the_winner(served, tmp_path) -> None:
    """`tune=true`: the challenger's batching is searched before it is deployed and gated, and
    it is served (and recorded in the registry) with the winner's."""
    from mlflow import MlflowClient

    from servegate import api
    from servegate.config import LoadSettings, PipelineConfig, SLOs
    from servegate.registry import ARCHIVE_SHA256_TAG, ARCHIVE_TAG
    from servegate.tuning.measure import archive_batching

    backend, rows, _ = served
    program = torch.export.export(TinyMLP().eval(), (torch.from_numpy(rows[:2]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},))
    torch.export.save(program, tmp_path / "mlp.pt2")
    np.savez(tmp_path / "eval.npz", x=rows)
    result = api.deploy(PipelineConfig(
        model=str(tmp_path / "mlp.pt2"), eval_data=str(tmp_path / "eval.npz"), name="tunepipe",
        task="tensor", compiler="eager", server="local",
        tune=True, tune_points=2, slos=SLOs(p95_ms=200.0, p99_ms=400.0),
        load=LoadSettings(users=4, seconds=3, rounds=1)), Console(quiet=True))
    assert result.decision == "promoted"
    runs = mlflow.search_runs(experiment_names=["tune-test"], filter_string="tags.mlflow.runName = 'tune'",
                              output_format="list")
    assert len(runs) == 1
    tuned = runs[0].data.params
    print({k: v for k, v in tuned.items() if k.startswith("tune.")},
          {k: round(v, 2) for k, v in runs[0].data.metrics.items()
           if "." not in k or k.startswith(("winner", "cost"))})
    store = backend.delivery.model_store
    served_config = archive_batching(store / f"tunepipe.v{result.version}.mar")
    if "tune.batch_size" in tuned:  # the winner beat the run's own batching when confirmed
        assert served_config["batchSize"] == int(tuned["tune.batch_size"])
        assert served_config["maxBatchDelay"] == int(tuned["tune.max_batch_delay_ms"])
        assert served_config["minWorkers"] == int(tuned["tune.workers"])
    else:  # it did not: the archive keeps the batching it was built with
        logged = json.loads(mlflow.artifacts.load_text(f"{runs[0].info.artifact_uri}/tune/frontier.json"))
        assert logged["confirmation"] is not None and not logged["confirmation"]["kept"]
        built = BatchingConfig()
        assert (served_config["batchSize"], served_config["maxBatchDelay"]) == (
            built.batch_size, built.max_batch_delay_ms)
    tags = MlflowClient().get_model_version("tunepipe", result.version).tags
    # the registry's archive is the tuned one (logged by the tune run) or, kept, the built one
    assert tags[ARCHIVE_TAG].startswith(runs[0].info.artifact_uri) == ("tune.batch_size" in tuned)
    from servegate.integrity import artifact_sha256

    assert tags[ARCHIVE_SHA256_TAG] == artifact_sha256(store / f"tunepipe.v{result.version}.mar")
    assert [v.version for v in backend.versions("tunepipe")] == [result.version]
    assert sorted(p.name for p in store.glob("tunepipe.v*.mar")) == [f"tunepipe.v{result.version}.mar"]
    assert len(backend.predict("tunepipe", {"instances": rows[:3].tolist()})["predictions"]) == 3
