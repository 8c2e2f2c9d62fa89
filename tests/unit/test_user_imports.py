"""Importing models the project does not ship, in every format MLflow 3 and torch save them."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import user_models

from servegate.config import SourceSettings
from servegate.errors import ConfigError, SourceError
from servegate.sources import load_torch_model
from servegate.sources.schema import Rows


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_experiment("user-imports")
    try:
        yield folder
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def wine() -> user_models.Trained:
    return user_models.wine_classifier(epochs=60)


def _csv(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> str:
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    frame["label"] = y
    frame.to_csv(tmp_path / "eval.csv", index=False)
    return str(tmp_path / "eval.csv")


def test_mlflow_default_pt2_imports_with_the_users_eval_data(tracking, wine, tmp_path: Path) -> None:
    version = user_models.log_pytorch(wine.module, wine.x_test[:4], "wine")
    model = load_torch_model(f"models:/wine/{version}",
                             eval_data=_csv(tmp_path, wine.x_test, wine.y_test))
    assert model.program is not None  # compiled from directly, not re-exported
    assert model.task == "classification" and model.input_shape == (13,)
    assert model.labels == ["0", "1", "2"] and model.eval_y is not None
    assert len(model.eval_y) == len(wine.y_test)
    expected = wine.module(torch.from_numpy(wine.x_test)).detach().numpy()
    np.testing.assert_allclose(model.reference(model.eval_x), expected, atol=1e-5)
    assert model.metrics["accuracy"] > 0.8
    # no eval_data and no logged dataset: the input example alone, said loudly
    with pytest.raises(ConfigError, match="pass task= one of classification, regression"):
        load_torch_model(f"models:/wine/{version}")  # scores without labels: ambiguous
    fallback = load_torch_model(f"models:/wine/{version}", task="classification")
    assert fallback.eval_note.startswith("NO EVALUATION DATA") and fallback.eval_y is None
    assert len(fallback.eval_x) == 4


def test_pickle_needs_trust(tracking, wine) -> None:
    version = user_models.log_pytorch(wine.module, wine.x_test[:4], "wine-pickle",
                                      serialization_format="pickle")
    with pytest.raises(SourceError, match="trust_pickle=true"):
        load_torch_model(f"models:/wine-pickle/{version}")
    model = load_torch_model(f"models:/wine-pickle/{version}", trust_pickle=True, task="classification")
    assert model.program is None and model.task == "classification"


def test_regressor_and_named_labels(tracking, tmp_path: Path) -> None:
    trained = user_models.diabetes_regressor(epochs=100)
    version = user_models.log_pytorch(trained.module, trained.x_test[:4], "diabetes")
    np.savez(tmp_path / "eval.npz", x=trained.x_test, y=trained.y_test)
    model = load_torch_model(f"models:/diabetes/{version}", eval_data=str(tmp_path / "eval.npz"))
    assert model.task == "regression" and model.eval_y.shape == (len(trained.y_test), 1)
    assert model.metrics["rmse"] > 0 and model.metrics["mae"] > 0


def test_two_inputs_from_the_signature(tracking, tmp_path: Path) -> None:
    trained = user_models.two_input_classifier(epochs=40)
    example = {k: v[:3] for k, v in trained.x_test.items()}
    version = user_models.log_pytorch(trained.module, example, "two-inputs")
    np.savez(tmp_path / "eval.npz", **trained.x_test, y=trained.y_test)
    model = load_torch_model(f"models:/two-inputs/{version}", eval_data=str(tmp_path / "eval.npz"),
                             labels="red,white,rose")
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [
        ("features", (13,), "float32"), ("category", (), "int64")]
    assert isinstance(model.eval_x, Rows) and model.labels == ["red", "white", "rose"]
    assert set(model.request_rows(model.example_batch(1))[0]) == {"features", "category"}
    with pytest.raises(ConfigError, match="2 labels given for a model with 3 outputs"):
        load_torch_model(f"models:/two-inputs/{version}", eval_data=str(tmp_path / "eval.npz"),
                         labels="a,b")


def test_files_pt2_torch_save_and_state_dict(wine, tmp_path: Path) -> None:
    np.savez(tmp_path / "eval.npz", x=wine.x_test, y=wine.y_test)
    eval_data = str(tmp_path / "eval.npz")
    program = torch.export.export(wine.module, (torch.from_numpy(wine.x_test[:2]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "wine.pt2")
    exported = load_torch_model(str(tmp_path / "wine.pt2"), eval_data=eval_data)
    assert exported.program is not None and exported.inputs[0].shape == (13,)

    torch.save(wine.module, tmp_path / "wine.pt")
    with pytest.raises(SourceError, match="trust_pickle"):
        load_torch_model(str(tmp_path / "wine.pt"), eval_data=eval_data)
    trusted = load_torch_model(str(tmp_path / "wine.pt"), eval_data=eval_data, trust_pickle=True)
    assert trusted.task == "classification" and trusted.input_shape == (13,)

    torch.save(wine.module.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(SourceError, match="model_class=file.py:Class"):
        load_torch_model(str(tmp_path / "weights.pt"), eval_data=eval_data)
    code = Path(user_models.__file__)
    stated = load_torch_model(str(tmp_path / "weights.pt"), eval_data=eval_data,
                              model_class=f"{code}:WineNet")
    assert stated.model_file == code and stated.model_class == "user_models.WineNet"
    np.testing.assert_allclose(stated.reference(stated.eval_x), trusted.reference(trusted.eval_x), atol=1e-6)


def test_a_pickled_module_without_signature_needs_eval_data(wine, tmp_path: Path) -> None:
    torch.save(wine.module, tmp_path / "wine.pt")
    with pytest.raises(SourceError, match="pass eval_data"):
        load_torch_model(str(tmp_path / "wine.pt"), trust_pickle=True)


def test_options_and_fields_are_exclusive() -> None:
    with pytest.raises(TypeError):
        load_torch_model("builtin:digits", SourceSettings(), task="classification")


def test_a_program_exported_in_training_mode_serves_as_after_eval(tmp_path: Path) -> None:
    """A user who exported without ``model.eval()``: dropout and batch norm are traced with their
    training flags on; the import turns them off, so the program (what compilers start from) and
    its module answer as the eval-mode model does, the same every call."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                              torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    net.train()(torch.from_numpy(x))  # running statistics that differ from one batch's
    program = torch.export.export(net, (torch.from_numpy(x[:4]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "trained.pt2")
    np.savez(tmp_path / "eval.npz", x=x, y=np.arange(40) % 3)

    imported = load_torch_model(str(tmp_path / "trained.pt2"), eval_data=str(tmp_path / "eval.npz"))
    expected = net.eval()(torch.from_numpy(x)).detach().numpy()
    for run in (imported.module, imported.program.module()):
        np.testing.assert_allclose(run(torch.from_numpy(x)).detach().numpy(), expected, atol=1e-5)
    one_row = imported.module(torch.from_numpy(x[:1])).detach().numpy()  # no batch statistics
    np.testing.assert_allclose(one_row, expected[:1], atol=1e-5)
    # what compilers make of the program (ONNX from an ExportedProgram included), loaded as the
    # worker loads it, answers the same
    from servegate.compilers import get_compiler
    from servegate.compilers.select import load_predictor

    for name in ("export", "onnx"):
        artifact = get_compiler(name).compile(imported, tmp_path / name, max_batch=16)
        answered = load_predictor(artifact, threads=1)(x[:16])[0]
        np.testing.assert_allclose(answered, expected[:16], atol=1e-4, err_msg=name)

    decomposed = torch.export.export(net.train(), (torch.from_numpy(x[:4]),)).run_decompositions()
    torch.export.save(decomposed, tmp_path / "decomposed.pt2")
    with pytest.raises(SourceError, match="exported in training mode.*model.eval"):
        load_torch_model(str(tmp_path / "decomposed.pt2"), eval_data=str(tmp_path / "eval.npz"))
