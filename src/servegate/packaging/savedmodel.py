"""SavedModel export in TF Serving's versioned layout (``<base>/<name>/<version>/``).

Pre- and post-processing live INSIDE the serving signatures, so a client sends what it has:

* ``serving_default``: ``inputs`` ``[None, *row shape]`` of the model's input dtype (the digits
  model: float32 ``[None, 64]`` in [0, 1]);
* ``serving_images`` (image models only: 2-D/3-D inputs, and the digits model's flattened 8x8):
  ``image_bytes`` string ``[None]``: encoded PNG/JPEG/GIF/BMP images (base64 in REST's
  ``{"b64": ...}``), decoded to the model's channels, resized to its height x width (area) and
  scaled to [0, 1] in the graph (for digits: bright pixels are ink, like sklearn's digits).

They return, for a classifier: ``probabilities`` ``[None, classes]`` (the softmax of a logits
model; ``[1 - p, p]`` of a one-column sigmoid), the top-k ``classes`` (int64), their ``scores`` and
their ``labels`` (strings, from a lookup table in the graph); for a regressor: ``values``
``[None, outputs]``.

The archive is written by ``keras.export.ExportArchive`` (a hand-written ``tf.Module`` around a
Keras 3 model loads in TF2 but fails in the TF1 session loader TF Serving uses), together with
``assets.extra/tf_serving_warmup_requests``, into a temporary directory beside the version
directory. It is validated there (``tf.saved_model.load``, the TF1 session loader, parity with the
Keras model, the warm-up requests replayed) and only then renamed into place: the server never
sees a half-written or invalid version (TF Serving ignores non-numeric directory names).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from servegate.errors import PackagingError
from servegate.sources.keras_model import KerasModel
from servegate.tfserving_protos.requests import predict_request

SERVING_DEFAULT = "serving_default"
SERVING_IMAGES = "serving_images"
INPUT_KEY = "inputs"
IMAGE_KEY = "image_bytes"
OUTPUT_KEYS = ("probabilities", "classes", "scores", "labels")
REGRESSION_KEYS = ("values",)
IMAGE_SIDE = 8
DIGITS_IMAGE = (IMAGE_SIDE, IMAGE_SIDE, 1)
WARMUP_FILE = "tf_serving_warmup_requests"
SERVE_TAG = "serve"


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how its checks went."""

    path: Path
    name: str
    version: int
    tf2_max_abs_diff: float
    tf1_max_abs_diff: float
    image_max_abs_diff: float  # NaN: no image signature (not an image model)
    top1_agreement: float  # NaN: a regressor
    warmup_records: int
    jit_compile: bool
    seconds: float


def served_key(model: KerasModel) -> str:
    """The output of ``serving_default`` that ``KerasModel.served`` answers."""
    return REGRESSION_KEYS[0] if model.task == "regression" else OUTPUT_KEYS[0]


