"""Time a SavedModel version's default signature on one thread, on one of its warm-up rows and
on a batch of them, and print the medians as JSON.

Run in a subprocess only (``python -m servegate.tuning.tf_costs VERSION_DIR BATCH REPEATS``),
with an environment that holds no credentials (``config.child_environment``): the
SavedModel's graph runs here, and TensorFlow's thread pools are set for this process alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def signature_ms(version_dir: Path, largest_batch: int, repeats: int) -> tuple[float, float]:
    """Median milliseconds of the default signature on 1 and ``largest_batch`` rows."""
    import numpy as np
    import tensorflow as tf

    from servegate.packaging.savedmodel import SERVING_DEFAULT, read_warmup
    from servegate.tuning.costs import median_ms

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    inputs: dict[str, np.ndarray] = {}
    for log in read_warmup(version_dir):
        request = log.predict_log.request
        if request.model_spec.signature_name in ("", SERVING_DEFAULT):
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            break
    if not inputs:
        raise SystemExit(f"{version_dir}: no warm-up request on {SERVING_DEFAULT}")
    signature = tf.saved_model.load(str(version_dir)).signatures[SERVING_DEFAULT]

    def feeds(n: int) -> dict[str, object]:
        return {k: tf.constant(np.resize(v, (n, *v.shape[1:]))) for k, v in inputs.items()}

    one, largest = feeds(1), feeds(largest_batch)
    signature(**largest)  # warm both shapes up
    signature(**one)
    return (median_ms(lambda: signature(**one), repeats),
            median_ms(lambda: signature(**largest), max(3, repeats // 3)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        raise SystemExit("usage: python -m servegate.tuning.tf_costs VERSION_DIR BATCH REPEATS")
    one, largest = signature_ms(Path(args[0]), int(args[1]), int(args[2]))
    print(json.dumps({"batch1_ms": one, "largest_ms": largest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
