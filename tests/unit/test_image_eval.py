"""Image models are gated as they are served (issue 24): a user's RGB CNN logged with MLflow
(pt2), its held-out set given as tensors (.npz), an ImageFolder, a parquet column of image bytes
or a csv of paths; the gate's rows are encoded images and the reference runs on what the
worker's own preprocessing makes of them (real MLflow on SQLite, no server)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import user_models

from servegate.config import PipelineConfig
from servegate.errors import ConfigError
from servegate.sources import load_torch_model

SIZE = 32


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[user_models.Trained, Path]]:
    import mlflow

    folder = tmp_path_factory.mktemp("images")
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    try:
        mlflow.create_experiment("photos", artifact_location=(folder / "artifacts").as_uri())
        mlflow.set_experiment("photos")
        trained = user_models.photo_classifier(SIZE, epochs=5)
        assert user_models.log_pytorch(trained.module, trained.x_test[:4], "photos") == "1"
        yield trained, folder
    finally:
        mlflow.set_tracking_uri(None)


def _options(eval_data: Path, **more: object) -> PipelineConfig:
    return PipelineConfig(model="models:/photos/1", task="image-classification",
                          image={"size": (SIZE, SIZE), "mean": [0, 0, 0], "std": [1, 1, 1]},
                          eval_data=str(eval_data), **more)


def _worker(data: bytes) -> np.ndarray:
    from servegate._resources import handler_module

    return handler_module("image_classifier").decode_image(
        data, {"size": [SIZE, SIZE], "mode": "RGB", "scale": 1 / 255, "mean": [0, 0, 0],
               "std": [1, 1, 1]})


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(
        buffer, format=fmt)
    return buffer.getvalue()


def _check_served_form(model, source_rows: int) -> None:
    """eval_x is the worker's decode of the images the gate sends, row for row."""
    rows = model.request_rows(model.eval_x)
    assert len(rows) == len(model.eval_x) == source_rows
    images = [base64.b64decode(r["b64"]) for r in rows]
    assert images == list(model.eval_images)
    np.testing.assert_array_equal(np.stack([_worker(b) for b in images]), model.eval_x)


def test_tensor_rows_are_sent_as_lossless_png(registered, tmp_path: Path) -> None:
    trained, _ = registered
    np.savez(tmp_path / "photos.npz", x=trained.x_test, y=trained.y_test)
    model = load_torch_model("models:/photos/1", _options(tmp_path / "photos.npz"))
    assert model.task == "image-classification" and model.sends_images
    assert all(data.startswith(b"\x89PNG") for data in model.eval_images)
    _check_served_form(model, len(trained.x_test))
    # 8-bit pixels: within half a step of the user's floats, and the labels unchanged
    assert np.abs(model.eval_x - trained.x_test).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(model.eval_y, trained.y_test)
    other = model.request_rows(model.eval_x[:3])  # a slice (load samples): encoded again, same
    assert other == model.request_rows(model.eval_x)[:3]


def test_an_image_folder_of_png_and_jpeg_files(registered, tmp_path: Path) -> None:
    trained, _ = registered
    names = ["red", "green", "blue"]
    for i, (pixels, label) in enumerate(zip(trained.x_test, trained.y_test, strict=True)):
        folder = tmp_path / "folder" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if i % 2 else "PNG"
        (folder / f"{i:03d}.{fmt.lower()}").write_bytes(_encode(pixels, fmt))
    model = load_torch_model("models:/photos/1", _options(tmp_path / "folder"))
    assert model.labels == sorted(names)  # the folders, in name order, as ImageFolder does
    _check_served_form(model, len(trained.x_test))
    assert {data[:3] for data in model.eval_images} == {b"\x89PN", b"\xff\xd8\xff"}
    classes = sorted(names)
    assert sorted(model.eval_y.tolist()) == sorted(classes.index(names[y]) for y in trained.y_test)


def test_a_parquet_column_of_bytes_and_a_csv_of_paths(registered, tmp_path: Path) -> None:
    trained, _ = registered
    images = [_encode(p, "PNG") for p in trained.x_test]
    pd.DataFrame({"image": images, "label": trained.y_test}).to_parquet(tmp_path / "e.parquet")
    model = load_torch_model("models:/photos/1", _options(tmp_path / "e.parquet"))
    _check_served_form(model, len(images))
    (tmp_path / "pics").mkdir()
    for i, data in enumerate(images):
        (tmp_path / "pics" / f"{i}.png").write_bytes(data)
    pd.DataFrame({"image": [f"pics/{i}.png" for i in range(len(images))],
                  "label": trained.y_test}).to_csv(tmp_path / "e.csv", index=False)
    from_csv = load_torch_model("models:/photos/1", _options(tmp_path / "e.csv"))
    np.testing.assert_array_equal(from_csv.eval_x, model.eval_x)
    pd.DataFrame({"image": ["../outside.png"], "label": [0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ConfigError, match="not a file under"):
        load_torch_model("models:/photos/1", _options(tmp_path / "bad.csv"))


def test_images_without_an_image_task_say_what_to_pass(registered, tmp_path: Path) -> None:
    trained, _ = registered
    pd.DataFrame({"image": [_encode(trained.x_test[0], "PNG")], "label": [0]}).to_parquet(
        tmp_path / "one.parquet")
    with pytest.raises(ConfigError, match="task=image-classification"):
        load_torch_model("models:/photos/1", eval_data=str(tmp_path / "one.parquet"))
