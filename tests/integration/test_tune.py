"""`servegate tune` on a real TorchServe: a tiny MLP of the test's own (not a built-in) served as
v1, tuned with scratch versions loaded by Locust, and v1 untouched afterwards."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from pipeline_env import pipeline_home
from rich.console import Console

from servegate.backends.torchserve import TorchServeBackend
from servegate.config import BatchingConfig, PipelineConfig, SLOs
from servegate.packaging.builder import package_model
from servegate.sources import TorchModel
from servegate.tuning.search import SLO, Space, dominates

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


def test_tune_measures_a_frontier_and_leaves_only_the_champion(served) -> None:
    from servegate import api

    backend, rows, state = served
    before = backend.predict(NAME, {"instances": rows[:2].tolist()})
    slo = SLOs(p95_ms=200.0, p99_ms=400.0)
    space = Space(batch_sizes=(1, 4, 16), delays_ms=(1, 5, 80), workers=(1, 2), users=(2, 8))
    tuned = api.tune(NAME, config=PipelineConfig(name=NAME, server="local", slos=slo),
                     space=space, max_points=3, seconds=1.5, console=Console(quiet=True))
    result = tuned.result
    assert tuned.version == "1"

    measured = result.measured
    assert 1 <= len(measured) <= 3
    assert all(m.requests > 0 and m.error_rate == 0.0 for o in measured for m in o.levels)
    assert result.measurements < result.grid_measurements
    # The winner is the fastest measured point within the SLO.
    assert result.winner is not None and result.winner.best is not None
    assert SLO(200.0, 400.0).met(result.winner.best)
    within = [o.best.rps for o in measured if o.best is not None]
    assert result.winner.best.rps == max(within)
    # A delay a lone request would wait too long for (80 ms > 25% of 200) is never applied.
    trapped = [o for o in result.outcomes if o.point.max_batch_delay_ms == 80]
    assert trapped and all(o.status == "pruned" and not o.levels for o in trapped)
    # No frontier point is beaten on both axes by another measured point.
    for a in result.frontier:
        assert not any(dominates(b.best, a.best) for b in measured if b is not a and b.best)
    assert all(o.status != "frontier" for o in result.by_status("dominated"))

    # Scratch versions are gone (server and model store); the champion serves as before.
    assert [v.version for v in backend.versions(NAME)] == ["1"]
    assert backend.default_version(NAME) == "1"
    assert sorted(p.name for p in backend.delivery.model_store.glob(f"{NAME}.v*.mar")) == [f"{NAME}.v1.mar"]
    after = backend.predict(NAME, {"instances": rows[:2].tolist()})
    assert after == before

    # Logged to MLflow: the winner's figures, the plot and the table of points.
    run = mlflow.get_run(tuned.run_id)
    assert run.data.metrics["winner.rps"] == pytest.approx(result.winner.best.rps)
    assert run.data.params["tune.batch_size"] == str(result.winner.point.batch_size)
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(tuned.run_id, "tune")}
    assert files == {"tune/frontier.png", "tune/frontier.json"}
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{tuned.run_id}/tune/frontier.json"))
    assert logged["winner"] == {"batch_size": result.winner.point.batch_size,
                                "max_batch_delay_ms": result.winner.point.max_batch_delay_ms,
                                "workers": result.winner.point.workers}
    print("\n" + "\n".join(f"{o.point.label:>14} {o.status:>11} "
                           + " ".join(f"{m.users}u:{m.rps:.0f}rps/p95 {m.p95_ms:.0f}ms" for m in o.levels)
                           + f"  {o.reason}" for o in result.outcomes if o.levels or o.status == "pruned"))
    print(f"costs: {result.costs}; {result.measurements} of {result.grid_measurements} measurements")
