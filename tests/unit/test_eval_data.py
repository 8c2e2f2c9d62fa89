"""The user's evaluation data: each format, each mismatch, and task inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from servegate.errors import ConfigError
from servegate.sources.eval_data import conform, labels_as_indices, read_table, texts_from
from servegate.sources.schema import ModelSchema, Rows, TensorSpec
from servegate.sources.tasks import infer_task

TABULAR = ModelSchema((TensorSpec("input", (3,), "float32"),))
TWO_INPUTS = ModelSchema((TensorSpec("features", (3,), "float32"), TensorSpec("category", (), "int64")))


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.standard_normal((6, 3)), columns=["b", "a", "c"])
    data["label"] = [0, 1, 2, 0, 1, 2]
    return data


def test_npz_single_input_with_labels(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(tmp_path / "eval.npz", x=x, y=np.array([0, 1, 0, 1]))
    data = conform(read_table(str(tmp_path / "eval.npz")), TABULAR)
    assert data.x.dtype == np.float32 and data.x.shape == (4, 3)
    np.testing.assert_array_equal(data.y, [0, 1, 0, 1])


@pytest.mark.parametrize("keys", [("x0", "x1"), ("features", "category")])
def test_npz_several_inputs_by_position_or_name(tmp_path: Path, keys: tuple[str, str]) -> None:
    np.savez(tmp_path / "eval.npz", **{keys[0]: np.ones((5, 3)), keys[1]: np.arange(5)})
    data = conform(read_table(str(tmp_path / "eval.npz")), TWO_INPUTS)
    assert isinstance(data.x, Rows) and len(data.x) == 5 and data.y is None
    assert data.x.arrays[1].dtype == np.int64
    assert data.x[:2].tolist()[1] == {"features": [1.0, 1.0, 1.0], "category": 1}


def test_npz_without_pickle_and_missing_inputs_say_so(tmp_path: Path) -> None:
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="without pickle"):
        read_table(str(tmp_path / "objects.npz"))
    np.savez(tmp_path / "eval.npz", features=np.ones((5, 3)))
    with pytest.raises(ConfigError, match=r"name them \['features', 'category'\]"):
        conform(read_table(str(tmp_path / "eval.npz")), TWO_INPUTS)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_columns_and_label_column(tmp_path: Path, frame: pd.DataFrame, suffix: str) -> None:
    path = tmp_path / f"eval{suffix}"
    renamed = frame.rename(columns={"label": "target"})
    renamed.to_csv(path, index=False) if suffix == ".csv" else renamed.to_parquet(path)
    data = conform(read_table(str(path), label_column="target"), TABULAR)
    np.testing.assert_allclose(data.x, frame[["b", "a", "c"]].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(data.y, frame["label"])
    # a column signature orders the features by name
    ordered = conform(read_table(str(path), label_column="target"), TABULAR, feature_columns=["a", "b", "c"])
    np.testing.assert_allclose(ordered.x[:, 0], frame["a"], rtol=1e-6)


def test_shape_and_dtype_mismatches_name_the_input(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame["extra"] = 1.0
    frame.to_csv(tmp_path / "wide.csv", index=False)
    with pytest.raises(ConfigError,
                       match=r"input input has rows of shape \[4\], the model takes input: float32\[3\]"):
        conform(read_table(str(tmp_path / "wide.csv")), TABULAR)
    frame.assign(extra="x").to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ConfigError, match="must be numeric"):
        conform(read_table(str(tmp_path / "text.csv")), TABULAR)
    np.savez(tmp_path / "frac.npz", x0=np.ones((2, 3)), x1=np.array([0.5, 1.0]))
    with pytest.raises(ConfigError, match="input category holds fractional values"):
        conform(read_table(str(tmp_path / "frac.npz")), TWO_INPUTS)
    np.savez(tmp_path / "labels.npz", x=np.ones((3, 3)), y=np.array([1, 2]))
    with pytest.raises(ConfigError, match="2 labels for 3 rows"):
        conform(read_table(str(tmp_path / "labels.npz")), TABULAR)
    with pytest.raises(ConfigError, match="not found"):
        read_table(str(tmp_path / "absent.csv"))
    (tmp_path / "eval.txt").write_text("1,2,3")
    with pytest.raises(ConfigError, match="unsupported file type"):
        read_table(str(tmp_path / "eval.txt"))


def test_flattened_image_columns_take_the_input_shape(tmp_path: Path) -> None:
    np.savez(tmp_path / "images.npz", x=np.zeros((4, 64)), y=np.arange(4))
    schema = ModelSchema((TensorSpec("image", (1, 8, 8), "float32"),))
    assert conform(read_table(str(tmp_path / "images.npz")), schema).x.shape == (4, 1, 8, 8)


def test_jsonl_texts_with_string_labels(tmp_path: Path) -> None:
    rows = pd.DataFrame({"text": ["good film", "awful", "fine"], "label": ["pos", "neg", "pos"]})
    rows.to_json(tmp_path / "eval.jsonl", orient="records", lines=True)
    data = texts_from(read_table(str(tmp_path / "eval.jsonl")))
    assert list(data.x) == ["good film", "awful", "fine"]
    np.testing.assert_array_equal(labels_as_indices(data.y, ["neg", "pos"], data.source), [1, 0, 1])
    with pytest.raises(ConfigError, match="not the model's class names"):
        labels_as_indices(data.y, ["negative", "positive"], data.source)
    rows.drop(columns="text").to_csv(tmp_path / "no_text.csv", index=False)
    with pytest.raises(ConfigError, match="no 'text' column"):
        texts_from(read_table(str(tmp_path / "no_text.csv")))


def test_mlflow_artifact_uri_is_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("eval-data")  # not an experiment id cached from another store
    try:
        np.savez(tmp_path / "eval.npz", x=np.ones((2, 3)), y=np.array([0, 1]))
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "eval.npz"), artifact_path="data")
        data = conform(read_table(f"runs:/{run.info.run_id}/data/eval.npz"), TABULAR)
        assert data.x.shape == (2, 3) and data.source.startswith("runs:/")
        from servegate.sources.eval_data import dataset_from_run

        with mlflow.start_run() as logged:
            uri = f"{mlflow.get_artifact_uri()}/data/eval.npz"
            mlflow.log_artifact(str(tmp_path / "eval.npz"), artifact_path="data")
            mlflow.log_input(mlflow.data.from_numpy(np.ones((2, 3)), targets=np.array([0, 1]), source=uri),
                             context="eval")
        table = dataset_from_run(logged.info.run_id)
        assert table is not None and conform(table, TABULAR).y.tolist() == [0, 1]
        assert dataset_from_run(run.info.run_id) is None
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.parametrize(("outputs", "labels", "names", "expected"), [
    ((np.zeros((4, 3)),), np.array([0, 2, 1, 0]), None, "classification"),
    ((np.zeros((4, 3)),), None, ["a", "b", "c"], "classification"),
    ((np.zeros((4, 1)),), None, None, "regression"),
    ((np.zeros((4,)),), np.array([0.5, 1.5, 2.0, 3.0]), None, "regression"),
    ((np.zeros((4, 2)),), np.array([[0.1, 0.2]] * 4), None, "regression"),
    ((np.zeros((4, 3)), np.zeros((4, 2))), None, None, "tensor"),
])
def test_task_inference(outputs, labels, names, expected) -> None:
    assert infer_task(outputs, labels, given=None, class_names=names) == expected


def test_ambiguous_or_wrong_task_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="pass task= one of classification, regression, tensor"):
        infer_task((np.zeros((4, 3)),), None, given=None)
    with pytest.raises(ConfigError, match="pass task= one of"):
        infer_task((np.zeros((4, 3, 5)),), None, given=None)
    with pytest.raises(ConfigError, match="does not apply to a tensor model"):
        infer_task((np.zeros((4, 3)),), None, given="embedding")
    with pytest.raises(ConfigError, match="needs one output of class scores"):
        infer_task((np.zeros((4, 1)),), None, given="classification")
    assert infer_task((np.zeros((4, 3)),), None, given="tensor-classification") == "classification"


def test_a_built_in_model_is_gated_on_the_eval_data_it_is_given(tmp_path: Path) -> None:
    """Once ignored silently (issue 24): builtin:digits with eval_data gates on those rows."""
    from sklearn.datasets import load_digits

    from servegate.sources import load_torch_model

    digits = load_digits()
    x, y = (digits.data[-40:] / 16.0).astype(np.float32), digits.target[-40:]
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    model = load_torch_model("builtin:digits", eval_data=str(tmp_path / "mine.npz"))
    np.testing.assert_array_equal(model.eval_x, x)
    np.testing.assert_array_equal(model.eval_y, y)
    assert "mine.npz (40 rows, labelled)" in model.eval_note
    assert model.metrics["accuracy"] == pytest.approx(
        float((model.reference(x).argmax(1) == y).mean()))
    np.savez(tmp_path / "wide.npz", x=np.zeros((3, 65), np.float32))
    with pytest.raises(ConfigError, match="rows of shape \\[65\\]"):
        load_torch_model("builtin:digits", eval_data=str(tmp_path / "wide.npz"))
