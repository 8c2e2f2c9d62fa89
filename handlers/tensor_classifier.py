"""TorchServe handler: classify numeric feature vectors (probabilities + top-k labels)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sg_base import BatchingHandler, Features, numeric_array
from sg_classification import Classifier
from sg_codecs import Envelope
from sg_errors import InvalidInput


class TensorClassifierHandler(BatchingHandler):
    """Feature tensors of the shape the archive records -> class probabilities and labels."""

    def configure(self, model_dir: str) -> None:
        spec_input = self.spec.get("input", {})
        self.shape = tuple(int(d) for d in spec_input.get("shape", []))
        self.dtype = str(spec_input.get("dtype", "float32"))
        self.allow_non_finite = bool(spec_input.get("allow_non_finite", False))
        self.classifier = Classifier.from_spec(self.spec, model_dir)

    def features(self, envelope: Envelope) -> Features:
        if envelope.family == "raw" or envelope.meta.get("datatype") == "BYTES":
            raise InvalidInput("wrong dtype", "this model takes numeric tensors, not bytes")
        array = numeric_array(envelope.instances, self.dtype, allow_non_finite=self.allow_non_finite)
        single = False
        if array.shape == self.shape and envelope.family in ("list", "inputs"):
            array, single = array[np.newaxis], True
        if array.shape[1:] != self.shape:
            raise InvalidInput(
                "wrong shape",
                f"expected instances of shape {list(self.shape)}, got {list(array.shape[1:])}",
            )
        return Features((np.ascontiguousarray(array),), array.shape[0], single)

    def outputs(self, output: np.ndarray) -> tuple[list[Any], list[dict[str, Any]]]:
        return self.classifier.outputs(output)
