"""``servegate tune`` on TF Serving: a point as ``BatchingParameters`` and back, the request
sample from a version's warm-up records, and the scratch versions' life on ``FakeTFServing``
(a FAKE server: real HTTP + gRPC, real protos, real SavedModels in process) with a Keras model
of the test's own: served unlabelled, then unloaded and their files removed; what an
interrupted tune left is removed next time, a labelled version never."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from servegate.backends.tfserving import STABLE, TFServingBackend, TFServingClient  # noqa: E402
from servegate.backends.tfserving.config import PER_MODEL_BATCHING_FILE  # noqa: E402
from servegate.errors import ConfigError  # noqa: E402
from servegate.packaging.savedmodel import export_savedmodel  # noqa: E402
from servegate.sources.keras_model import KerasModel  # noqa: E402
from servegate.testing.tfserving_fake import FakeTFServing  # noqa: E402
from servegate.tuning import tfserving as tune_tf  # noqa: E402
from servegate.tuning.search import Point  # noqa: E402

NAME = "tunekeras"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 features -> 2 softmax classes, untrained, exported as v1 with its warm-up records."""
    import keras

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input(shape=(7,)), keras.layers.Dense(6, activation="relu"),
                            keras.layers.Dense(2, activation="softmax")])
    x = np.random.default_rng(3).random((20, 7)).astype(np.float32)
    model = KerasModel(model=net, labels=["off", "on"], input_shape=(7,), eval_x=x)
    return export_savedmodel(model, tmp_path_factory.mktemp("export"), NAME, 1).path


@pytest.fixture
def served(exported: Path, tmp_path: Path):
    with FakeTFServing(load_delay_s=0.1) as fake, TFServingBackend(
            TFServingClient(fake.rest_url, fake.grpc_target), tmp_path / "root",
            ready_timeout_s=30) as backend:
        backend.deploy(exported, NAME, "1")
        yield backend


@pytest.mark.parametrize("point", [Point(8, 5, 2), Point(32, 1, 1), Point(2, 20, 4)])
def test_a_point_is_written_as_batching_parameters_and_read_back(point, exported, tmp_path) -> None:
    import shutil

    copy = tmp_path / "v"
    shutil.copytree(exported, copy)
    written = tune_tf.write_point(copy, point)
    assert written == copy / PER_MODEL_BATCHING_FILE
    text = written.read_text()
    assert f"value: {point.max_batch_delay_ms * 1000}" in text
    assert tune_tf.savedmodel_point(copy, cores=16) == point


def test_batch_one_keeps_the_batcher_without_a_wait_and_threads_are_refused(tmp_path) -> None:
    params = tune_tf.point_batching(Point(1, 5, 3))
    assert (params.max_batch_size.value, params.batch_timeout_micros.value,
            params.num_batch_threads.value) == (1, 0, 3)
    assert tune_tf.savedmodel_point(tmp_path, cores=6) == Point(1, 1, 6)  # no file: unbatched
    with pytest.raises(ConfigError, match="server-wide"):
        tune_tf.point_batching(Point(8, 5, 1, threads=2))


def test_request_samples_are_the_warm_up_rows_the_server_accepts(served, exported) -> None:
    samples = tune_tf.request_samples(exported)
    assert len(samples) == 4 and all(len(s["instances"]) == 1 for s in samples)
    assert len(samples[0]["instances"][0]) == 7
    for sample in samples:
        answer = served.client.predict(NAME, sample, version="1")
        assert len(answer["predictions"]) == 1


def test_request_samples_say_what_is_missing(tmp_path) -> None:
    with pytest.raises(ConfigError, match="tf_serving_warmup_requests"):
        tune_tf.request_samples(tmp_path)


def test_a_scratch_version_is_served_unlabelled_then_gone(served, exported) -> None:
    bench = tune_tf.TFServingBench(served, NAME, exported, tune_tf.request_samples(exported), 1.0)
    root = served.model_root
    with bench.serving(Point(4, 2, 2)) as version:
        assert int(version) >= tune_tf.SCRATCH_FIRST
        assert served.labels(NAME) == {STABLE: 1}  # the routes are untouched
        assert {v.version for v in served.versions(NAME)} == {"1", version}
        placed = root / NAME / version
        assert tune_tf.savedmodel_point(placed, cores=1) == Point(4, 2, 2)
        assert not (exported / PER_MODEL_BATCHING_FILE).exists()  # the source as it was
        answer = served.client.predict(NAME, tune_tf.request_samples(exported)[0], version=version)
        assert len(answer["predictions"]) == 1
    assert {v.version for v in served.versions(NAME)} == {"1"}
    assert served.entry(NAME).versions == (1,)
    assert sorted(p.name for p in (root / NAME).iterdir()) == ["1"]


def test_leftovers_of_an_interrupted_tune_are_removed_but_never_a_labelled_version(
        served, exported) -> None:
    import shutil
    import tempfile

    bench = tune_tf.TFServingBench(served, NAME, exported, [], 1.0)
    left = bench._scratch_version()
    with tempfile.TemporaryDirectory() as tmp:  # a scratch version whose tune was killed
        copy = Path(tmp) / str(left)
        shutil.copytree(exported, copy)
        served.serve_unlabelled(copy, NAME, str(left))
    stray = served.model_root / NAME / str(left + 1)  # files placed, never configured
    shutil.copytree(exported, stray)
    assert tune_tf.remove_leftovers(served, NAME) == [str(left), str(left + 1)]
    assert served.entry(NAME).versions == (1,)
    assert sorted(p.name for p in (served.model_root / NAME).iterdir()) == ["1"]
    assert tune_tf.remove_leftovers(served, NAME) == []


def test_tune_refuses_a_threads_axis_on_tf_serving(served, exported) -> None:
    from servegate.tuning.search import SLO, Space

    with pytest.raises(ConfigError, match="server-wide"):
        tune_tf.tune_savedmodel(served, NAME, exported, "1", space=Space(threads=(0, 2)),
                                slo=SLO(100.0, 200.0), max_points=2, seconds=1.0, cores=2)
    assert [v.version for v in served.versions(NAME)] == ["1"]


def test_the_model_root_refuses_to_remove_anything_outside_it(tmp_path) -> None:
    from servegate.backends.model_root import LocalRoot

    root = LocalRoot(tmp_path / "root")
    (tmp_path / "root").mkdir()
    (tmp_path / "keep").mkdir()
    for outside in ("", "..", "../keep", "m/../.."):
        with pytest.raises(ConfigError, match="refusing"):
            root.remove_tree(outside)
    assert (tmp_path / "keep").is_dir()
    root.remove_tree("absent/9")  # nothing there: nothing to do
