"""No code from a registry without ``trust_pickle`` (issue 19, item 1), tried as a registry writer
would: a text model whose files hold a pickle payload, metadata that lies about the format, a
config naming a class outside servegate's text networks, a ``.pt2`` check that is missing. Text
models servegate logs itself carry no pickle, whatever their class (real MLflow on SQLite)."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from servegate.errors import SourceError
from servegate.sources import TorchModel, load_torch_model

TEXTS = np.array(["The striker scored twice in the cup final.",
                  "Heavy rain is expected on the coast tonight.",
                  "Stir in the garlic and simmer for ten minutes.",
                  "The new phone ships with a faster processor.",
                  "Markets fell after the central bank spoke."])


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what a registry writer would plant)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class BagOfWords(torch.nn.Module):
    """A user's own text encoder, whose class is NOT one of servegate's text networks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(30522, 16)
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(self.proj(pooled), dim=-1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    """A fresh MLflow (SQLite + a local artifact folder) as the tracking URI."""
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
        try:
            mlflow.create_experiment("trust", artifact_location=(tmp_path / "artifacts").as_uri())
            mlflow.set_experiment("trust")
            yield tmp_path
        finally:
            mlflow.set_tracking_uri(None)


def _tokenizer() -> Path:
    from servegate.sources.hf import packaged_minilm_dir

    return packaged_minilm_dir() / "tokenizer.json"


def _register_crafted_text_model(folder: Path, name: str, *, weights: Path, config: dict,
                                 metadata: dict) -> str:
    """Register a pyfunc shaped like servegate's text models, with files a writer chose."""
    import mlflow

    from servegate.sources.text_pyfunc import TextPyfunc

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text_model.json").write_text(json.dumps(config), encoding="utf-8")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=TextPyfunc(), pip_requirements=["torch"],
            artifacts={"weights": str(weights), "tokenizer": str(_tokenizer()),
                       "config": str(folder / "text_model.json")},
            metadata={"servegate_text": True, **metadata}, registered_model_name=name)
    return f"models:/{name}/{info.registered_model_version}"


CONFIG = {"task": "embedding", "max_length": 32, "labels": [], "model_class": None,
          "model_kwargs": {}, "head": None}


@pytest.mark.parametrize("metadata_format", ["pickle", "state_dict", "exported_program"])
def test_a_pickled_text_model_runs_nothing_without_trust(store: Path, metadata_format: str) -> None:
    """Whatever the registry's metadata says, the files' own format decides, checked before the
    weights are read: the payload runs only when the user trusts it."""
    marker = store / f"pwned-{metadata_format}"
    weights = store / "weights.pt"
    torch.save(_Payload(marker), weights)
    uri = _register_crafted_text_model(store / "crafted", f"evil-{metadata_format.replace('_', '-')}",
                                       weights=weights, config=CONFIG | {"format": "pickle"},
                                       metadata=CONFIG | {"format": metadata_format})
    with pytest.raises(SourceError, match="pickle.*trust_pickle") as refused:
        load_torch_model(uri, eval_data=None)
    assert not marker.exists(), "the pickle payload ran"
    if metadata_format != "pickle":
        assert "pickled module" in str(refused.value)
    # the payload is real: trusting the author runs it (then the file is no module at all)
    with pytest.raises(Exception):  # noqa: B017 (whatever the payload's return value breaks)
        load_torch_model(uri, trust_pickle=True)
    assert marker.exists() == (metadata_format == "pickle")


def test_a_config_naming_another_class_is_refused(store: Path) -> None:
    """``state_dict`` format builds only servegate's own text networks, never an attribute of
    the module that happens to be callable."""
    from safetensors.torch import save_file

    weights = store / "weights.safetensors"
    save_file({"w": torch.zeros(1)}, str(weights))
    for model_class in ("text_net.torch", "text_net._Layer", "text_net.F", "os.system"):
        config = CONFIG | {"format": "state_dict", "model_class": model_class}
        uri = _register_crafted_text_model(store / model_class, f"cls-{abs(hash(model_class))}",
                                           weights=weights, config=config, metadata=config)
        with pytest.raises(SourceError, match="not one of servegate's text networks"):
            load_torch_model(uri)


def test_a_user_text_class_is_logged_without_pickle_and_imports_back(store: Path) -> None:
    """A text model whose class is the user's own is logged as an ExportedProgram (no pickle),
    and imports back from ``models:/`` without trust_pickle, answering as the original."""
    import mlflow

    from servegate.sources.text_pyfunc import log_text_model

    torch.manual_seed(0)
    model = TorchModel(module=BagOfWords().eval(), input_shape=(), labels=[], task="embedding",
                       tokenizer_file=_tokenizer(), max_length=32, eval_x=TEXTS)
    with mlflow.start_run():
        info = log_text_model(model, registered_model_name="bag")
    assert info.metadata["format"] == "exported_program"
    local = Path(mlflow.artifacts.download_artifacts("models:/bag/1"))
    files = sorted(p.name for p in local.rglob("*") if p.is_file())
    assert "model.pt2" in files and "weights.pt" not in files
    assert not any(n.endswith((".pkl", ".pt", ".pth")) for n in files if n != "python_model.pkl")
    imported = load_torch_model("models:/bag/1", eval_data=None)
    assert imported.program is not None and imported.model_class is None
    np.testing.assert_allclose(imported.reference(TEXTS), model.reference(TEXTS), atol=1e-5)


def test_a_text_net_model_is_logged_as_safetensors(store: Path, minilm) -> None:
    import mlflow

    from servegate.sources.text_pyfunc import log_text_model

    with mlflow.start_run():
        log_text_model(minilm, registered_model_name="mini")
    local = Path(mlflow.artifacts.download_artifacts("models:/mini/1"))
    weights = next(local.rglob("weights.safetensors"))
    raw = weights.read_bytes()  # safetensors: a little-endian u64 header size, a JSON header, data
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert set(header) - {"__metadata__"} == set(minilm.module.state_dict())
    assert not list(local.rglob("weights.pt"))
    imported = load_torch_model("models:/mini/1", eval_data=None)
    np.testing.assert_allclose(imported.reference(TEXTS[:2]), minilm.reference(TEXTS[:2]),
                               atol=1e-5)


def test_the_pt2_check_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MLflow's pickle-free check, a ``.pt2`` is refused (torch.export.load unpickles)."""
    import mlflow.pytorch

    from servegate.sources.imports import load_program

    program = torch.export.export(torch.nn.Linear(3, 2).eval(), (torch.zeros(2, 3),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    assert load_program(path, trust_pickle=False) is not None
    monkeypatch.delattr(mlflow.pytorch, "_validate_pt2_archive_is_pickle_free")
    with pytest.raises(SourceError, match="cannot verify"):
        load_program(path, trust_pickle=False)
    assert load_program(path, trust_pickle=True) is not None


def test_a_pt2_with_a_pickled_record_is_refused(tmp_path: Path) -> None:
    """A crafted ``.pt2`` whose record is a pickle payload is refused before torch reads it."""
    from servegate.sources.imports import load_program

    program = torch.export.export(torch.nn.Linear(3, 2).eval(), (torch.zeros(2, 3),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(path, "a") as archive:
        import pickle

        name = next(n for n in archive.namelist() if n.endswith(".json")).rsplit("/", 1)[0]
        archive.writestr(f"{name}/extra.pkl", pickle.dumps(_Payload(marker)))
    with pytest.raises(SourceError, match="pickle"):
        load_program(path, trust_pickle=False)
    assert not marker.exists()
