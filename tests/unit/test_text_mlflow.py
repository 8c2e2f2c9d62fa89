"""Text models in MLflow: registered as a strings-in pyfunc with a signature and an input example,
answering like the eager model, and importable again from ``models:/`` as a text TorchModel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from payloads import softmax

from servegate.errors import SourceError
from servegate.sources import TorchModel, load_torch_model

SENTENCES = np.array(["The striker scored twice in the cup final.",
                      "Heavy rain is expected on the coast tonight.",
                      "Stir in the garlic and simmer for ten minutes.",
                      "The new phone ships with a faster processor."])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, minilm, minilm_classifier) -> Iterator[dict]:
    """Both text tasks registered by the pipeline's source step (``minilm`` and ``topics``,
    version 1) in a fresh SQLite store and artifact folder; yields the models by registered name."""
    import mlflow

    from servegate.config import PipelineConfig
    from servegate.targets import get_target

    folder = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # another store's id
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        try:
            mlflow.create_experiment("text-mlflow", artifact_location=(folder / "artifacts").as_uri())
            mlflow.set_experiment("text-mlflow")
            models = {"minilm": minilm, "topics": minilm_classifier}
            for name, model in models.items():
                target = get_target(PipelineConfig(model="hf:minilm", task=model.task, name=name).target)
                with mlflow.start_run():
                    assert target.register(model, name) == "1"
            mlflow.MlflowClient().set_registered_model_alias("topics", "champion", "1")
            yield models
        finally:
            mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("name", ["minilm", "topics"])
def test_registered_with_string_signature_and_input_example(registry, name: str) -> None:
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{name}/1")
    inputs = info.signature.inputs.to_dict()
    assert inputs == [{"type": "string", "required": True}]
    assert info.metadata["servegate_text"] is True and info.metadata["task"] == registry[name].task
    assert info.saved_input_example_info is not None
    example = mlflow.models.Model.load(f"models:/{name}/1").load_input_example()
    assert len(example) >= 2 and all(isinstance(s, str) for s in np.asarray(example).reshape(-1))
    assert set(np.asarray(example).reshape(-1)) <= set(registry[name].eval_x)  # held-out sentences


def test_pyfunc_embeddings_match_the_reference(registry) -> None:
    import mlflow

    model: TorchModel = registry["minilm"]
    pyfunc = mlflow.pyfunc.load_model("models:/minilm/1")
    vectors = np.asarray(pyfunc.predict(list(SENTENCES)))
    expected = model.reference(SENTENCES)
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape
    cosines = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.9999


def test_pyfunc_labels_match_the_reference(registry) -> None:
    import mlflow
    import pandas as pd

    model: TorchModel = registry["topics"]
    pyfunc = mlflow.pyfunc.load_model("models:/topics@champion")
    answer = pyfunc.predict(pd.DataFrame({"text": SENTENCES}))
    expected = model.reference(SENTENCES).argmax(1)
    assert list(answer["label"]) == [model.labels[i] for i in expected]
    assert list(answer["label"]) == ["sports", "weather", "food", "technology"]
    probabilities = np.stack(answer["probabilities"])
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("uri, name", [("models:/minilm/1", "minilm"),
                                       ("models:/topics@champion", "topics")])
def test_import_from_the_registry_gives_a_text_model(registry, uri: str, name: str) -> None:
    original: TorchModel = registry[name]
    imported = load_torch_model(uri, task=original.task)
    assert imported.is_text and imported.task == original.task and imported.labels == original.labels
    assert imported.max_length == original.max_length and imported.source_uri == uri
    assert imported.tokenizer_file is not None and imported.tokenizer_file.name == "tokenizer.json"
    assert imported.tokenizer_file.exists()
    assert imported.model_file == original.model_file and imported.model_class == original.model_class
    assert imported.model_kwargs == original.model_kwargs
    np.testing.assert_array_equal(imported.eval_x, original.eval_x)
    if original.eval_y is None:
        assert imported.eval_y is None
    else:
        np.testing.assert_array_equal(imported.eval_y, original.eval_y)
    texts = np.concatenate([SENTENCES, original.eval_x[-1:]])  # and a long paragraph
    np.testing.assert_allclose(imported.reference(texts), original.reference(texts), atol=1e-5)


def test_import_with_another_task_is_refused(registry) -> None:
    with pytest.raises(SourceError, match="registered embedding model.*'text-classification'"):
        load_torch_model("models:/minilm/1", task="text-classification")
    with pytest.raises(SourceError, match="cannot load"):
        load_torch_model("models:/absent/1")


def test_package_from_imported_model(registry, build_archive, tmp_path: Path) -> None:
    """The imported model packages in state_dict format, with its tokenizer."""
    from servegate.packaging.mar import read_archive_member

    imported = load_torch_model("models:/minilm/1")
    archive = build_archive("2", name="minilm", model=imported, store=tmp_path)
    assert read_archive_member(archive, "tokenizer.json") == imported.tokenizer_file.read_bytes()


def test_import_options_and_input_checks(registry) -> None:
    from servegate.errors import ConfigError
    from servegate.sources.text_pyfunc import text_outputs

    short = load_torch_model("models:/minilm/1", max_length=32)
    assert short.max_length == 32 and short.text_encoder().max_length == 32
    with pytest.raises(ConfigError, match="at least one text"):
        text_outputs(registry["minilm"], [])
    with pytest.raises(ConfigError, match="takes strings"):
        text_outputs(registry["minilm"], ["fine", 3])


# ---- a user's own classifier: registered with its labels, imported back with the user's texts -----
@pytest.fixture(scope="module")
def user_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    import mlflow
    from tiny_text_models import SENTIMENT, save_tiny_bert_classifier, write_eval_texts

    from servegate.sources.hf import import_hf
    from servegate.sources.text_pyfunc import log_text_model

    folder = tmp_path_factory.mktemp("user-mlflow")
    eval_path = write_eval_texts(folder / "eval.jsonl", SENTIMENT)
    model = import_hf(f"hf:{save_tiny_bert_classifier(folder / 'sentiment')}", eval_data=str(eval_path))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        try:
            mlflow.create_experiment("user-text", artifact_location=(folder / "artifacts").as_uri())
            mlflow.set_experiment("user-text")
            with mlflow.start_run():
                info = log_text_model(model, registered_model_name="sentiment")
            assert str(info.registered_model_version) == "1"
            yield {"model": model, "eval": eval_path}
        finally:
            mlflow.set_tracking_uri(None)


def test_user_classifier_pyfunc_answers_with_its_labels(user_registry) -> None:
    import mlflow

    model: TorchModel = user_registry["model"]
    info = mlflow.models.get_model_info("models:/sentiment/1")
    assert info.metadata["head"] == "checkpoint" and info.metadata["labels"] == model.labels
    answer = mlflow.pyfunc.load_model("models:/sentiment/1").predict(list(model.eval_x))
    expected = model.reference(model.eval_x)
    assert list(answer["label"]) == [model.labels[i] for i in expected.argmax(1)]
    probabilities = np.stack(answer["probabilities"])
    np.testing.assert_allclose(probabilities, softmax(expected), atol=1e-5)


def test_user_classifier_imports_back_with_task_labels_and_eval_data(user_registry) -> None:
    from servegate.sources.eval_data import read_table, texts_from
    from servegate.sources.text_pyfunc import import_registered_text_model

    original: TorchModel = user_registry["model"]
    data = texts_from(read_table(str(user_registry["eval"])))
    imported = import_registered_text_model("models:/sentiment/1", "text-classification", eval_data=data)
    assert imported.task == "text-classification" and imported.labels == original.labels
    assert imported.model_class == "text_net.BertSequenceClassifier"
    assert imported.model_kwargs == original.model_kwargs and imported.params["head"] == "checkpoint"
    np.testing.assert_array_equal(imported.eval_y, original.eval_y)
    np.testing.assert_allclose(imported.reference(imported.eval_x), original.reference(original.eval_x),
                               atol=1e-6)
    assert imported.metrics["accuracy"] == pytest.approx(original.metrics["accuracy"])
    with pytest.raises(SourceError, match="need your held-out texts.*eval_data"):
        import_registered_text_model("models:/sentiment/1", "text-classification")
    with pytest.raises(SourceError, match="registered text-classification model"):
        import_registered_text_model("models:/sentiment/1", "text-classification", task="embedding")
