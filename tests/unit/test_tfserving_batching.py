"""``batch_size`` reaches the TF Serving a run deploys to, or the run says exactly why not
(issue 20, item 2): every version carries ``batching_params.pbtxt``, which a server started with
per-model batching reads when it loads the version; an attached server's flags cannot be read
(``unverified``), a reused local server started without them does not apply it (``not
applied``); the run prints the notice and records the outcome in MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from servegate.backends.tfserving import local as tfs_local  # noqa: E402
from servegate.backends.tfserving.config import PER_MODEL_BATCHING_FILE, read_text_proto  # noqa: E402
from servegate.backends.tfserving.local import LocalTFServing, TFServingState  # noqa: E402
from servegate.backends.tfserving.reach import NEEDED_FLAGS, batching_reach, xla_refusal  # noqa: E402
from servegate.config import TFServingSettings  # noqa: E402
from servegate.tfserving_protos.batching_pb2 import BatchingParameters  # noqa: E402

ROOT = "/srv/models"
FILE = f"{ROOT}/m/1/{PER_MODEL_BATCHING_FILE}"  # where the deployed version keeps it
URL = "SERVEGATE_TFSERVING_URL"


def recorded(per_model_batching: bool) -> TFServingState:
    return TFServingState("binary", "1", "http://127.0.0.1:1", "unix:/x", "/m", "/m",
                          per_model_batching=per_model_batching)


@pytest.fixture
def no_attach(monkeypatch) -> None:
    monkeypatch.delenv(URL, raising=False)


def test_an_attached_server_is_told_what_it_needs(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(URL, "http://tfs.example:8501")
    monkeypatch.setenv("SERVEGATE_TFSERVING_MODEL_ROOT", ROOT)
    reach = batching_reach(TFServingSettings(workdir=tmp_path), "auto", 16, "m", "1")
    assert reach.status == "unverified"
    assert reach.notice is not None
    for words in ("batch_size=16", FILE, NEEDED_FLAGS, "http://tfs.example:8501",
                  f"--batching_parameters_file={FILE}"):
        assert words in reach.notice
    # XLA: auto leaves it out for the attached server, not for a local one started with the flag
    assert "http://tfs.example:8501" in (xla_refusal(TFServingSettings(workdir=tmp_path), "auto") or "")
    assert xla_refusal(TFServingSettings(workdir=tmp_path), "local") is None
    assert tfs_local.TFSERVING_XLA_FLAG in (
        xla_refusal(TFServingSettings(workdir=tmp_path, xla=False), "local") or "")
    # server=local ignores the attach variables: the local server's rules apply
    assert batching_reach(TFServingSettings(workdir=tmp_path), "local", 16, "m", "1").status == "applied"


def test_a_reused_local_server_without_per_model_batching_says_so(no_attach, monkeypatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(LocalTFServing, "state", lambda self: recorded(False))
    reach = batching_reach(TFServingSettings(workdir=tmp_path), "auto", 16, "m", "1")
    assert reach.status == "not applied"
    assert reach.notice is not None and "batch_size=16 is not applied" in reach.notice
    assert str(tmp_path.resolve() / "server.json") in reach.notice  # what to stop
    assert str(tmp_path.resolve() / "models" / "m" / "1" / PER_MODEL_BATCHING_FILE) in reach.notice
    monkeypatch.setattr(LocalTFServing, "state", lambda self: recorded(True))
    reach = batching_reach(TFServingSettings(workdir=tmp_path), "auto", 16, "m", "1")
    assert (reach.status, reach.notice) == ("applied", None)


def test_a_state_file_written_before_per_model_batching_reads_as_without_it(tmp_path: Path) -> None:
    import json
    from dataclasses import asdict

    old = asdict(recorded(True))
    del old["per_model_batching"]
    local = LocalTFServing(TFServingSettings(workdir=tmp_path))
    local.workdir.mkdir(parents=True, exist_ok=True)
    local.state_path.write_text(json.dumps(old))
    assert local._recorded() == recorded(False)


def test_the_build_writes_the_batching_into_the_version_and_records_the_outcome(
        monkeypatch, mlflow_store: Path) -> None:
    """TFServingTarget.build for an attached server: the version carries the run's batching,
    the run prints the notice and records it in MLflow (param and tag)."""
    import keras
    from rich.console import Console

    from servegate.config import BatchingConfig, PipelineConfig
    from servegate.sources.keras_model import KerasModel
    from servegate.targets import get_target

    monkeypatch.setenv(URL, "http://tfs.example:8501")
    monkeypatch.setenv("SERVEGATE_TFSERVING_MODEL_ROOT", ROOT)
    tmp_path = mlflow_store
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2, activation="softmax")])
    model = KerasModel(model=net, labels=["no", "yes"], input_shape=(3,),
                       eval_x=np.random.default_rng(0).random((16, 3)).astype(np.float32))
    config = PipelineConfig(target="tfserving", name="tiny", compiler="savedmodel",
                            batching=BatchingConfig(batch_size=16, max_batch_delay_ms=7),
                            tfserving=TFServingSettings(workdir=tmp_path / "tfs"))
    console = Console(record=True, width=400)
    with mlflow.start_run() as run:
        built = get_target("tfserving").build(model, config, "3", tmp_path / "build", console)
    params = mlflow.get_run(run.info.run_id).data.params
    tags = mlflow.get_run(run.info.run_id).data.tags
    written = read_text_proto(built.path / PER_MODEL_BATCHING_FILE, BatchingParameters)
    assert (written.max_batch_size.value, written.batch_timeout_micros.value) == (16, 7000)
    assert (params["tfserving.batching"], params["compiler.chosen"]) == ("unverified", "savedmodel")
    assert f"batch_size=16 is written into the version ({ROOT}/tiny/3/" in tags[
        "servegate.tfserving.batching"]
    printed = console.export_text()
    assert "notice:" in printed and "batch_size=16" in printed and NEEDED_FLAGS in printed
