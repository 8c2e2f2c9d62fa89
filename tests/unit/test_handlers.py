"""The handlers, driven in-process through ``servegate.harness`` exactly as a worker calls them."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from payloads import softmax

from servegate.config import BatchingConfig, ImagePreprocessing
from servegate.harness import LocalHandler
from servegate.packaging.mar import MarContents, build_mar
from servegate.packaging.spec import ArtifactSpec, InputSpec

GOOD = 200


@pytest.fixture(scope="module")
def handler(build_archive):
    with LocalHandler(build_archive("1")) as local:
        yield local


def test_batch_answers_in_order_and_matches_in_process(handler: LocalHandler, digits) -> None:
    x = digits.eval_x[:6]
    expected = softmax(digits.reference(x))
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
        spec=ArtifactSpec(task="classification", format=fmt, artifact=artifact.name,
                          inputs=[InputSpec(shape=[64])], **spec),
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
    expected = softmax(digits.reference(x))
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
    (tmp_path / "model.ep").write_bytes(b"not used")
    archive = _archive_with(tmp_path, digits, tmp_path / "model.ep", "torch_tensorrt")
    with pytest.raises(Exception, match="needs an NVIDIA GPU with CUDA") as refused:
        LocalHandler(archive)
    assert type(refused.value).__name__ == "ModelLoadError"  # the archive's own sg_errors


def test_a_corrupted_artifact_never_loads(tmp_path: Path, digits) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x00garbage")
    archive = _archive_with(tmp_path, digits, tmp_path / "model.onnx", "onnx")
    with pytest.raises(Exception, match="cannot load onnx") as refused:
        LocalHandler(archive)
    assert type(refused.value).__name__ == "ModelLoadError"


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
                        image=ImagePreprocessing(size=(16, 16), mode="L", mean=[0.5], std=[0.25]))
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
    # means of real stage times, in ms: positive, and far below a second for a 6-row MLP batch
    assert all(0 < sent[name] < 1000 for name in ("PreprocessTime", "InferenceTime", "PostprocessTime"))


# ---- user models: servegate.json schema 2, served without custom handlers ---------------------

USER_MODELS = '''
import torch


class Tabular(torch.nn.Module):
    def __init__(self, features=13, classes=3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(features, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, classes))

    def forward(self, x):
        return self.net(x)


class TwoInTwoOut(torch.nn.Module):
    """Float features [5] + int64 ids [3] -> (score [1], vector [4])."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.dense = torch.nn.Linear(5, 4)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, features, ids):
        vector = self.dense(features) + self.embed(ids).mean(1)
        return self.head(vector), vector