@dataclass
class KerasExporter:
    """The ``compilers.tf.Exporter`` of one model version: each export validated and placed
    (``export_savedmodel``), its report kept by path for the build's log."""

    model: KerasModel
    name: str
    version: int
    reports: dict[Path, ExportReport] = field(default_factory=dict)

    def export(self, base: Path, *, jit_compile: bool) -> Path:
        report = export_savedmodel(self.model, base, self.name, self.version,
                                   jit_compile=jit_compile)
        self.reports[report.path] = report
        return report.path

    def predictor(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        """``serving_default`` loaded in process (``tf.saved_model.load``), as the server runs it."""
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures[SERVING_DEFAULT]
        key, dtype = served_key(self.model), tf.as_dtype(self.model.input_dtype)

        def predict(rows: np.ndarray, _keep_alive: Any = loaded) -> np.ndarray:
            return signature(**{INPUT_KEY: tf.constant(rows, dtype)})[key].numpy()

        return predict


def version_dir(base: Path, name: str, version: int | str) -> Path:
    return Path(base) / name / str(version)


def to_png_bytes(rows: np.ndarray, image_shape: tuple[int, int, int] = DIGITS_IMAGE) -> list[bytes]:
    """Rows in [0, 1] (digits: [N, 64]) as PNGs of ``image_shape`` (height, width, channels), the
    image signature's input."""
    import tensorflow as tf

    pixels = np.clip(np.rint(np.asarray(rows, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return [tf.io.encode_png(p.reshape(image_shape)).numpy() for p in pixels]


def png_reference_rows(rows: np.ndarray) -> np.ndarray:
    """The float rows the image signature sees for ``to_png_bytes(rows)`` (8-bit quantised)."""
    pixels = np.clip(np.rint(np.asarray(rows, dtype=np.float32) * 255.0), 0, 255)
    return (pixels.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def _signature_dims(model: KerasModel) -> list[int | None]:
    return [None, *(None if d == -1 else int(d) for d in model.input_shape)]


def _build_archive(model: KerasModel, path: Path, *, top_k: int, jit_compile: bool) -> None:
    import keras
    import tensorflow as tf

    from servegate.compilers.tf_xla import forward_function

    forward = forward_function(model.model, model.input_shape, jit_compile=jit_compile,
                               dtype=model.input_dtype)
    archive = keras.export.ExportArchive()
    archive.track(model.model)
    if model.task == "regression":
        def postprocess(out: Any) -> dict[str, Any]:
            return {"values": tf.reshape(out, [tf.shape(out)[0], -1])}
    else:
        k = min(top_k, len(model.labels))
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.range(len(model.labels), dtype=tf.int64), tf.constant(model.labels, tf.string)),
            default_value="<unknown>",
        )
        archive.track(table)

        def postprocess(out: Any) -> dict[str, Any]:
            if model.output_kind == "logits":
                probabilities = tf.nn.softmax(out, axis=-1)
            elif model.output_kind == "sigmoid":
                p = tf.reshape(out, [-1, 1])
                probabilities = tf.concat([1.0 - p, p], axis=1)
            else:
                probabilities = out
            scores, classes = tf.math.top_k(probabilities, k=k)
            classes = tf.cast(classes, tf.int64)
            return {"probabilities": probabilities, "classes": classes, "scores": scores,
                    "labels": table.lookup(classes)}

    def serve(inputs: Any) -> dict[str, Any]:
        return postprocess(forward(inputs))

    archive.add_endpoint(SERVING_DEFAULT, serve, input_signature=[
        tf.TensorSpec(_signature_dims(model), tf.as_dtype(model.input_dtype), INPUT_KEY)])
    if model.image_shape is not None:
        height, width, channels = model.image_shape
        row_shape = [int(d) for d in model.input_shape]

        def decode(data: Any) -> Any:
            image = tf.io.decode_image(data, channels=channels, dtype=tf.uint8,
                                       expand_animations=False)
            image = tf.cast(image, tf.float32) / 255.0
            image = tf.image.resize(image, [height, width], method="area")
            return tf.cast(tf.reshape(image, row_shape), tf.as_dtype(model.input_dtype))

        def serve_images(image_bytes: Any) -> dict[str, Any]:
            rows = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec(
                row_shape, tf.as_dtype(model.input_dtype)))
            return postprocess(forward(rows))

        archive.add_endpoint(SERVING_IMAGES, serve_images,
                             input_signature=[tf.TensorSpec([None], tf.string, IMAGE_KEY)])
    archive.write_out(str(path), verbose=False)


def write_warmup(path: Path, name: str, rows: np.ndarray,
                 image_shape: tuple[int, int, int] | None = DIGITS_IMAGE) -> int:
    """``assets.extra/tf_serving_warmup_requests``: PredictionLogs replayed by TF Serving at load,
    one per signature (the rows, and PNG bytes of the same rows for an image model). Returns the
    record count."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    rows = np.asarray(rows)
    requests = [predict_request(name, SERVING_DEFAULT, {INPUT_KEY: rows})]
    if image_shape is not None:
        requests.append(predict_request(
            name, SERVING_IMAGES, {IMAGE_KEY: np.asarray(to_png_bytes(rows, image_shape), dtype=object)}))
    target = Path(path) / "assets.extra" / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(requests)


def read_warmup(path: Path) -> list[Any]:
    """The ``PredictionLog`` records of a version's warm-up file."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    target = Path(path) / "assets.extra" / WARMUP_FILE
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(target))]


