"""TorchServe handler: classify images (PIL decode, resize, normalise in the worker; no torchvision).

Accepts raw image bytes, ``{"instances": [{"b64": ...}]}``, ``{"inputs": "<base64>"}`` and
Open Inference Protocol ``BYTES`` tensors of base64 images.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sg_base import BatchingHandler, Features
from sg_classification import Classifier
from sg_codecs import Envelope, decode_b64
from sg_errors import InvalidInput

MAX_IMAGE_PIXELS = 40_000_000


class ImageClassifierHandler(BatchingHandler):
    """Images -> class probabilities and labels; geometry and normalisation from the archive."""

    def configure(self, model_dir: str) -> None:
        image = self.spec.get("image", {})
        self.size = tuple(int(d) for d in image.get("size", (224, 224)))  # (height, width)
        self.mode = str(image.get("mode", "RGB"))
        channels = 1 if self.mode == "L" else 3
        self.scale = float(image.get("scale", 1 / 255))
        self.mean = np.asarray(image.get("mean", [0.0] * channels), np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(image.get("std", [1.0] * channels), np.float32).reshape(-1, 1, 1)
        self.classifier = Classifier.from_spec(self.spec, model_dir)

    def _decode(self, data: bytes) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise InvalidInput("image too large", f"{img.width}x{img.height} pixels")
                img = img.convert(self.mode).resize((self.size[1], self.size[0]), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InvalidInput("invalid image", f"cannot decode image: {exc}") from exc
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        else:
            pixels = pixels.transpose(2, 0, 1)
        return ((pixels * self.scale - self.mean) / self.std).astype(np.float32)

    def features(self, envelope: Envelope) -> Features:
        items: list[Any] = list(envelope.instances)
        if envelope.family == "v2" and envelope.meta.get("datatype") != "BYTES":
            raise InvalidInput("wrong dtype", "this model takes BYTES (base64 images) in v2 requests")
        images = [self._decode(item if envelope.family == "raw" else decode_b64(item)) for item in items]
        batch = np.stack(images)
        single = envelope.single
        return Features((batch,), batch.shape[0], single)

    def outputs(self, output: np.ndarray) -> tuple[list[Any], list[dict[str, Any]]]:
        return self.classifier.outputs(output)
