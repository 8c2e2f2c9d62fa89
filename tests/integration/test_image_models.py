"""A user's image models end to end (issue 24): small RGB CNNs built here, logged with
`mlflow.pytorch.log_model` (pt2), deployed with `make deploy` at 32x32 (held-out set: an
ImageFolder of PNG and JPEG files) and at 224x224 (held-out set: float pixels in an .npz, the
case whose JSON tensors once overflowed the body limit), then queried with PNG and JPEG bytes,
raw and base64: each answer equals the model run in process on the worker's decode of the bytes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import user_models
from pipeline_env import pipeline_home
from test_pipeline import alias, backend_of, deploy

from servegate._resources import handler_module

pytestmark = pytest.mark.integration
PIXELS = ["-P", "task=image-classification", "-P", "image_mean=0,0,0", "-P", "image_std=1,1,1"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    with pipeline_home(tmp_path_factory.mktemp("images")) as (home, server):
        import mlflow

        mlflow.set_experiment("user-training")
        yield home, server


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    rgb = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


def _in_process(module: torch.nn.Module, data: bytes, size: int) -> np.ndarray:
    """Class probabilities of the model on the worker's own decode of ``data``."""
    x = handler_module("image_classifier").decode_image(
        data, {"size": [size, size], "mode": "RGB", "scale": 1 / 255, "mean": [0, 0, 0],
               "std": [1, 1, 1]})
    with torch.inference_mode():
        logits = module(torch.from_numpy(x[None]))
    return torch.softmax(logits, -1).numpy()[0]


def _probabilities(answer: object) -> np.ndarray:
    prediction = answer["predictions"][0] if isinstance(answer, dict) and "predictions" in answer \
        else answer
    return np.asarray(prediction["probabilities"] if isinstance(prediction, dict) else prediction)


def _queried_as_users_send_images(server, name: str, module: torch.nn.Module, pixels: np.ndarray,
                                  size: int) -> None:
    """PNG and JPEG, raw bytes and base64 JSON, through the default endpoint."""
    backend = backend_of(server)
    access = backend.access()
    headers = {"Authorization": f"Bearer {access.inference_key}"}
    url = backend.endpoint(name)
    for fmt in ("PNG", "JPEG"):
        data = _encoded(pixels, fmt)
        expected = _in_process(module, data, size)
        raw = httpx.post(url, content=data, timeout=60,
                         headers=headers | {"Content-Type": "application/octet-stream"})
        assert raw.status_code == 200, raw.text
        np.testing.assert_allclose(_probabilities(raw.json()), expected, atol=1e-5)
        body = {"instances": [{"b64": base64.b64encode(data).decode()}]}
        as_json = httpx.post(url, json=body, headers=headers, timeout=60)
        assert as_json.status_code == 200, as_json.text
        np.testing.assert_allclose(_probabilities(as_json.json()), expected, atol=1e-5)


def test_a_32px_rgb_cnn_gated_on_an_image_folder(env, tmp_path: Path) -> None:
    home, server = env
    trained = user_models.photo_classifier(32)
    version = user_models.log_pytorch(trained.module, trained.x_test[:4], "photos")
    names = ("red", "green", "blue")
    for i, (pixels, label) in enumerate(zip(trained.x_test, trained.y_test, strict=True)):
        folder = tmp_path / "held-out" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if i % 3 == 0 else "PNG"
        (folder / f"{i:02d}.{fmt.lower()}").write_bytes(_encoded(pixels, fmt))
    report = tmp_path / "report"
    result = deploy("-P", f"model=models:/photos/{version}", *PIXELS, "-P", "image_size=32,32",
                    "-P", f"eval_data={tmp_path / 'held-out'}", "-P", "labels=blue,green,red",
                    report_dir=report)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "promoted" in result.stdout and alias("photos", "champion") == version
    assert (report / "eval_samples.png").is_file()
    assert "--data-binary @image.png" in (report / "gate_report.md").read_text()
    _queried_as_users_send_images(server, "photos", trained.module, trained.x_test[0], 32)


def test_a_224px_rgb_cnn_gated_on_float_pixels(env, tmp_path: Path) -> None:
    """The issue's case: float32 [3, 224, 224] pixels in an .npz; the gate sends PNGs."""
    home, server = env
    trained = user_models.photo_classifier(224, epochs=10)
    version = user_models.log_pytorch(trained.module, trained.x_test[:4], "photos224")
    np.savez(tmp_path / "photos.npz", x=trained.x_test, y=trained.y_test)
    result = deploy("-P", f"model=models:/photos224/{version}", *PIXELS, "-P", "image_size=224,224",
                    "-P", f"eval_data={tmp_path / 'photos.npz'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "promoted" in result.stdout
    _queried_as_users_send_images(server, "photos224", trained.module, trained.x_test[1], 224)
