"""TorchServe handler: classify images (PIL decode, resize, normalise in the worker; no torchvision).

Accepts raw image bytes, ``{"instances": [{"b64": ...}]}``, ``{"inputs": "<base64>"}`` and
Open Inference Protocol ``BYTES`` tensors of base64 images; or, already preprocessed, numeric
tensors of the archive's ``inputs[0]`` shape (default ``[channels, height, width]`` of ``image``),
in any form the tensor handler reads (so an image model can be gated on tensor evaluation data).

Only PNG, JPEG, GIF, BMP, TIFF and WEBP are decoded. Decoding time follows the pixels, not the
file size (a 38 KB PNG of 6300x6300 pixels took ~1 s; PNG ~40 M pixels/s here, JPEG 28-75, WEBP
~11), so every image's size is read from its header and budgeted before any pixel is decoded, in
"decode units" (pixels x ``FORMAT_COST``: WEBP 4, JPEG 1.5, others 1). ``limits`` in
``servegate.json`` override the defaults:

- ``max_image_pixels`` (40 M): a larger image is refused (413);
- ``max_batch_pixels`` (400 M units, ~10 s here): what a FULL batch may decode. Each request may
  decode its share, ``max_batch_pixels // batch_size`` units (at most ``max_request_pixels``,
  64 M): a request whose images need more is refused alone (413, naming the limit), so no request
  can spend another's budget and a full batch decodes well inside TorchServe's 120 s response
  timeout.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np
import sg_tensors
from sg_base import BatchingHandler, Features
from sg_classification import Classifier
from sg_codecs import Envelope, decode_b64
from sg_errors import InvalidInput, PayloadTooLarge

MAX_IMAGE_PIXELS = 40_000_000
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
MAX_REQUEST_PIXELS = 64_000_000
MAX_BATCH_PIXELS = 400_000_000
#: Decode time per pixel relative to PNG (measured here with noisy 4000x4000 images).
FORMAT_COST = {"WEBP": 4.0, "JPEG": 1.5}


class ImageClassifierHandler(BatchingHandler):
    """Images -> class probabilities and labels; geometry and normalisation from the archive."""

    def configure(self, model_dir: str) -> None:
        from PIL import Image

        self.max_image_pixels = int(self.limits.get("max_image_pixels") or MAX_IMAGE_PIXELS)
        per_batch = int(self.limits.get("max_batch_pixels") or MAX_BATCH_PIXELS)
        self.max_request_pixels = min(int(self.limits.get("max_request_pixels") or MAX_REQUEST_PIXELS),
                                      per_batch // max(1, self.batch_size))
        Image.MAX_IMAGE_PIXELS = self.max_image_pixels  # Pillow's own bomb check, in Image.open
        self.configure_image()
        self.tensor_input = self._tensor_input(1 if self.mode == "L" else 3)
        self.classifier = Classifier.from_spec(self.spec, model_dir)

    def configure_image(self) -> None:
        """Geometry and normalisation from the archive's ``image`` settings."""
        image = self.spec.get("image", {})
        self.size = tuple(int(d) for d in image.get("size", (224, 224)))  # (height, width)
        self.mode = str(image.get("mode", "RGB"))
        channels = 1 if self.mode == "L" else 3
        self.scale = float(image.get("scale", 1 / 255))
        self.mean = np.asarray(image.get("mean", [0.0] * channels), np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(image.get("std", [1.0] * channels), np.float32).reshape(-1, 1, 1)

    def _tensor_input(self, channels: int) -> sg_tensors.TensorSpec:
        if self.spec.get("inputs"):
            return sg_tensors.input_specs(self.spec, self.limits)[0]
        shape = (channels, *self.size)
        return sg_tensors.TensorSpec("input", shape, np.dtype(np.float32))

    def _open(self, data: bytes) -> Any:
        """The image, its header read and its size checked; no pixel decoded yet."""
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PayloadTooLarge("image too large", str(exc)) from exc
        except Exception as exc:  # Pillow raises many kinds for corrupt headers
            raise InvalidInput("invalid image", f"cannot decode image: {type(exc).__name__}: "
                                                f"{str(exc)[:200]}") from exc
        if img.width * img.height > self.max_image_pixels:
            img.close()
            raise PayloadTooLarge("image too large", f"{img.width}x{img.height} pixels > limit of "
                                                     f"{self.max_image_pixels} (max_image_pixels)")
        return img

    def _check_budget(self, opened: list[Any]) -> None:
        """413 when one request's images would cost more than its decode budget."""
        units = sum(img.width * img.height * FORMAT_COST.get(img.format, 1.0) for img in opened)
        if units > self.max_request_pixels:
            raise PayloadTooLarge(
                "images too large",
                f"{len(opened)} image(s) need {int(units)} decode units (pixels x format cost) > "
                f"limit of {self.max_request_pixels} per request (max_batch_pixels / batch size, "
                "at most max_request_pixels)")

    def _decode(self, img: Any) -> np.ndarray:
        """An opened image's pixels: converted, resized and normalised (CHW float32)."""
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = img.convert(self.mode).resize((self.size[1], self.size[0]), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.float32)
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
        with contextlib.ExitStack() as stack:
            opened = []
            for item in items:  # headers only: the sizes are known before any pixel is decoded
                img = self._open(item if envelope.family == "raw" else decode_b64(item))
                stack.callback(img.close)
                opened.append(img)
            self._check_budget(opened)
            batch = np.stack([self._decode(img) for img in opened])
        return Features((batch,), batch.shape[0], envelope.single)

    def outputs_many(self, outputs: list[tuple[np.ndarray, ...]],
                     v2: list[bool]) -> list[tuple[list[Any], list[dict[str, Any]]]]:
        if self.classifier is None:
            return super().outputs_many(outputs, v2)
        return self.classifier.outputs_many([o[0] for o in outputs], v2)

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


def decode_image(data: bytes, image: dict[str, Any]) -> np.ndarray:
    """One encoded image as a worker with the archive's ``image`` settings preprocesses it, as
    CHW float32 (servegate's gates run this in process, so the reference sees the served
    pixels). Only the per-image pixel limit applies: there is no batch to budget."""
    handler = ImageClassifierHandler.__new__(ImageClassifierHandler)  # no worker context here
    handler.spec = {"image": image}
    handler.max_image_pixels = MAX_IMAGE_PIXELS
    handler.configure_image()
    img = handler._open(data)
    try:
        return handler._decode(img)
    finally:
        img.close()
