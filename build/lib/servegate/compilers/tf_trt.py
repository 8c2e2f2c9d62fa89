"""TF-TRT: convert a SavedModel signature with ``TrtGraphConverterV2`` (FP32, FP16, INT8).

pip's TensorFlow wheels since 2.18 are built without TensorRT, so on such an install (this
machine's) ``convert_trt`` raises ``BackendUnavailable`` saying so; NVIDIA's TensorFlow container
(nvcr.io/nvidia/tensorflow) ships a TensorRT-enabled TensorFlow with a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from servegate.errors import BackendUnavailable, CompileError, ConfigError

Precision = Literal["FP32", "FP16", "INT8"]

NO_TENSORRT = (
    "TF-TRT needs a TensorFlow built with TensorRT: pip TensorFlow 2.18 and later is built "
    "without it. Use NVIDIA's TensorFlow container (nvcr.io/nvidia/tensorflow), which ships "
    "TF-TRT and TensorRT, on a host with an NVIDIA GPU"
)


def trt_unavailable_reason() -> str | None:
    """Why TF-TRT cannot run here, or None when this TensorFlow has TensorRT."""
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils
        from tensorflow.python.compiler.tensorrt import trt_convert  # noqa: F401
    except ImportError as exc:
        return f"{NO_TENSORRT} (trt_convert does not import: {exc})"
    if not _pywrap_py_utils.is_tensorrt_enabled():
        import tensorflow as tf

        return f"{NO_TENSORRT}; this TensorFlow {tf.__version__} has is_tensorrt_enabled() false"
    return None


def calibration_input_fn(x: np.ndarray, batch_size: int = 8,
                         batches: int = 8) -> Callable[[], Iterator[tuple[np.ndarray]]]:
    """An INT8 calibration input function over representative rows (equal-shaped batches)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < batch_size:
        raise ConfigError(f"INT8 calibration needs at least {batch_size} rows, got {len(x)}")

    def input_fn() -> Iterator[tuple[np.ndarray]]:
        for i in range(min(batches, len(x) // batch_size)):
            yield (x[i * batch_size:(i + 1) * batch_size],)

    return input_fn


def convert_trt(saved_model_dir: Path, output_dir: Path, *, precision: Precision = "FP32",
                calibration_rows: np.ndarray | None = None, build_rows: np.ndarray | None = None,
                signature_key: str = "serving_default", minimum_segment_size: int = 3,
                max_workspace_size_bytes: int = 1 << 30) -> Path:
    """Convert ``signature_key`` of a SavedModel with TF-TRT and save it to ``output_dir``.

    INT8 calibrates on ``calibration_rows``; ``build_rows`` (optional) builds the engines ahead of
    time for that batch shape instead of at the first request. Only the converted signature is kept.
    """
    if reason := trt_unavailable_reason():
        raise BackendUnavailable(reason)
    if precision not in ("FP32", "FP16", "INT8"):
        raise ConfigError(f"unknown TF-TRT precision {precision!r}: FP32, FP16 or INT8")
    if precision == "INT8" and calibration_rows is None:
        raise ConfigError("TF-TRT INT8 needs calibration_rows (representative inputs)")
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    try:
        converter = trt.TrtGraphConverterV2(
            input_saved_model_dir=str(saved_model_dir),
            input_saved_model_signature_key=signature_key,
            precision_mode=getattr(trt.TrtPrecisionMode, precision),
            minimum_segment_size=minimum_segment_size,
            max_workspace_size_bytes=max_workspace_size_bytes,
            use_calibration=precision == "INT8",
        )
        if precision == "INT8":
            assert calibration_rows is not None
            converter.convert(calibration_input_fn=calibration_input_fn(calibration_rows))
        else:
            converter.convert()
        if build_rows is not None:
            rows = np.ascontiguousarray(build_rows, dtype=np.float32)
            converter.build(input_fn=lambda: iter([(rows,)]))
        converter.save(str(output_dir))
    except Exception as exc:  # TF-TRT raises RuntimeError/ValueError/tf errors alike
        raise CompileError(f"TF-TRT {precision} conversion failed: {exc}") from exc
    return Path(output_dir)
