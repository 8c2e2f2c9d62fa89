"""TensorFlow for real: the Keras digits model, SavedModel export in TF Serving's layout with the
pre/post-processing in the signatures, both loaders, parity, warm-up records, atomic version
writes, XLA, and TF-TRT's clear refusal on a TensorFlow without TensorRT."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from servegate.errors import BackendUnavailable, PackagingError  # noqa: E402
from servegate.packaging import savedmodel  # noqa: E402
from servegate.packaging.savedmodel import (  # noqa: E402
    IMAGE_KEY,
    INPUT_KEY,
    OUTPUT_KEYS,
    SERVING_DEFAULT,
    SERVING_IMAGES,
    export_savedmodel,
    png_reference_rows,
    read_warmup,
    run_tf1,
    run_tf2,
    to_png_bytes,
)
from servegate.sources.digits_keras import builtin_digits_keras  # noqa: E402
from servegate.sources.keras_model import KerasModel  # noqa: E402


@pytest.fixture(scope="module")
def keras_digits() -> KerasModel:
    return builtin_digits_keras(epochs=10)


@pytest.fixture(scope="module")
def exported(keras_digits: KerasModel, tmp_path_factory: pytest.TempPathFactory):
    return export_savedmodel(keras_digits, tmp_path_factory.mktemp("models"), "digits", 1)


def test_builtin_keras_model_trains_accurately_and_deterministically(keras_digits) -> None:
    assert keras_digits.metrics["accuracy"] > 0.9
    assert keras_digits.source_uri == "builtin:digits-keras"
    assert keras_digits.labels == [str(i) for i in range(10)]
    probabilities = keras_digits.reference(keras_digits.example_batch(5))
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    a, b = builtin_digits_keras(epochs=1, seed=3), builtin_digits_keras(epochs=1, seed=3)
    x = keras_digits.example_batch(16)
    assert np.array_equal(a.reference(x), b.reference(x))


def test_export_layout_both_loaders_and_parity(exported, keras_digits) -> None:
    assert exported.path.parts[-2:] == ("digits", "1")
    assert (exported.path / "saved_model.pb").is_file()
    assert (exported.path / "variables").is_dir()
    assert [p.name for p in exported.path.parent.iterdir()] == ["1"]  # no staging dir left
    for figure in (exported.tf2_max_abs_diff, exported.tf1_max_abs_diff,
                   exported.image_max_abs_diff):
        assert figure <= 1e-5
    assert exported.top1_agreement == 1.0
    x = keras_digits.eval_x
    reference = keras_digits.reference(x)
    tf1 = run_tf1(exported.path, SERVING_DEFAULT, {INPUT_KEY: x})
    tf2 = run_tf2(exported.path, SERVING_DEFAULT, {INPUT_KEY: x})
    assert set(tf1) == set(tf2) == {"probabilities", "classes", "scores", "labels"}
    assert np.abs(tf1["probabilities"] - reference).max() <= 1e-5
    assert np.abs(tf2["probabilities"] - reference).max() <= 1e-5
    assert tf1["classes"].shape == (len(x), 3) and tf1["classes"].dtype == np.int64
    assert np.array_equal(tf1["classes"][:, 0], reference.argmax(-1))
    np.testing.assert_allclose(tf1["scores"][:, 0], reference.max(-1), atol=1e-6)
    # labels come from the lookup table in the graph
    assert [label.decode() for label in tf1["labels"][:, 0]] == [str(c) for c in
                                                                 tf1["classes"][:, 0]]


def test_signatures_are_declared_for_tf_serving(exported) -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(exported.path))
    default = meta.signature_def[SERVING_DEFAULT]
    images = meta.signature_def[SERVING_IMAGES]
    assert default.method_name == images.method_name == "tensorflow/serving/predict"
    assert default.inputs[INPUT_KEY].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in default.inputs[INPUT_KEY].tensor_shape.dim] == [-1, 64]
    assert images.inputs[IMAGE_KEY].dtype == tf.string.as_datatype_enum
    assert default.outputs["labels"].dtype == tf.string.as_datatype_enum


def test_image_signature_decodes_resizes_and_normalises(exported, keras_digits) -> None:
    import tensorflow as tf

    x = keras_digits.example_batch(12)
    # 8x8 PNGs, and the same digits at 16x16 (each pixel doubled): area resize recovers them
    small = to_png_bytes(x)
    big = [tf.io.encode_png(np.repeat(np.repeat(
        tf.io.decode_png(p).numpy(), 2, axis=0), 2, axis=1)).numpy() for p in small]
    reference = keras_digits.reference(png_reference_rows(x))
    for images in (small, big):
        out = run_tf1(exported.path, SERVING_IMAGES, {IMAGE_KEY: np.asarray(images, dtype=object)})
        assert np.abs(out["probabilities"] - reference).max() <= 1e-5
    jpeg = tf.io.encode_jpeg(tf.io.decode_png(small[0]), quality=100).numpy()
    out = run_tf2(exported.path, SERVING_IMAGES, {IMAGE_KEY: np.asarray([jpeg], dtype=object)})
    assert out["probabilities"].shape == (1, 10)


def test_warmup_records_parse_back(exported) -> None:
    import tensorflow as tf

    logs = read_warmup(exported.path)
    assert exported.warmup_records == len(logs) == 2
    requests = [log.predict_log.request for log in logs]
    assert {r.model_spec.name for r in requests} == {"digits"}
    assert [r.model_spec.signature_name for r in requests] == [SERVING_DEFAULT, SERVING_IMAGES]
    floats = tf.make_ndarray(requests[0].inputs[INPUT_KEY])
    assert floats.shape == (4, 64) and floats.dtype == np.float32
    images = tf.make_ndarray(requests[1].inputs[IMAGE_KEY])
    assert images.shape == (4,) and images[0].startswith(b"\x89PNG")


def test_version_directory_appears_whole_or_not_at_all(keras_digits, tmp_path: Path,
                                                       monkeypatch) -> None:
    real_validate = savedmodel.validate
    seen: list[list[str]] = []

    def validate_while_watching(path, *args, **kwargs):
        # mid-export: the version directory does not exist yet, the staging one is not numeric
        seen.append(sorted(p.name for p in (tmp_path / "digits").iterdir()))
        return real_validate(path, *args, **kwargs)

    monkeypatch.setattr(savedmodel, "validate", validate_while_watching)
    report = export_savedmodel(keras_digits, tmp_path, "digits", 2)
    assert len(seen) == 1 and len(seen[0]) == 1 and not seen[0][0].isdigit()
    assert sorted(os.listdir(tmp_path / "digits")) == ["2"]
    with pytest.raises(PackagingError, match="immutable"):
        export_savedmodel(keras_digits, tmp_path, "digits", 2)

    def broken_validate(*args, **kwargs):
        raise PackagingError("parity failed on purpose")

    monkeypatch.setattr(savedmodel, "validate", broken_validate)
    with pytest.raises(PackagingError, match="on purpose"):
        export_savedmodel(keras_digits, tmp_path, "digits", 3)
    assert sorted(os.listdir(tmp_path / "digits")) == ["2"]  # nothing half-written is left
    monkeypatch.setattr(savedmodel, "validate", real_validate)
    inode = report.path.stat().st_ino
    again = export_savedmodel(keras_digits, tmp_path, "digits", 2, overwrite=True)
    assert again.path.stat().st_ino != inode
    assert sorted(os.listdir(tmp_path / "digits")) == ["2"]
    for bad in (0, -1, "3"):
        with pytest.raises(PackagingError, match="positive integers"):
            export_savedmodel(keras_digits, tmp_path, "digits", bad)  # type: ignore[arg-type]


def test_xla_export_keeps_parity(keras_digits, tmp_path: Path) -> None:
    from servegate.compilers.tf_xla import check_xla

    check = check_xla(keras_digits.model, keras_digits.eval_x)
    assert check.max_abs_diff <= 1e-5
    report = export_savedmodel(keras_digits, tmp_path, "digits", 1, jit_compile=True)
    assert report.jit_compile
    assert max(report.tf1_max_abs_diff, report.tf2_max_abs_diff) <= 1e-5
    assert b"_XlaMustCompile" in (report.path / "saved_model.pb").read_bytes()


def test_tf_trt_says_this_tensorflow_has_no_tensorrt(exported, tmp_path: Path) -> None:
    from servegate.compilers.tf_trt import convert_trt, trt_unavailable_reason

    reason = trt_unavailable_reason()
    assert reason is not None and "2.18" in reason and "NVIDIA" in reason
    for precision in ("FP32", "FP16", "INT8"):
        with pytest.raises(BackendUnavailable, match="built without") as info:
            convert_trt(exported.path, tmp_path / precision, precision=precision,  # type: ignore[arg-type]
                        calibration_rows=np.zeros((16, 64), np.float32))
        assert "nvcr.io/nvidia/tensorflow" in str(info.value)
    assert not (tmp_path / "FP32").exists()


# ---- users' Keras models: 13 features (classifier, logits, regressor), an RGB image model ----------
@pytest.fixture(scope="module")
def user_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KerasModel]:
    from tiny_keras_models import (
        save_image_model,
        save_wine_classifier,
        save_wine_regressor,
        wine_csv,
        wine_npz,
    )

    from servegate.sources.keras_import import load_keras_model

    folder = tmp_path_factory.mktemp("user-keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "images.npz", x=rng.random((10, 6, 6, 3), dtype=np.float32),
             y=rng.integers(0, 4, 10))
    csv, npz = str(wine_csv(folder / "wine.csv")), str(wine_npz(folder / "two.npz", outputs=2))
    return {
        "classifier": load_keras_model(str(save_wine_classifier(folder / "c.keras", epochs=5)),
                                       eval_data=csv),
        "logits": load_keras_model(str(save_wine_classifier(folder / "l.keras", logits=True, epochs=5)),
                                   eval_data=csv, class_names=["barolo", "grignolino", "barbera"]),
        "regressor": load_keras_model(str(save_wine_regressor(folder / "r.keras", outputs=2, epochs=5)),
                                      eval_data=npz),
        "image": load_keras_model(str(save_image_model(folder / "i.keras")),
                                  eval_data=str(folder / "images.npz")),
    }


@pytest.mark.parametrize("kind", ["classifier", "logits"])
def test_tabular_classifier_export_without_image_signature(user_models, kind: str,
                                                           tmp_path: Path) -> None:
    model = user_models[kind]
    report = export_savedmodel(model, tmp_path, "wine", 1)
    assert max(report.tf1_max_abs_diff, report.tf2_max_abs_diff) <= 1e-5
    assert report.top1_agreement == 1.0 and np.isnan(report.image_max_abs_diff)
    assert report.warmup_records == 1
    meta = _signatures(report.path)
    assert set(meta) == {SERVING_DEFAULT}
    assert [d.size for d in meta[SERVING_DEFAULT].inputs[INPUT_KEY].tensor_shape.dim] == [-1, 13]
    x = model.eval_x
    tf1 = run_tf1(report.path, SERVING_DEFAULT, {INPUT_KEY: x})
    tf2 = run_tf2(report.path, SERVING_DEFAULT, {INPUT_KEY: x})
    assert set(tf1) == set(OUTPUT_KEYS)
    expected = model.probabilities(x)  # the softmax of a logits model, in the graph
    for out in (tf1, tf2):
        np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
        np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, atol=1e-5)
    labels = np.asarray(model.labels)[expected.argmax(1)]
    assert [s.decode() for s in tf1["labels"][:, 0]] == list(labels)


def test_regressor_export_serves_values(user_models, tmp_path: Path) -> None:
    model = user_models["regressor"]
    report = export_savedmodel(model, tmp_path, "alcohol", 1, jit_compile=True)
    assert max(report.tf1_max_abs_diff, report.tf2_max_abs_diff) <= 1e-5
    assert np.isnan(report.top1_agreement) and np.isnan(report.image_max_abs_diff)
    assert set(_signatures(report.path)) == {SERVING_DEFAULT}
    tf1 = run_tf1(report.path, SERVING_DEFAULT, {INPUT_KEY: model.eval_x})
    assert set(tf1) == {"values"} and tf1["values"].shape == (len(model.eval_x), 2)
    np.testing.assert_allclose(tf1["values"], model.reference(model.eval_x), atol=1e-5)


def test_image_model_gets_the_image_signature(user_models, tmp_path: Path) -> None:
    model = user_models["image"]
    assert model.image_shape == (6, 6, 3)
    report = export_savedmodel(model, tmp_path, "rgb", 1)
    assert report.image_max_abs_diff <= 1e-5 and report.warmup_records == 2
    meta = _signatures(report.path)
    assert [d.size for d in meta[SERVING_DEFAULT].inputs[INPUT_KEY].tensor_shape.dim] == [-1, 6, 6, 3]
    x = model.eval_x[:3]
    out = run_tf1(report.path, SERVING_IMAGES,
                  {IMAGE_KEY: np.asarray(to_png_bytes(x, (6, 6, 3)), dtype=object)})
    np.testing.assert_allclose(out["probabilities"], model.probabilities(png_reference_rows(x)),
                               atol=1e-5)


def _signatures(path: Path) -> dict:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(path))
    return {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
