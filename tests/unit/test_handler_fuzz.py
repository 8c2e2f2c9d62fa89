"""No input kills a batch: the handlers' request guard under property-based fuzzing.

Whatever a client sends (arbitrary JSON values, bytes, deep nesting, v2 tensors with any shape,
text with lone surrogates, PNG headers claiming huge sizes), ``process()``/``handle()`` answer
every request exactly once, with a status in {200, 400, 413, 422} (500 never for client input),
and a good request in the same batch still gets its right answer. Plus the batch-killing bodies
found against a served model (issue 11), one by one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from payloads import png_header

from servegate._resources import handler_module
from servegate.harness import HarnessContext

sg_codecs = handler_module("sg_codecs")
sg_text = handler_module("sg_text")
RequestError = handler_module("sg_errors").RequestError

CLIENT_STATUSES = {200, 400, 413, 422}
# 60 examples per property keep this file under 30 s on 2 cores; SG_FUZZ_EXAMPLES=2000 digs deeper
FUZZ = settings(max_examples=int(os.environ.get("SG_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEATURES = 4

# ---- the handlers under test -------------------------------------------------------------------


def _handler(model_dir: Path, module: str):
    mod = handler_module(module)
    cls = next(v for v in vars(mod).values()
               if isinstance(v, type) and v.__module__ == mod.__name__ and hasattr(v, "handle"))
    handler = cls()
    handler.setup(str(model_dir), model_name="fuzz")
    return handler


def _export(model, example):
    import torch

    batch = torch.export.Dim("batch", min=1, max=64)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


@pytest.fixture(scope="module")
def tensor_handler(tmp_path_factory):
    """A 4-feature, 3-class classifier (exported, at most 64 rows per call)."""
    import torch

    tmp = tmp_path_factory.mktemp("fuzz-tensor")
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, 3).eval()
    torch.export.save(_export(model, torch.zeros(2, FEATURES)), tmp / "model.pt2")
    spec = {"schema_version": 2, "task": "classification", "format": "exported_program",
            "artifact": "model.pt2", "max_batch": 64,
            "inputs": [{"name": "x", "shape": [FEATURES], "dtype": "float32"}],
            "limits": {"max_body_bytes": 1 << 16, "max_instances": 64}}
    (tmp / "servegate.json").write_text(json.dumps(spec))
    handler = _handler(tmp, "tensor_handler")
    good = [0.5, -1.0, 2.0, 0.0]
    expected = torch.softmax(model(torch.tensor([good])), 1)[0].detach().numpy()
    return handler, good, expected


@pytest.fixture(scope="module")
def image_handler(tmp_path_factory):
    """A 1x8x8 grey-image classifier."""
    import torch

    tmp = tmp_path_factory.mktemp("fuzz-image")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    torch.export.save(_export(model, torch.zeros(2, 1, 8, 8)), tmp / "model.pt2")
    spec = {"schema_version": 2, "task": "image-classification", "format": "exported_program",
            "artifact": "model.pt2", "image": {"size": [8, 8], "mode": "L"},
            "inputs": [{"name": "pixels", "shape": [1, 8, 8], "dtype": "float32"}]}
    (tmp / "servegate.json").write_text(json.dumps(spec))
    return _handler(tmp, "image_classifier")


TEXT_MODEL = '''
import torch


class TinyText(torch.nn.Module):
    def __init__(self, vocab=32):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 4)

    def forward(self, ids, mask):
        return (self.embed(ids) * mask.unsqueeze(-1)).sum(1)
'''


@pytest.fixture(scope="module")
def text_handler(tmp_path_factory):
    """A tiny embedding model behind a word-level tokenizer (built here, offline)."""
    import importlib

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    tmp = tmp_path_factory.mktemp("fuzz-text")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(28)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "fuzz_text_model.py").write_text(TEXT_MODEL)
    sys.path.insert(0, str(tmp))
    module = importlib.import_module("fuzz_text_model")
    torch.save(module.TinyText().state_dict(), tmp / "model.pt")
    spec = {"schema_version": 2, "task": "embedding", "format": "state_dict",
            "artifact": "model.pt", "model_class": "fuzz_text_model.TinyText",
            "text": {"tokenizer_file": "tokenizer.json", "max_length": 16, "max_chars": 200}}
    (tmp / "servegate.json").write_text(json.dumps(spec))
    return _handler(tmp, "text_handler")


def _handle(handler, bodies: list) -> list[tuple[int, object]]:
    """One TorchServe batch through ``handle``: (status, JSON body) per request, strictly parsed."""
    context = HarnessContext(".", "fuzz", {})
    answers = handler.handle([{"body": b} for b in bodies], context)
    assert len(answers) == len(bodies)

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text[:80]}"))

    return [(context.statuses.get(i, (200, ""))[0], strict(a)) for i, a in enumerate(answers)]


def _check_batch(handler, bad: bytes, good: bytes) -> int:
    """``bad`` beside two good requests: one answer each, the good ones unharmed."""
    replies = _handle(handler, [good, bad, good])
    status, body = replies[1]
    assert status in CLIENT_STATUSES, (bad[:200], status, body)
    if status != 200:
        assert isinstance(body, dict) and body["error"] and "detail" in body
    assert replies[0] == replies[2] and replies[0][0] == 200
    return status


# ---- strategies --------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**30, 10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=40)
keys = st.sampled_from(["inputs", "instances", "data", "b64", "id", "x", "name"])
envelopes = st.dictionaries(keys, json_values, min_size=1, max_size=3)
datatypes = st.sampled_from(list(sg_codecs.V2_DATATYPES) + ["BYTES", "FP33", "", 7])
dims = st.integers(-1, 5) | st.integers(2**31, 2**70) | st.sampled_from([True, 1.5, "2"])
v2_tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y", 3]), "datatype": datatypes,
     "shape": st.lists(dims, max_size=4) | json_values,
     "data": st.lists(scalars, max_size=20) | json_values})
v2_bodies = st.fixed_dictionaries({"inputs": st.lists(v2_tensors, min_size=1, max_size=3)},
                                  optional={"id": json_values})


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()  # NaN/Infinity literals included, as clients may send


NESTED = b"[" * 1000 + b"]" * 1000
HUGE_INT = b'{"inputs": [' + b"7" * 5000 + b", 1, 2, 3]}"
SHAPE_OVERFLOW = _dumps({"inputs": [{"name": "x", "shape": [2**32, 2**32], "datatype": "FP32",
                                     "data": []}]})


# ---- sg_codecs.parse ---------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=300) | json_values.map(_dumps) | envelopes.map(_dumps)
       | v2_bodies.map(_dumps))
@example(NESTED)
@example(HUGE_INT)
@example(SHAPE_OVERFLOW)
def test_parse_answers_or_raises_a_request_error(payload: bytes) -> None:
    try:
        envelope = sg_codecs.parse(payload, max_bytes=1 << 16, max_instances=64)
    except RequestError as exc:
        assert exc.status in {400, 413, 422}
        assert json.loads(exc.body())["error"]
    else:
        assert len(envelope) >= 1


# ---- the tensor handler ------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=300) | json_values.map(_dumps) | envelopes.map(_dumps)
       | v2_bodies.map(_dumps))
@example(NESTED)
@example(HUGE_INT)
@example(SHAPE_OVERFLOW)
@example(b"[true, false, true, 1.0]")
@example(png_header(20000, 20000))
def test_tensor_handler_never_lets_a_request_kill_the_batch(tensor_handler, payload: bytes) -> None:
    handler, good, _ = tensor_handler
    _check_batch(handler, payload, _dumps({"inputs": good}))


@FUZZ
@given(st.lists(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32),
                         min_size=FEATURES, max_size=FEATURES), min_size=1, max_size=70),
       st.sampled_from(["instances", "inputs", "list", "rows", "v2"]))
def test_valid_rows_in_any_family_are_answered_per_row(tensor_handler, rows, family: str) -> None:
    handler, good, expected = tensor_handler
    body = {"instances": rows, "inputs": {"inputs": rows}, "list": rows,
            "rows": {"instances": [{"x": r} for r in rows]},
            "v2": {"id": "f", "inputs": [{"name": "x", "shape": [len(rows), FEATURES],
                                          "datatype": "FP64", "data": rows}]}}[family]
    replies = _handle(handler, [_dumps({"inputs": good}), _dumps(body)])
    status, answer = replies[1]
    if len(rows) > 64:
        assert status == 413 and answer["error"] == "too many instances"
    else:
        assert status == 200, answer
        count = (len(answer["outputs"][0]["data"]) // 3 if family == "v2" else
                 len(next(iter(answer.values())) if isinstance(answer, dict) else answer))
        assert count == len(rows)
        if family == "v2":
            assert answer["id"] == "f"
    np.testing.assert_allclose(replies[0][1]["outputs"]["probabilities"], expected, atol=1e-5)


# ---- text --------------------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(
    ["\ud800", "w1 \udfff w2", "w1 w2 w3", " ", ""])


@FUZZ
@given(st.lists(any_text | scalars, min_size=1, max_size=4))
def test_text_decoder_takes_valid_text_or_refuses_with_422(texts: list) -> None:
    try:
        decoded = sg_text.request_texts(texts, max_chars=200)
    except RequestError as exc:
        assert exc.status in {413, 422}
    else:
        assert all(t.encode("utf-8") for t in decoded)


@FUZZ
@given(any_text, st.sampled_from(["inputs", "instances", "v2"]))
def test_text_handler_never_lets_a_text_kill_the_batch(text_handler, text: str, family: str) -> None:
    body = {"inputs": {"inputs": text}, "instances": {"instances": [text, "w1"]},
            "v2": {"id": "t", "inputs": [{"name": "t", "shape": [1], "datatype": "BYTES",
                                          "data": [text]}]}}[family]
    raw = json.dumps(body).encode()  # lone surrogates travel as \ud800 escapes, as over HTTP
    status = _check_batch(text_handler, raw, b'{"inputs": "w1 w2"}')
    if "\ud800" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert status == 422


# ---- images ------------------------------------------------------------------------------------

@FUZZ
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.binary(max_size=64))
@example(20000, 20000, b"")
@example(9000, 9000, b"")
def test_png_headers_with_any_size_never_kill_the_batch(image_handler, width: int, height: int,
                                                        tail: bytes) -> None:
    status = _check_batch(image_handler, png_header(width, height) + tail, _good_png())
    if width * height > 40_000_000:
        assert status == 413
    else:
        assert status in {200, 422}


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8",
                                                 b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b""]))
def test_image_decoder_survives_arbitrary_bytes(image_handler, data: bytes, magic: bytes) -> None:
    import base64

    _check_batch(image_handler, magic + data, _good_png())
    wrapped = json.dumps({"instances": [{"b64": base64.b64encode(magic + data).decode()}]})
    _check_batch(image_handler, wrapped.encode(), _good_png())


def _good_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- the batch-killing bodies of issue 11, each with its status -----------------------------------

@pytest.mark.parametrize(("body", "status"), [
    (NESTED, 400),
    (HUGE_INT, 400),
    (SHAPE_OVERFLOW, 422),
    (png_header(20000, 20000), 422),  # the tensor model takes no images at all
    (b'{"inputs": [true, false, true, false]}', 422),
    (b'{"instances": [[0.5, 1, 2, true]]}', 422),
    (_dumps({"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32",
                         "data": [True, 1.0, 2.0, 3.0]}]}), 422),
    (_dumps({"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32",
                         "data": ["1.5", 1.0, 2.0, 3.0]}]}), 422),
    (_dumps({"inputs": [{"name": "x", "shape": [True, FEATURES], "datatype": "FP32",
                         "data": [1.0] * 4}]}), 400),
])
def test_issue_11_bodies_get_their_own_status(tensor_handler, body: bytes, status: int) -> None:
    handler, good, _ = tensor_handler
    assert _check_batch(handler, body, _dumps({"inputs": good})) == status


def test_issue_11_image_and_text_bodies(image_handler, text_handler) -> None:
    assert _check_batch(image_handler, png_header(20000, 20000), _good_png()) == 413
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    assert _check_batch(image_handler, eps, _good_png()) == 400  # not an allowed image: not JSON
    assert _check_batch(text_handler, b'{"inputs": "\\ud800"}', b'{"inputs": "w1"}') == 422


def test_v2_id_is_echoed_on_every_path(tensor_handler) -> None:
    handler, good, _ = tensor_handler

    def v2(**tensor):
        return _dumps({"id": "req-9", "inputs": [{"name": "x", "shape": [1, FEATURES],
                                                   "datatype": "FP32", "data": good} | tensor]})

    replies = _handle(handler, [v2(), v2(datatype="FP33"), v2(shape=[2, FEATURES]),
                                v2(data=[float("nan")] * 4), v2(shape="x"), v2(name="other")])
    assert [s for s, _ in replies] == [200, 422, 422, 422, 400, 200]
    assert [body["id"] for _, body in replies] == ["req-9"] * 6


def test_a_fault_of_ours_is_a_500_for_that_request_only(tensor_handler, monkeypatch) -> None:
    handler, good, _ = tensor_handler
    real = handler.features

    def features(envelope):
        if envelope.family == "list":
            raise RuntimeError("a bug in the handler")
        return real(envelope)

    monkeypatch.setattr(handler, "features", features)
    replies = _handle(handler, [_dumps([good]), _dumps({"inputs": good})])
    assert [s for s, _ in replies] == [500, 200]
    monkeypatch.setattr(handler, "process", lambda payloads: 1 / 0)
    assert [s for s, _ in _handle(handler, [b"{}", b"[]"])] == [500, 500]
