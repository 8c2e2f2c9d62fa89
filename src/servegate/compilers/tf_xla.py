"""XLA for TensorFlow: the model's forward pass as ``tf.function(jit_compile=True)``.

Used by the SavedModel export (``jit_compile=True``) after a parity check against the Keras model.
TF Serving runs such a SavedModel only when started with ``--xla_cpu_compilation_enabled=true``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegate.errors import CompileError

#: The flag a TF Serving needs to run XLA-compiled functions on CPU.
TFSERVING_XLA_FLAG = "--xla_cpu_compilation_enabled=true"


@dataclass(frozen=True)
class XlaCheck:
    max_abs_diff: float
    compile_seconds: float


def forward_function(keras_model: Any, input_dim: int, *, jit_compile: bool) -> Any:
    """``keras_model`` (probabilities out) as a ``tf.function`` over ``[None, input_dim]``."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, input_dim], tf.float32, name="inputs")],
                 jit_compile=jit_compile, autograph=False)
    def forward(inputs: Any) -> Any:
        return tf.cast(keras_model(inputs, training=False), tf.float32)

    return forward


def check_xla(keras_model: Any, x: np.ndarray, *, atol: float = 1e-5) -> XlaCheck:
    """Compile the forward pass with XLA and compare it with the Keras model on ``x``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    forward = forward_function(keras_model, x.shape[1], jit_compile=True)
    start = time.perf_counter()
    try:
        compiled = np.asarray(forward(x))
    except Exception as exc:  # XLA reports unsupported ops and build failures as many types
        raise CompileError(f"XLA compilation failed: {exc}") from exc
    seconds = time.perf_counter() - start
    reference = np.asarray(keras_model(x, training=False))
    diff = float(np.abs(compiled - reference).max())
    if not diff <= atol:
        raise CompileError(f"XLA output differs from the Keras model: max abs diff {diff:.3g} "
                           f"> {atol:g}")
    return XlaCheck(max_abs_diff=diff, compile_seconds=seconds)
