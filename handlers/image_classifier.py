"""TorchServe handler: classify images (PIL decode, resize, normalise in the worker; no torchvision).

Accepts raw image bytes, ``{"instances": [{"b64": ...}]}``, ``{"inputs": "<base64>"}`` and
Open Inference Protocol ``BYTES`` tensors of base64 images; or, already preprocessed, numeric
tensors of the archive's ``inputs[0]`` shape (default ``[channels, height, width]`` of ``image``),
in any form the tensor handler reads (so an image model can be gated on tensor evaluation data).

Only PNG, JPEG, GIF, BMP, TIFF and WEBP are decoded; an image over ``MAX_IMAGE_PIXELS`` pixels is
refused (413) from its header, before its pixels are decoded.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import sg_tensors
from sg_base import BatchingHandler, Features
from sg_classification import Classifier
from sg_codecs import Envelope, decode_b64
from sg_errors import InvalidInput, PayloadTooLarge, RequestError

MAX_IMAGE_PIXELS = 40_000_000
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")


class ImageClassifierHandler(BatchingHandler):
    """Images -> class probabilities and labels; geometry and normalisation from the archive."""

    def configure(self, model_dir: str) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow's own bomb check, inside Image.open
        image = self.spec.get("image", {})
        self.size = tuple(int(d) for d in image.get("size", (224, 224)))  # (height, width)
        self.mode = str(image.get("mode", "RGB"))
        channels = 1 if self.mode == "L" else 3
        self.scale = float(image.get("scale", 1 / 255))
        self.mean = np.asarray(image.get("mean", [0.0] * channels), np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(image.get("std", [1.0] * channels), np.float32).reshape(-1, 1, 1)
        self.tensor_input = self._tensor_input(channels)
        self.classifier = Classifier.from_spec(self.spec, model_dir)

    def _tensor_input(self, channels: int) -> sg_tensors.TensorSpec:
        if self.spec.get("inputs"):
            return sg_tensors.input_specs(self.spec, self.limits)[0]
        shape = (channels, *self.size)
        return sg_tensors.TensorSpec("input", shape, np.dtype(np.float32))

    def _decode(self, data: bytes) -> np.ndarray:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                    if img.width * img.height > MAX_IMAGE_PIXELS:
                        raise PayloadTooLarge("image too large", f"{img.width}x{img.height} pixels "
                                                                 f"> limit of {MAX_IMAGE_PIXELS}")
                    img = img.convert(self.mode).resize((self.size[1], self.size[0]), Image.BILINEAR)
                    pixels = np.asarray(img, dtype=np.float32)
        except RequestError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PayloadTooLarge("image too large", str(exc)) from exc
        except Exception as exc:  # Pillow's decoders raise many kinds for corrupt data
            raise InvalidInput("invalid image", f"cannot decode image: {type(exc).__name__}: "
                                                f"{str(exc)[:200]}") from exc
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        else:
            pixels = pixels.transpose(2, 0, 1)
        return ((pixels * self.scale - self.mean) / self.std).astype(np.float32)

    def features(self, envelope: Envelope) -> Features:
        if not _carries_images(envelope):
            arrays, rows, single = sg_tensors.decode(envelope, [self.tensor_input])
            return Features(arrays, rows, single)
        if envelope.family == "v2" and len(envelope.tensors) != 1:
            raise InvalidInput("wrong inputs", f"expected 1 BYTES tensor, got {len(envelope.tensors)}")
        items: list[Any] = list(envelope.instances)
        self.check_rows(len(items))  # before decoding any image
        images = [self._decode(item if envelope.family == "raw" else decode_b64(item)) for item in items]
        batch = np.stack(images)
        return Features((batch,), batch.shape[0], envelope.single)

    def outputs(self, outputs: tuple[np.ndarray, ...], *,
                v2: bool = True) -> tuple[list[Any], list[dict[str, Any]]]:
        return self.classifier.outputs(outputs[0], v2=v2)


def _carries_images(envelope: Envelope) -> bool:
    """Images (raw, base64, v2 BYTES) rather than numeric tensors."""
    if envelope.family == "raw":
        return True
    if envelope.family == "v2":
        return envelope.meta.get("datatype") == "BYTES"
    return all(isinstance(item, (str, bytes, bytearray)) or (isinstance(item, dict) and "b64" in item)
               for item in envelope.instances)
