"""The handlers, driven in-process through ``servegate.harness`` exactly as a worker calls them."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from servegate.config import BatchingConfig
from servegate.harness import LocalHandler
from servegate.packaging.mar import MarContents, build_mar
from servegate.packaging.spec import ArtifactSpec, ImageSpec, InputSpec

GOOD = 200


def _probabilities(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def handler(build_archive):
    with LocalHandler(build_archive("1")) as local:
        yield local


def test_batch_answers_in_order_and_matches_in_process(handler: LocalHandler, digits) -> None:
    x = digits.eval_x[:6]
    expected = _probabilities(digits.reference(x))
    bodies = [json.dumps({"inputs": row.tolist()}).encode() for row in x]
    replies = handler.batch(bodies)
    assert [status for status, _ in replies] == [GOOD] * 6
    served = np.array([body["outputs"]["probabilities"] for _, body in replies])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert [body["outputs"]["label"] for _, body in replies] == [str(i) for i in expected.argmax(1)]


def test_one_bad_request_fails_alone(handler: LocalHandler, digits) -> None:
    good = json.dumps({"instances": digits.eval_x[:2].tolist()}).encode()
    bodies = [
        good,
        b"{not json",
        None,
        json.dumps({"instances": [[1.0] * 63]}).encode(),
        b'{"instances": [[' + b",".join([b"NaN"] * 64) + b"]]}",
        json.dumps({"instances": [["a"] * 64]}).encode(),
        json.dumps({"what": 1}).encode(),
        json.dumps({"instances": [[0.0] * 64] * 65}).encode(),
        good,
    ]
    replies = handler.batch(bodies)
    statuses = [status for status, _ in replies]
    assert statuses == [200, 400, 400, 422, 422, 422, 400, 413, 200]
    for status, body in replies:
        if status != 200:
            assert set(body) == {"error", "detail"} and body["error"]
    assert len(replies[0][1]["predictions"]) == 2
    assert replies[0][1] == replies[-1][1]


def test_every_family_answers_in_kind(handler: LocalHandler, digits) -> None:
    row = digits.eval_x[0]
    v2 = {"id": "abc", "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                   "data": row.tolist()}]}
    (s1, bare), (s2, single), (s3, oip) = handler.batch(
        [json.dumps([row.tolist()]).encode(), json.dumps({"inputs": row.tolist()}).encode(),
         json.dumps(v2).encode()]
    )
    assert (s1, s2, s3) == (200, 200, 200)
    assert isinstance(bare, list) and len(bare) == 1
    assert set(single) == {"outputs"} and single["outputs"]["label"] == bare[0]["label"]
    assert oip["id"] == "abc" and oip["model_name"] == "digits"
    probs = next(o for o in oip["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [1, 10] and probs["datatype"] == "FP32"
    assert math.isclose(sum(probs["data"]), 1.0, rel_tol=1e-5)


def test_topk_labels_come_from_the_archive(handler: LocalHandler, digits) -> None:
    (_, body), = handler.batch([json.dumps({"inputs": digits.eval_x[0].tolist()}).encode()])
    top = body["outputs"]["top_k"]
    assert len(top) == 3
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert all(t["label"] == str(t["index"]) for t in top)


def _archive_with(tmp_path: Path, digits, artifact: Path, fmt: str, **spec) -> Path:
    contents = MarContents(
        name="digits", version="1", artifact=artifact,
        spec=ArtifactSpec(task="tensor-classification", format=fmt, artifact=artifact.name,
                          input=InputSpec(shape=[64]), **spec),
        labels=digits.labels, warmup={"instances": digits.eval_x[:2].tolist()},
    )
    return build_mar(contents, tmp_path / "store")


def _served_probabilities(archive: Path, x: np.ndarray) -> np.ndarray:
    with LocalHandler(archive) as local:
        ((status, body),) = local.batch([json.dumps({"instances": x.tolist()}).encode()])
    assert status == 200, body
    return np.array([p["probabilities"] for p in body["predictions"]])


def test_exported_program_onnx_and_torchscript_load_with_parity(tmp_path: Path, digits) -> None:
    import torch

    x = digits.eval_x[:5]
    expected = _probabilities(digits.reference(x))
    example = torch.from_numpy(x)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(digits.module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "model.pt2")
    torch.onnx.export(digits.module, (example,), tmp_path / "model.onnx", dynamo=True,
                      dynamic_shapes=({0: batch},), external_data=False)
    torch.jit.save(torch.jit.trace(digits.module, example), tmp_path / "model.ts")
    for artifact, fmt in [("model.pt2", "exported_program"), ("model.onnx", "onnx"),
                          ("model.ts", "torchscript")]:
        archive = _archive_with(tmp_path / fmt, digits, tmp_path / artifact, fmt)
        np.testing.assert_allclose(_served_probabilities(archive, x), expected, atol=1e-5,
                                   err_msg=fmt)


def test_tensorrt_archive_fails_to_load_with_a_clear_message(tmp_path: Path, digits) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the no-CUDA message cannot be shown here")
    import sg_errors

    (tmp_path / "model.ep").write_bytes(b"not used")
    archive = _archive_with(tmp_path, digits, tmp_path / "model.ep", "torch_tensorrt")
    with pytest.raises(sg_errors.ModelLoadError, match="needs an NVIDIA GPU with CUDA"):
        LocalHandler(archive)


def test_a_corrupted_artifact_never_loads(tmp_path: Path, digits) -> None:
    import sg_errors

    (tmp_path / "model.onnx").write_bytes(b"\x00garbage")
    archive = _archive_with(tmp_path, digits, tmp_path / "model.onnx", "onnx")
    with pytest.raises(sg_errors.ModelLoadError, match="cannot load onnx"):
        LocalHandler(archive)


def test_image_classifier_decodes_resizes_and_isolates_bad_images(tmp_path: Path) -> None:
    import base64

    import torch
    from PIL import Image

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3)).eval()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 16, 16)), tmp_path / "cnn.ts")
    image = Image.fromarray((np.arange(32 * 24) % 255).astype(np.uint8).reshape(24, 32))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    png = buffer.getvalue()
    spec = ArtifactSpec(task="image-classification", format="torchscript", artifact="cnn.ts",
                        image=ImageSpec(size=(16, 16), mode="L", mean=[0.5], std=[0.25]))
    contents = MarContents(name="cnn", version="1", artifact=tmp_path / "cnn.ts", spec=spec,
                           labels=["a", "b", "c"], batching=BatchingConfig(batch_size=4),
                           warmup={"instances": [{"b64": base64.b64encode(png).decode()}]})
    archive = build_mar(contents, tmp_path / "store")

    pixels = np.asarray(image.resize((16, 16), Image.BILINEAR), np.float32) / 255
    expected = torch.softmax(model(torch.from_numpy((pixels - 0.5) / 0.25)[None, None]), 1)
    with LocalHandler(archive) as local:
        replies = local.batch([
            png,
            json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode(),
            json.dumps({"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}).encode(),
            json.dumps({"inputs": "%%%"}).encode(),
        ])
    assert [s for s, _ in replies] == [200, 200, 422, 422]
    np.testing.assert_allclose(replies[0][1]["probabilities"], expected[0].detach().numpy(), atol=1e-5)
    assert replies[1][1]["predictions"][0]["label"] == replies[0][1]["label"]


class _MetricsRecorder:
    """Records what a handler sends to TorchServe's metrics API."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []

    def add_time(self, name: str, value: float, idx: object = None, unit: str = "ms") -> None:
        self.sent.append((name, value))

    def add_metric(self, name: str, value: float, unit: str, idx: object = None,
                   dimensions: object = None, metric_type: object = None) -> None:
        self.sent.append((name, value))


def test_stage_metrics_are_per_batch_means_sent_once_per_interval(handler: LocalHandler,
                                                                  digits) -> None:
    from servegate.harness import HarnessContext

    body = json.dumps({"inputs": digits.eval_x[0].tolist()}).encode()
    worker = handler.handler
    recorder = _MetricsRecorder()

    def serve(requests: int) -> None:
        context = HarnessContext(*handler._context_args, metrics=recorder)
        worker.handle([{"body": body}] * requests, context)

    worker._stage_means = type(worker._stage_means)()  # as a fresh worker
    serve(1)  # the first batch reports at once
    assert [name for name, _ in recorder.sent] == ["PreprocessTime", "InferenceTime",
                                                   "PostprocessTime", "BatchSize"]
    assert dict(recorder.sent)["BatchSize"] == 1
    recorder.sent.clear()
    serve(2)
    serve(4)
    assert recorder.sent == []  # within the interval: accumulated, not sent
    worker._stage_means.emitted_at -= 2  # the interval has passed
    serve(6)
    sent = dict(recorder.sent)
    assert sent["BatchSize"] == 4.0  # (2 + 4 + 6) / 3 batches
    assert all(sent[name] >= 0 for name in ("PreprocessTime", "InferenceTime", "PostprocessTime"))