'''


def _user_module(tmp_path: Path):
    """The user model classes, importable under a name unique to this directory."""
    import importlib.util
    import sys

    name = f"user_models_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(USER_MODELS)
    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name, module


def _model_dir(tmp_path: Path, spec: dict, module=None, state_dict=None, program=None) -> Path:
    """An unpacked archive: the artifact written by the test and a hand-written servegate.json."""
    import torch

    if state_dict is not None:
        torch.save(state_dict, tmp_path / "model.pt")
        spec = {"format": "state_dict", "artifact": "model.pt"} | spec
    if program is not None:
        torch.export.save(program, tmp_path / "model.pt2")
        spec = {"format": "exported_program", "artifact": "model.pt2"} | spec
    (tmp_path / "servegate.json").write_text(json.dumps({"schema_version": 2} | spec))
    return tmp_path


def _handler(model_dir: Path, module: str = "tensor_handler", name: str = "user"):
    from servegate._resources import handler_module

    mod = handler_module(module)
    cls = next(v for v in vars(mod).values()
               if isinstance(v, type) and v.__module__ == mod.__name__ and hasattr(v, "handle"))
    handler = cls()
    handler.setup(str(model_dir), model_name=name)
    return handler


def _serve(handler, bodies: list) -> list[tuple[int, object]]:
    """One TorchServe batch through ``handle``: (status, parsed JSON) per request."""
    from servegate.harness import HarnessContext

    context = HarnessContext(".", "user", {})
    raw = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
    answers = handler.handle([{"body": b} for b in raw], context)
    assert len(answers) == len(bodies)
    return [(context.statuses.get(i, (200, ""))[0], json.loads(a)) for i, a in enumerate(answers)]


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    import torch

    tmp = tmp_path_factory.mktemp("tabular")
    name, module = _user_module(tmp)
    torch.manual_seed(0)
    model = module.Tabular().eval()
    spec = {"task": "classification", "model_class": f"{name}.Tabular",
            "model_kwargs": {"features": 13, "classes": 3},
            "inputs": [{"name": "x", "shape": [13], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [3]}], "top_k": 2}
    return _handler(_model_dir(tmp, spec, state_dict=model.state_dict())), model


def test_tabular_classifier_answers_every_single_input_form(tabular) -> None:
    import torch

    handler, model = tabular
    x = np.random.default_rng(0).standard_normal((4, 13)).astype(np.float32)
    expected = torch.softmax(model(torch.from_numpy(x)), 1).detach().numpy()
    replies = _serve(handler, [
        {"inputs": x[0].tolist()},
        {"instances": x.tolist()},
        {"instances": [{"x": row} for row in x.tolist()]},
        [{"x": row} for row in x[:2].tolist()],
        x[0].tolist(),
        {"id": "r1", "inputs": [{"name": "x", "shape": [4, 13], "datatype": "FP32",
                                 "data": x.reshape(-1).tolist()}]},
    ])
    assert [s for s, _ in replies] == [200] * 6
    np.testing.assert_allclose(replies[0][1]["outputs"]["probabilities"], expected[0], atol=1e-5)
    for body in (replies[1][1]["predictions"], replies[2][1]["predictions"]):
        np.testing.assert_allclose([p["probabilities"] for p in body], expected, atol=1e-5)
        assert [len(p["top_k"]) for p in body] == [2] * 4
    assert len(replies[3][1]) == 2 and replies[4][1]["label"] == str(expected[0].argmax())
    v2 = replies[5][1]
    assert v2["id"] == "r1" and [o["name"] for o in v2["outputs"]] == ["probabilities", "label"]


def test_a_wide_single_instance_is_not_too_many_instances(tmp_path: Path) -> None:
    name, module = _user_module(tmp_path)
    model = module.Tabular(features=100, classes=2).eval()
    spec = {"task": "classification", "model_class": f"{name}.Tabular",
            "model_kwargs": {"features": 100, "classes": 2},
            "inputs": [{"name": "x", "shape": [100], "dtype": "float32"}],
            "limits": {"max_instances": 4}}
    handler = _handler(_model_dir(tmp_path, spec, state_dict=model.state_dict()))
    replies = _serve(handler, [{"inputs": [0.5] * 100}, [[0.5] * 100] * 5, [0.5] * 100])
    assert [s for s, _ in replies] == [200, 413, 200]
    assert replies[1][1]["error"] == "too many instances"


def _export(model, *examples, max_batch: int = 64):
    import torch

    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return torch.export.export(model, tuple(examples),
                               dynamic_shapes=tuple({0: batch} for _ in examples))


@pytest.mark.parametrize("width", [1, 3])
def test_regressor_answers_numbers_or_lists(tmp_path: Path, width: int) -> None:
    import torch

    torch.manual_seed(1)
    model = torch.nn.Linear(13, width).eval()
    x = np.random.default_rng(1).standard_normal((3, 13)).astype(np.float32)
    spec = {"task": "regression", "inputs": [{"name": "x", "shape": [13], "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": [width]}], "max_batch": 64}
    program = _export(model, torch.from_numpy(x))
    handler = _handler(_model_dir(tmp_path, spec, program=program))
    expected = model(torch.from_numpy(x)).detach().numpy()
    (s1, one), (s2, many), (s3, v2) = _serve(handler, [
        {"inputs": x[0].tolist()}, {"instances": x.tolist()},
        {"inputs": [{"name": "x", "shape": [3, 13], "datatype": "FP32",
                     "data": x.reshape(-1).tolist()}]}])
    assert (s1, s2, s3) == (200, 200, 200)
    if width == 1:
        assert isinstance(one["outputs"], float)
        np.testing.assert_allclose(many["predictions"], expected[:, 0], atol=1e-5)
    else:
        assert len(one["outputs"]) == 3
        np.testing.assert_allclose(many["predictions"], expected, atol=1e-5)
    (tensor,) = v2["outputs"]
    assert tensor["name"] == "y" and tensor["shape"] == [3, width] and tensor["datatype"] == "FP32"


def test_conv_net_on_tensors(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(72, 4)).eval()
    x = np.random.default_rng(2).standard_normal((5, 1, 8, 8)).astype(np.float32)
    spec = {"task": "tensor", "inputs": [{"name": "image", "shape": [1, 8, 8], "dtype": "float32"}]}
    handler = _handler(_model_dir(tmp_path, spec, program=_export(model, torch.from_numpy(x))))
    expected = model(torch.from_numpy(x)).detach().numpy()
    replies = _serve(handler, [{"instances": x.tolist()}, {"inputs": x[0].tolist()},
                               {"instances": x[:, 0].tolist()}])
    assert [s for s, _ in replies] == [200, 200, 422]
    np.testing.assert_allclose(replies[0][1]["predictions"], expected, atol=1e-5)
    np.testing.assert_allclose(replies[1][1]["outputs"], expected[0], atol=1e-5)
    assert "'image'" in replies[2][1]["detail"] and "[1, 8, 8]" in replies[2][1]["detail"]


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    import torch

    tmp = tmp_path_factory.mktemp("two")
    name, module = _user_module(tmp)
    torch.manual_seed(3)
    model = module.TwoInTwoOut().eval()
    spec = {"task": "tensor", "model_class": f"{name}.TwoInTwoOut",
            "inputs": [{"name": "features", "shape": [5], "dtype": "float32"},
                       {"name": "ids", "shape": [3], "dtype": "int64"}],
            "outputs": [{"name": "score", "shape": [1]}, {"name": "vector", "shape": [4]}]}
    rng = np.random.default_rng(3)
    features = rng.standard_normal((4, 5)).astype(np.float32)
    ids = rng.integers(0, 10, (4, 3))
    score, vector = (t.detach().numpy() for t in model(torch.from_numpy(features),
                                                       torch.from_numpy(ids)))
    handler = _handler(_model_dir(tmp, spec, state_dict=model.state_dict()))
    return handler, features, ids, score, vector


def test_two_inputs_two_outputs_in_every_form(two_inputs) -> None:
    handler, f, ids, score, vector = two_inputs
    rows = [{"features": a, "ids": b} for a, b in zip(f.tolist(), ids.tolist(), strict=True)]
    v2 = {"id": 7, "inputs": [
        {"name": "ids", "shape": [4, 3], "datatype": "INT64", "data": ids.reshape(-1).tolist()},
        {"name": "features", "shape": [4, 5], "datatype": "FP32", "data": f.reshape(-1).tolist()}]}
    by_position = {"inputs": [
        {"name": "a", "shape": [4, 5], "datatype": "FP32", "data": f.reshape(-1).tolist()},
        {"name": "b", "shape": [4, 3], "datatype": "INT32", "data": ids.reshape(-1).tolist()}]}
    replies = _serve(handler, [
        {"instances": rows},
        rows,
        {"inputs": {"features": f.tolist(), "ids": ids.tolist()}},
        {"inputs": {"features": f[0].tolist(), "ids": ids[0].tolist()}},
        v2, by_position,
    ])
    assert [s for s, _ in replies] == [200] * 6, replies
    for answer in (replies[0][1]["predictions"], replies[1][1], replies[2][1]["outputs"]):
        assert [set(a) for a in answer] == [{"score", "vector"}] * 4
        np.testing.assert_allclose([a["score"] for a in answer], score, atol=1e-5)
        np.testing.assert_allclose([a["vector"] for a in answer], vector, atol=1e-5)
    single = replies[3][1]["outputs"]
    np.testing.assert_allclose(single["vector"], vector[0], atol=1e-5)
    for answer in (replies[4][1], replies[5][1]):
        assert [o["name"] for o in answer["outputs"]] == ["score", "vector"]
        assert answer["outputs"][1]["shape"] == [4, 4]
        np.testing.assert_allclose(np.reshape(answer["outputs"][1]["data"], (4, 4)), vector,
                                   atol=1e-5)
    assert replies[4][1]["id"] == 7


def test_two_inputs_errors_name_the_input(two_inputs) -> None:
    handler, f, ids, *_ = two_inputs
    row = {"features": f[0].tolist(), "ids": ids[0].tolist()}
    cases = [
        ({"instances": [{"features": f[0].tolist()}]}, "'ids'"),                      # missing
        ({"instances": [row | {"extra": 1}]}, "'extra'"),                             # unknown
        ({"inputs": {"features": f[:2].tolist(), "ids": ids[:3].tolist()}}, "'ids'"),  # row counts
        ({"instances": [row | {"ids": [1.5, 2, 3]}]}, "'ids'"),                       # not whole
        ({"instances": [row | {"ids": [True, 2, 3]}]}, "'ids'"),                      # booleans
        ({"instances": [row | {"features": [1.0] * 4}]}, "'features'"),               # shape
        ({"instances": [row | {"features": ["a"] * 5}]}, "'features'"),               # dtype
        ({"instances": [row | {"ids": [1, 2, 2 ** 70]}]}, "'ids'"),                   # range
        ({"instances": [f[0].tolist()]}, "'features', 'ids'"),                        # plain values
        ({"id": "q", "inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32",
                                 "data": f[0].tolist()}]}, "'ids'"),                  # v2 missing
    ]
    replies = _serve(handler, [body for body, _ in cases] + [{"instances": [row]}])
    for (status, body), (_, named) in zip(replies[:-1], cases, strict=True):
        assert status == 422 and named in body["detail"], (status, body)
    assert replies[-2][1]["id"] == "q"
    assert replies[-1][0] == 200


def test_max_batch_splits_a_collated_batch(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(4)
    model = torch.nn.Linear(13, 3).eval()
    example = torch.zeros(4, 13)
    spec = {"task": "tensor", "inputs": [{"name": "x", "shape": [13], "dtype": "float32"}],
            "max_batch": 16}
    program = _export(model, example, max_batch=16)
    handler = _handler(_model_dir(tmp_path, spec, program=program))
    x = np.random.default_rng(4).standard_normal((8, 64, 13)).astype(np.float32)
    replies = _serve(handler, [{"instances": part.tolist()} for part in x])
    assert [s for s, _ in replies] == [200] * 8
    served = np.array([body["predictions"] for _, body in replies])
    np.testing.assert_allclose(served, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    handler.max_batch = None  # without chunking the export-time bound refuses 512 rows
    assert {s for s, _ in _serve(handler, [{"instances": x[0].tolist()}] * 8)} == {500}


def test_legacy_schema_1_archive(tmp_path: Path) -> None:
    import torch

    name, module = _user_module(tmp_path)
    model = module.Tabular().eval()
    spec = {"schema_version": 1, "task": "tensor-classification", "model_class": f"{name}.Tabular",
            "input": {"shape": [13], "dtype": "float32", "allow_non_finite": False}}
    handler = _handler(_model_dir(tmp_path, spec, state_dict=model.state_dict()))
    x = np.ones((2, 13), np.float32)
    expected = torch.softmax(model(torch.from_numpy(x)), 1).detach().numpy()
    replies = _serve(handler, [{"instances": x.tolist()}, {"instances": [{"input": r} for r in x.tolist()]},
                               {"inputs": [float("nan")] * 13}])
    assert [s for s, _ in replies] == [200, 200, 422]
    for _, body in replies[:2]:
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], expected,
                                   atol=1e-5)


def test_non_finite_outputs_are_null_never_bare_nan(tmp_path: Path) -> None:
    import torch

    class Log(torch.nn.Module):
        def forward(self, x):
            return torch.log(x)

    spec = {"task": "regression", "inputs": [{"name": "x", "shape": [2], "dtype": "float32"}]}
    x = torch.ones(2, 2)
    handler = _handler(_model_dir(tmp_path, spec, program=_export(Log(), x)))
    bodies = [b'{"inputs": [-1.0, 0.0]}', b'{"inputs": [{"name": "x", "shape": [1, 2], '
                                          b'"datatype": "FP32", "data": [1.0, -1.0]}]}']
    context = __import__("servegate.harness", fromlist=["HarnessContext"]).HarnessContext(".", "u", {})
    raw = handler.handle([{"body": b} for b in bodies], context)
    assert context.statuses == {}
    assert "NaN" not in "".join(raw) and "Infinity" not in "".join(raw)
    assert json.loads(raw[0]) == {"outputs": [None, None]}
    assert json.loads(raw[1])["outputs"][0]["data"] == [0.0, None]


def test_image_model_takes_preprocessed_tensors(tmp_path: Path) -> None:
    import base64

    import torch
    from PIL import Image

    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
                                torch.nn.Linear(72, 3)).eval()
    spec = {"task": "image-classification", "inputs": [{"name": "pixels", "shape": [1, 8, 8]}],
            "image": {"size": [8, 8], "mode": "L", "mean": [0.5], "std": [0.5]}}
    handler = _handler(_model_dir(tmp_path, spec, program=_export(model, torch.zeros(2, 1, 8, 8))),
                       module="image_classifier")
    x = np.random.default_rng(5).standard_normal((3, 1, 8, 8)).astype(np.float32)
    expected = torch.softmax(model(torch.from_numpy(x)), 1).detach().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(buffer, format="PNG")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    replies = _serve(handler, [
        {"instances": x.tolist()}, {"inputs": x[0].tolist()}, buffer.getvalue(),
        {"instances": [{"b64": base64.b64encode(eps).decode()}]},
        {"instances": x[:, 0].tolist()},
    ])
    assert [s for s, _ in replies] == [200, 200, 200, 422, 422]
    np.testing.assert_allclose([p["probabilities"] for p in replies[0][1]["predictions"]], expected,
                               atol=1e-5)
    np.testing.assert_allclose(replies[1][1]["outputs"]["probabilities"], expected[0], atol=1e-5)


POISON = 1e6  # a finite value that passes validation and makes the fake model below raise


def _poisonable(handler, monkeypatch) -> list[np.ndarray]:
    """Wrap the handler's model: record the request tags (column 0) of the rows of every call,
    and raise when a row carries POISON in column 1 (a model that fails on some content)."""
    real = handler._predict
    calls: list[np.ndarray] = []

    def predict(x: np.ndarray):
        calls.append(x[:, 0].copy())
        if (x[:, 1] == POISON).any():
            raise RuntimeError("index out of range in self")
        return real(x)

    monkeypatch.setattr(handler, "_predict", predict)
    return calls


@pytest.mark.parametrize("poisoned", [[11], [0], [15], [3, 12]])
def test_the_culprits_of_a_failed_batch_are_found_by_bisection(tabular, monkeypatch,
                                                               poisoned: list[int]) -> None:
    """Issue 19: after a failed batched call every request was re-run alone (n more model calls).
    Bisection finds one culprit among n requests in at most 2*log2(n) more calls, and a good
    request is re-run at most log2(n) times."""
    import torch

    handler, model = tabular
    calls = _poisonable(handler, monkeypatch)
    n = 16
    rng = np.random.default_rng(7)
    requests = []
    for i in range(n):
        x = rng.standard_normal((i % 3 + 1, 13)).astype(np.float32)
        x[:, 0] = i  # the request's tag, seen by the model
        if i in poisoned:
            x[:, 1] = POISON
        requests.append(x)
    replies = _serve(handler, [{"instances": x.tolist()} for x in requests])

    assert [s for s, _ in replies] == [500 if i in poisoned else 200 for i in range(n)]
    for i, (status, body) in enumerate(replies):
        if status == 200:
            expected = torch.softmax(model(torch.from_numpy(requests[i])), 1).detach().numpy()
            np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], expected,
                                       atol=1e-5)
        else:
            assert body["error"] == "inference failed" and "out of range" in body["detail"]
    levels = math.ceil(math.log2(n))
    assert len(calls) <= 1 + 2 * levels * len(poisoned), [sorted(set(c)) for c in calls]
    for i in range(n):
        runs = sum(i in c for c in calls)
        assert runs <= (1 + levels + 1 if i in poisoned else 1 + levels), (i, runs)
    rows = sum(len(c) for c in calls)
    assert rows <= 3 * sum(len(x) for x in requests) * len(poisoned), rows


@pytest.mark.parametrize(("limits", "limit"), [({}, 65_536), ({"max_instance_elements": 100}, 100),
                                               ({"max_body_bytes": 1 << 19}, 32_768)])
def test_a_dynamic_dimension_has_a_per_instance_element_limit(tmp_path: Path, limits: dict,
                                                              limit: int) -> None:
    """Issue 19: an input with a -1 dimension accepted a 524,238-element instance. Each instance
    now holds at most ``limits.max_instance_elements`` values (default: the body limit / 16);
    over it, that request alone gets a 413 naming the limit."""
    import torch

    class RowSums(torch.nn.Module):
        def forward(self, x):
            return x.sum(-1, keepdim=True)

    size = torch.export.Dim("size", min=2, max=1 << 20)
    program = torch.export.export(RowSums(), (torch.ones(2, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=64), 1: size},))
    spec = {"task": "regression", "inputs": [{"name": "x", "shape": [-1]}], "limits": limits}
    handler = _handler(_model_dir(tmp_path, spec, program=program))
    body_at = b'{"inputs": [' + b",".join([b"0.5"] * limit) + b"]}"
    body_over = b'{"inputs": [' + b",".join([b"0.5"] * (limit + 1)) + b"]}"
    two_rows_over = json.dumps({"instances": [[0.5] * (limit + 1)] * 2}).encode()
    v2_over = json.dumps({"inputs": [{"name": "x", "shape": [1, limit + 1], "datatype": "FP32",
                                      "data": [0.5] * (limit + 1)}]}).encode()
    replies = _serve(handler, [body_at, body_over, two_rows_over, v2_over])
    assert [s for s, _ in replies] == [200, 413, 413, 413], replies
    assert replies[0][1]["outputs"] == pytest.approx(limit * 0.5)
    for _, body in replies[1:]:
        assert body["error"] == "instance too large"
        assert f"limit of {limit}" in body["detail"] and "'x'" in body["detail"]


def test_packaging_records_the_instance_element_limit(build_archive) -> None:
    """The archive's servegate.json records the limit the handler applies."""
    import zipfile

    with zipfile.ZipFile(build_archive("1")) as zf:
        limits = json.loads(zf.read("servegate.json"))["limits"]
    assert limits["max_instance_elements"] == limits["max_body_bytes"] // 16


def _png(size: tuple[int, int], mode: str = "L", fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def grey_images(tmp_path_factory):
    """A 1x8x8 grey-image classifier, served with batches of up to 8 requests."""
    import torch

    from servegate._resources import handler_module

    tmp = tmp_path_factory.mktemp("grey")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    spec = {"task": "image-classification", "image": {"size": [8, 8], "mode": "L"},
            "inputs": [{"name": "pixels", "shape": [1, 8, 8]}]}
    model_dir = _model_dir(tmp, spec, program=_export(model, torch.zeros(2, 1, 8, 8)))
    handler = handler_module("image_classifier").ImageClassifierHandler()
    handler.setup(str(model_dir), model_name="grey", batch_size=8)
    return handler


def _count_decodes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image whose pixels Pillow decodes (ImageFile.load)."""
    from PIL import ImageFile

    decoded: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def load(self):
        decoded.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


def test_image_pixels_are_budgeted_from_the_headers_before_any_is_decoded(grey_images,
                                                                         monkeypatch) -> None:
    """Issue 19: a 38 KB PNG of 6300x6300 pixels decodes in ~1 s; 20 fit in one 1 MiB request, so
    a batch of 8 such requests outlasted TorchServe's 120 s response timeout. Each request may now
    decode max_batch_pixels / batch size (400 M / 8 = 50 M pixels); the sizes come from the
    headers, so an over-budget request is refused before any of its pixels is decoded."""
    import base64

    assert grey_images.max_request_pixels == 50_000_000
    big = base64.b64encode(_png((6300, 6300))).decode()
    assert len(big) < 60_000  # ~38 KB of PNG
    decoded = _count_decodes(monkeypatch)
    replies = _serve(grey_images, [
        {"instances": [{"b64": big}] * 20},       # the request: 794 M pixels
        {"instances": [{"b64": big}] * 2},        # 79 M pixels
        _png((8, 8)),                             # a good request in the same batch
    ])
    assert [s for s, _ in replies] == [413, 413, 200], replies
    assert set(decoded) == {(8, 8)}  # nothing of the refused requests was decoded
    for _, body in replies[:2]:
        assert body["error"] == "images too large" and "limit of 50000000" in body["detail"]


@pytest.mark.parametrize(("batch_size", "limits", "per_request"), [
    (1, {}, 64_000_000), (8, {}, 50_000_000), (32, {}, 12_500_000),
    (8, {"max_batch_pixels": 8_000_000}, 1_000_000), (1, {"max_request_pixels": 1000}, 1000)])
def test_the_decode_budget_of_a_request_is_its_share_of_a_full_batch(tmp_path: Path, batch_size: int,
                                                                    limits: dict,
                                                                    per_request: int) -> None:
    import torch

    from servegate._resources import handler_module

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    spec = {"task": "image-classification", "image": {"size": [8, 8], "mode": "L"},
            "inputs": [{"name": "pixels", "shape": [1, 8, 8]}], "limits": limits}
    model_dir = _model_dir(tmp_path, spec, program=_export(model, torch.zeros(2, 1, 8, 8)))
    handler = handler_module("image_classifier").ImageClassifierHandler()
    handler.setup(str(model_dir), model_name="grey", batch_size=batch_size)
    assert handler.max_request_pixels == per_request


def test_slow_formats_cost_more_of_the_budget(grey_images, monkeypatch) -> None:
    """WEBP decodes ~4x slower than PNG: 4 WEBP images of 4000x1000 pixels (64 M units) are over
    a 50 M budget, which 4 such PNG would fit (16 M)."""
    decoded = _count_decodes(monkeypatch)
    webp = _png((4000, 1000), "RGB", "WEBP")
    (status, body), = _serve(grey_images, [
        {"instances": [{"b64": __import__("base64").b64encode(webp).decode()}] * 4}])
    assert status == 413 and "64000000 decode units" in body["detail"], body
    assert decoded == []


def test_outputs_of_a_batch_are_made_together_and_a_fault_fails_only_its_request(
        tabular, monkeypatch) -> None:
    """Postprocessing runs once for the whole batch (one softmax and sort); if that fails, each
    request is postprocessed alone so only the one that breaks it gets a 500."""
    import torch

    handler, model = tabular
    real = handler.classifier.outputs_many
    seen: list[list[int]] = []

    def outputs_many(outputs, v2):
        seen.append([len(o) for o in outputs])
        if any(len(o) == 3 for o in outputs):
            raise RuntimeError("a bug in the postprocessing")
        return real(outputs, v2)

    monkeypatch.setattr(handler.classifier, "outputs_many", outputs_many)
    x = np.random.default_rng(8).standard_normal((6, 13)).astype(np.float32)
    replies = _serve(handler, [{"instances": x[:1].tolist()}, {"instances": x[1:4].tolist()},
                               {"instances": x[4:].tolist()}])
    assert [s for s, _ in replies] == [200, 500, 200]
    assert replies[1][1]["error"] == "postprocess failed"
    assert seen == [[1, 3, 2], [1], [3], [2]]  # together first, then one by one
    expected = torch.softmax(model(torch.from_numpy(x)), 1).detach().numpy()
    served = [p["probabilities"] for p in replies[0][1]["predictions"] + replies[2][1]["predictions"]]
    np.testing.assert_allclose(served, expected[[0, 4, 5]], atol=1e-5)
    assert len(replies[2][1]["predictions"][0]["top_k"]) == 2


def test_each_archive_runs_its_own_handler_code(build_archive, tmp_path: Path) -> None:
    """The harness once cached handler modules by name: a second archive ran the first's code."""
    import zipfile

    first = build_archive("1")
    second = tmp_path / "second.mar"
    with zipfile.ZipFile(first) as source, zipfile.ZipFile(second, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "sg_classification.py":
                data += b"\nMARKER = 'second archive'\n"
            copy.writestr(item, data)
    def code_file(local: LocalHandler) -> Path:
        methods = [f for f in vars(type(local.handler)).values() if hasattr(f, "__code__")]
        return Path(methods[0].__code__.co_filename)

    with LocalHandler(first) as one, LocalHandler(second) as two:
        assert code_file(one).is_relative_to(one.model_dir)
        assert code_file(two).is_relative_to(two.model_dir)
        assert getattr(sys.modules["sg_classification"], "MARKER", None) == "second archive"
        assert one.batch([b'{"instances": [[0.5]]}'])[0][0] in (200, 422)
    assert "sg_classification" not in sys.modules or not hasattr(
        sys.modules["sg_classification"], "MARKER")
