"""XLA for TensorFlow: the model's forward pass as ``tf.function(jit_compile=True)``.

The ``xla`` compiler (``compilers/tf.py``) has the SavedModel export build its forward pass so;
``xla_unavailable_reason`` checks once per process that XLA compiles and runs on this host. TF
Serving runs such a SavedModel only when started with ``--xla_cpu_compilation_enabled=true``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegate.errors import CompileError


@functools.cache
def xla_unavailable_reason() -> str | None:
    """Why XLA cannot compile here (TensorFlow missing, or a tiny ``jit_compile`` function fails or
    answers wrongly), or None: checked for real, once per process."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        return f"TensorFlow does not import: {exc}"
    try:
        double_plus_one = tf.function(lambda x: x * 2.0 + 1.0, jit_compile=True)
        answer = np.asarray(double_plus_one(tf.constant([1.0, 2.0], tf.float32)))
    except Exception as exc:  # XLA reports a missing backend or a build failure as many types
        return f"XLA does not compile on this host: {type(exc).__name__}: {exc}"[:300]
    if not np.allclose(answer, [3.0, 5.0]):
        return f"XLA compiled a test function that answered {answer.tolist()}, not [3.0, 5.0]"
    return None


@dataclass(frozen=True)
class XlaCheck:
    max_abs_diff: float
    compile_seconds: float


def forward_function(keras_model: Any, input_shape: int | tuple[int, ...], *, jit_compile: bool,
                     dtype: str = "float32") -> Any:
    """``keras_model``'s output (float32) as a ``tf.function`` over ``[None, *input_shape]``
    (``-1``: any size) of ``dtype``."""
    import tensorflow as tf

    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    dims = [None, *(None if d == -1 else int(d) for d in shape)]

    @tf.function(input_signature=[tf.TensorSpec(dims, tf.as_dtype(dtype), name="inputs")],
                 jit_compile=jit_compile, autograph=False)
    def forward(inputs: Any) -> Any:
        return tf.cast(keras_model(inputs, training=False), tf.float32)

    return forward


def check_xla(keras_model: Any, x: np.ndarray, *, atol: float = 1e-5,
              dtype: str = "float32") -> XlaCheck:
    """Compile the forward pass with XLA and compare it with the Keras model on ``x`` (rows of
    the model's input, as ``dtype``)."""
    x = np.ascontiguousarray(x, dtype=dtype)
    forward = forward_function(keras_model, x.shape[1:], jit_compile=True, dtype=x.dtype.name)
    start = time.perf_counter()
    try:
        compiled = np.asarray(forward(x))
    except Exception as exc:  # XLA reports unsupported ops and build failures as many types
        raise CompileError(f"XLA compilation failed: {exc}") from exc
    seconds = time.perf_counter() - start
    reference = np.asarray(keras_model(x, training=False), dtype=np.float32)
    diff = float(np.abs(compiled - reference).max())
    if not diff <= atol:
        raise CompileError(f"XLA output differs from the Keras model: max abs diff {diff:.3g} "
                           f"> {atol:g}")
    return XlaCheck(max_abs_diff=diff, compile_seconds=seconds)
