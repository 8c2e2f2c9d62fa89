"""TF Serving's request protos, built (tensorflow and tensorflow-serving-api imported lazily)."""

from __future__ import annotations

from typing import Any


def predict_request(name: str, signature: str, inputs: dict[str, Any],
                    version: int | None = None) -> Any:
    """A ``tensorflow.serving.PredictRequest`` (numpy arrays or lists become TensorProtos)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request