def run_tf1(path: Path, signature: str, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run one signature through the TF1 session loader, the way TF Serving loads a SavedModel."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, [SERVE_TAG], str(path))
        signature_def = meta.signature_def[signature]
        feed = {signature_def.inputs[k].name: v for k, v in feeds.items()}
        fetch = {k: t.name for k, t in signature_def.outputs.items()}
        return session.run(fetch, feed_dict=feed)


def run_tf2(path: Path, signature: str, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def validate(path: Path, model: KerasModel, name: str, *, atol: float = 1e-5,
             rows: int = 64) -> dict[str, float]:
    """Check an export: both loaders, parity with Keras on held-out rows, labels consistent with
    classes, the image signature (image models), and every warm-up request (as the server
    replays them)."""
    import tensorflow as tf

    x = model.example_batch(rows)
    key = served_key(model)
    reference = model.served(x)
    tf2 = run_tf2(path, SERVING_DEFAULT, {INPUT_KEY: x})
    tf1 = run_tf1(path, SERVING_DEFAULT, {INPUT_KEY: x})
    nan = float("nan")
    figures = {
        "tf2_max_abs_diff": float(np.abs(tf2[key] - reference).max()),
        "tf1_max_abs_diff": float(np.abs(tf1[key] - reference).max()),
        "image_max_abs_diff": nan,
        "top1_agreement": nan,
    }
    if model.image_shape is not None:
        images = run_tf1(path, SERVING_IMAGES, {IMAGE_KEY: np.asarray(
            to_png_bytes(x, model.image_shape), dtype=object)})
        quantised = png_reference_rows(x).astype(model.input_dtype)
        image_reference = model.served(quantised)
        figures["image_max_abs_diff"] = float(np.abs(images[key] - image_reference).max())
    for figure, diff in figures.items():
        checked = figure != "image_max_abs_diff" or model.image_shape is not None
        if figure.endswith("diff") and checked and not diff <= atol:  # NaN fails too
            raise PackagingError(f"{path}: {figure} {diff:.3g} > {atol:g} against the Keras model")
    if model.task != "regression":
        figures["top1_agreement"] = float((tf1["classes"][:, 0] == reference.argmax(-1)).mean())
        expected = np.asarray(model.labels, dtype=object)[tf1["classes"]]
        if not (tf1["labels"].astype(str) == expected.astype(str)).all():
            raise PackagingError(f"{path}: the labels output does not match the classes output")
    loaded = tf.saved_model.load(str(path))
    for log in read_warmup(path):
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name](
            **{k: tf.constant(v) for k, v in inputs.items()})
        if request.model_spec.name != name:
            raise PackagingError(f"{path}: warm-up request names model {request.model_spec.name}")
    return figures


def export_savedmodel(model: KerasModel, base: Path, name: str, version: int, *, top_k: int = 3,
                      jit_compile: bool = False, atol: float = 1e-5, warmup_rows: int = 4,
                      overwrite: bool = False) -> ExportReport:
    """Export, validate and atomically place ``<base>/<name>/<version>/``.

    ``jit_compile`` compiles the forward pass with XLA (the ``xla`` compiler; the validation's
    parity check covers it); such a version needs a TF Serving started with
    ``--xla_cpu_compilation_enabled=true``.
    """
    start = time.perf_counter()
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PackagingError(f"TF Serving versions are positive integers, got {version!r}")
    target = version_dir(base, name, version)
    if target.exists() and not overwrite:
        raise PackagingError(f"{target} exists: versions are immutable (pass overwrite=True)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".incoming-{version}-"))
    staging.chmod(0o755)  # mkdtemp makes it 0700: a server running as another user reads it
    try:
        _build_archive(model, staging, top_k=top_k, jit_compile=jit_compile)
        records = write_warmup(staging, name, model.example_batch(warmup_rows), model.image_shape)
        figures = validate(staging, model, name, atol=atol)
        _place(staging, target)
    except PackagingError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as exc:  # TensorFlow raises many types while tracing, saving and loading
        shutil.rmtree(staging, ignore_errors=True)
        raise PackagingError(f"SavedModel export of {name} v{version} failed: {exc}") from exc
    return ExportReport(path=target, name=name, version=version, warmup_records=records,
                        jit_compile=jit_compile, seconds=time.perf_counter() - start, **figures)


def _place(staging: Path, target: Path) -> None:
    """Rename the finished directory into place (an existing one is swapped out, then removed)."""
    old = None
    if target.exists():
        old = target.with_name(f".replaced-{target.name}-{os.getpid()}")
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
