"""all-MiniLM-L6-v2 served by a real TorchServe: tokenisation in the worker, dynamic padding in
real batches, served embeddings equal to the in-process ones (eager and ONNX archives)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from posting import post_together

from servegate.config import BatchingConfig

pytestmark = pytest.mark.integration
MIN_COSINE = 0.999


def _served_embeddings(backend, name: str, texts: list[str], chunk: int = 16) -> np.ndarray:
    rows = []
    for start in range(0, len(texts), chunk):
        answer = backend.predict(name, {"instances": texts[start:start + chunk]})
        rows += answer["predictions"]
    return np.asarray(rows, dtype=np.float64)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


@pytest.mark.parametrize("compiler", ["eager", "onnx"])
def test_served_embeddings_match_in_process(torchserve, build_archive, minilm,
                                            compiler: str) -> None:
    _, _, backend = torchserve
    name = f"minilm-{compiler}"
    batching = BatchingConfig(batch_size=8, max_batch_delay_ms=20)
    backend.deploy(build_archive("1", name=name, model=minilm, compiler=compiler,
                                 batching=batching), name, "1")
    try:
        texts = [str(t) for t in minilm.eval_x[:40]]  # sentences and long texts (to ~200 tokens)
        served = _served_embeddings(backend, name, texts)
        reference = minilm.reference(np.array(texts))
        assert served.shape == reference.shape == (len(texts), 384)
        assert _min_cosine(served, reference) >= MIN_COSINE
        if compiler == "eager":
            _concurrent_requests_batch_with_padding_and_bad_inputs(backend, name, minilm)
    finally:
        backend.undeploy(name, "1")


def _concurrent_requests_batch_with_padding_and_bad_inputs(backend, name: str, minilm) -> None:
    """Requests of very different lengths arrive together (batches form, padded to their longest);
    each good one gets its own embedding, each bad one its own 4xx."""
    texts = [str(t) for t in minilm.eval_x[:16]]
    bad = [b'{"inputs": 7}', b'{"inputs": ""}', b'{"words": ["a"]}',
           json.dumps({"inputs": "x" * 20_001}).encode(),
           b'{"inputs": "\\ud800 a lone surrogate"}']  # once a TypeError in tokenizers: 503
    bodies = [json.dumps({"inputs": t}).encode() for t in texts] + bad
    results = post_together(backend, name, bodies, timeout=120)
    reference = minilm.reference(np.array(texts))
    served = np.array([results[i].json()["outputs"] for i in range(len(texts))])
    assert all(results[i].status_code == 200 for i in range(len(texts)))
    np.testing.assert_allclose(served, reference, atol=1e-5)
    statuses = [results[len(texts) + i].status_code for i in range(len(bad))]
    assert statuses == [422, 422, 400, 413, 422]
