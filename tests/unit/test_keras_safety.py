"""Keras archives and SavedModels are read statically before they load without ``trust_pickle``
(issue 19, item 1): a Lambda layer, a config naming a module outside Keras, extra files in the
archive, a SavedModel whose signature writes files; ordinary models pass."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from servegate.errors import SourceError
from servegate.sources.keras_safety import unsafe_signature_ops, vet_keras_archive, vet_savedmodel

keras = pytest.importorskip("keras", reason="the tf extra (keras) is not installed")


def _dense(path: Path) -> Path:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.save(path)
    return path


def _rewrite_config(source: Path, target: Path, edit) -> Path:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for item in original.namelist():
            data = original.read(item)
            if item == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            copy.writestr(item, data)
    return target


def test_an_ordinary_keras_model_passes(tmp_path: Path) -> None:
    vet_keras_archive(_dense(tmp_path / "ok.keras"), what="ok")


def test_a_lambda_layer_is_refused_and_loads_only_with_trust(tmp_path: Path) -> None:
    from servegate.sources.keras_import import _load

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t * 2)(inputs)))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(SourceError, match="Lambda layer.*trust_pickle"):
        _load(str(path))
    loaded = _load(str(path), trust_pickle=True)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


def test_a_config_naming_a_module_outside_keras_is_refused(tmp_path: Path) -> None:
    """Keras imports the modules a config names (code by reference)."""
    def poison(config: dict) -> dict:
        layer = config["config"]["layers"][1]
        layer["config"]["activation"] = {"module": "os", "class_name": "function",
                                         "config": "system", "registered_name": None}
        return config

    path = _rewrite_config(_dense(tmp_path / "ok.keras"), tmp_path / "evil.keras", poison)
    with pytest.raises(SourceError, match="names os.function"):
        vet_keras_archive(path, what="evil")

    def registered(config: dict) -> dict:
        config["config"]["layers"][1]["registered_name"] = "evilpkg>Backdoor"
        return config

    path = _rewrite_config(_dense(tmp_path / "ok2.keras"), tmp_path / "reg.keras", registered)
    with pytest.raises(SourceError, match="evilpkg>Backdoor"):
        vet_keras_archive(path, what="reg")


def test_extra_files_in_a_keras_archive_are_refused(tmp_path: Path) -> None:
    path = _dense(tmp_path / "ok.keras")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("custom_objects.pkl", b"\x80\x04K\x01.")
    with pytest.raises(SourceError, match="files Keras does not write"):
        vet_keras_archive(path, what="extra")


def test_a_savedmodel_whose_signature_writes_files_is_refused(tmp_path: Path) -> None:
    import tensorflow as tf

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(tmp_path / "planted"), tf.strings.as_string(tf.reduce_sum(x)))
            return {"values": x * 2}

    class Plain(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.ones([4, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return {"values": tf.matmul(x, self.w)}

    for name, module in (("writer", Writer()), ("plain", Plain())):
        tf.saved_model.save(module, str(tmp_path / name), signatures={"serving_default": module.serve})
    assert unsafe_signature_ops(tmp_path / "plain") == {}  # the saver's own SaveV2 is not reached
    assert "WriteFile" in unsafe_signature_ops(tmp_path / "writer")["serving_default"]
    with pytest.raises(SourceError, match="WriteFile.*trust_pickle"):
        vet_savedmodel(tmp_path / "writer", what="writer")
    vet_savedmodel(tmp_path / "plain", what="plain")
    assert not (tmp_path / "planted").exists()
