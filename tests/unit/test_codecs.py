"""Request envelopes: every family parses and answers in kind; bad input gets its own 4xx."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from servegate._resources import handler_module

sg_codecs = handler_module("sg_codecs")
RequestError = handler_module("sg_errors").RequestError

LIMITS = {"max_bytes": 1000, "max_instances": 4}


def parse(payload):
    return sg_codecs.parse(payload, **LIMITS)


@pytest.mark.parametrize(
    ("body", "family", "count"),
    [
        (b"[[1, 2], [3, 4]]", "list", 2),
        (b'{"inputs": [1, 2]}', "inputs", 2),
        (b'{"inputs": "aGk="}', "inputs", 1),
        (b'{"instances": [[1, 2]]}', "instances", 1),
        (b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}',
         "v2", 2),
        (b"\x89PNG\r\n\x1a\n....", "raw", 1),
    ],
)
def test_families_are_recognised(body: bytes, family: str, count: int) -> None:
    envelope = parse(body)
    assert envelope.family == family
    assert len(envelope) == count


def test_v2_tensor_is_reshaped_with_its_dtype() -> None:
    body = {"id": "r1", "inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32",
                                    "data": [1, 2, 3, 4, 5, 6]}]}
    envelope = parse(json.dumps(body).encode())
    assert envelope.instances.shape == (2, 3)
    assert envelope.instances.dtype == np.int32
    assert envelope.meta["id"] == "r1"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"", 400, "empty request"),
        (b"   ", 400, "empty request"),
        (b'{"instances": [1,', 400, "malformed JSON"),
        (b"\xff\xfe garbage", 400, "malformed JSON"),
        (b'{"rows": [1]}', 400, "unknown envelope"),
        (b'"just a string"', 400, "unknown envelope"),
        (b'{"instances": 3}', 400, "unknown envelope"),
        (b"[]", 400, "no instances"),
        (b'{"instances": [1, 2, 3, 4, 5]}', 413, "too many instances"),
        (b"[" + b"1," * 600 + b"1]", 413, "payload too large"),
        (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}', 422,
         "wrong shape"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP33", "data": [1]}]}', 422,
         "wrong dtype"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', 422,
         "wrong dtype"),
    ],
)
def test_bad_requests_get_their_own_status(body: bytes, status: int, error: str) -> None:
    with pytest.raises(RequestError) as info:
        parse(body)
    assert info.value.status == status
    assert info.value.error == error
    assert json.loads(info.value.body())["error"] == error


def test_answers_come_back_in_the_request_family() -> None:
    rows = [{"label": "3"}]
    v2 = [sg_codecs.v2_tensor("probabilities", np.array([[0.25, 0.75]], np.float32))]
    as_json = {
        family: json.loads(sg_codecs.encode(parse(body), rows, v2, "m", single))
        for family, body, single in [
            ("list", b"[[1]]", False),
            ("inputs", b'{"inputs": [1]}', True),
            ("instances", b'{"instances": [[1]]}', False),
            ("v2", b'{"id": "7", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
             False),
        ]
    }
    assert as_json["list"] == rows
    assert as_json["inputs"] == {"outputs": rows[0]}
    assert as_json["instances"] == {"predictions": rows}
    assert as_json["v2"]["id"] == "7"
    assert as_json["v2"]["model_name"] == "m"
    assert as_json["v2"]["outputs"][0] == {"name": "probabilities", "shape": [1, 2],
                                           "datatype": "FP32", "data": [0.25, 0.75]}


def test_base64_images_decode_and_bad_base64_is_422() -> None:
    assert sg_codecs.decode_b64({"b64": base64.b64encode(b"abc").decode()}) == b"abc"
    with pytest.raises(RequestError) as info:
        sg_codecs.decode_b64("***")
    assert info.value.status == 422


def test_request_body_prefers_the_raw_body() -> None:
    assert sg_codecs.request_body({"body": b"x"}) == b"x"
    assert sg_codecs.request_body({"data": b"y"}) == b"y"
    with pytest.raises(RequestError):
        sg_codecs.request_body({})


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be",
                                      "utf-32", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize("text", ['{"inputs": [true, 1.0]}', '{"instances": [[0.5, false]]}',
                                  '{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", '
                                  '"data": [1.0, true]}]}'])
def test_booleans_are_never_numbers_whatever_the_body_encoding(text: str, encoding: str) -> None:
    """The scan for booleans is skipped only when the body's text holds no true/false: a UTF-16/32
    body (which json.loads reads too) must still be scanned."""
    sg_tensors = handler_module("sg_tensors")
    spec = sg_tensors.TensorSpec("x", (2,), np.dtype(np.float32))
    with pytest.raises(RequestError, match="booleans are not numbers") as caught:
        sg_tensors.decode(sg_codecs.parse(text.encode(encoding), max_bytes=1000), [spec])
    assert caught.value.status == 422


@pytest.mark.parametrize(("body", "scanned"), [
    (b'{"inputs": [0.5, 1.0]}', False),
    ('{"inputs": [0.5, 1.0]}', False),
    (b'{"inputs": [0.5, 1.0], "id": "true"}', True),  # the bytes are there: scanned (harmless)
    ('{"inputs": [0.5, 1.0]}'.encode("utf-16"), True),
    ({"inputs": [0.5, 1.0]}, True),  # decoded by TorchServe already: always scanned
])
def test_the_boolean_scan_is_skipped_only_for_utf8_text_without_true_or_false(body, scanned) -> None:
    assert sg_codecs.parse(body, max_bytes=1000).booleans is scanned
