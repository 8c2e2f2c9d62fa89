"""An image model's held-out images: the bytes the gate sends, and what the worker makes of them.

Image models are gated as they are served: the parity gate and the load gate send encoded images,
which the worker decodes (``handlers/image_classifier.py``). The held-out inputs the in-process
reference runs on are that same worker code's output on those same bytes, so served and reference
see identical pixels. Where the images come from:

- an ImageFolder: a directory of class subfolders of image files (labels: the folder names);
- a ``.csv``/``.parquet``/``.jsonl`` with an ``image`` column of encoded bytes, or of paths
  relative to the file's folder (labels: the ``label_column``);
- tensor rows (``.npz`` and the like, already preprocessed): encoded as lossless PNG with the
  archive's normalisation inverted (pixels rounded to 8 bits, as any image a user sends).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from servegate.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")
#: The column of a table that holds images (bytes, or paths relative to the table's folder).
IMAGE_COLUMN = "image"


def is_image_folder(path: Path) -> bool:
    """A directory whose subfolders hold image files (the ImageFolder layout)."""
    return path.is_dir() and any(
        child.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in child.iterdir())
        for child in path.iterdir())


def read_image_folder(path: Path, source: str) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, their class names) of an ImageFolder, classes and files in name order."""
    images: list[bytes] = []
    labels: list[str] = []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            images.append(file.read_bytes())
            labels.append(folder.name)
    if not images:
        raise ConfigError(f"eval_data {source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in "
                          "its class folders")
    return images, np.asarray(labels)


def column_images(values: np.ndarray, base: Path, source: str) -> list[bytes]:
    """An ``image`` column as encoded images: bytes as they are, paths read from ``base`` (never
    from outside it)."""
    images = []
    root = base.resolve()
    for index, value in enumerate(values.tolist()):
        if isinstance(value, (bytes, bytearray, memoryview)):
            images.append(bytes(value))
        elif isinstance(value, str) and value:
            file = (root / value).resolve()
            if not file.is_relative_to(root) or not file.is_file():
                raise ConfigError(f"eval_data {source}: row {index}'s image {value!r} is not a file "
                                  f"under {root}")
            images.append(file.read_bytes())
        else:
            raise ConfigError(f"eval_data {source}: row {index} of column {IMAGE_COLUMN!r} holds "
                              f"{type(value).__name__}, not image bytes or a path")
    return images


def worker_decoder(image: dict[str, Any]):  # -> Callable[[bytes], np.ndarray]
    """The worker's own preprocessing (``image_classifier.decode_image``) for these settings."""
    from servegate._resources import handler_module

    decode = handler_module("image_classifier").decode_image
    return lambda data: decode(data, image)


def decode_all(images: list[bytes], image: dict[str, Any], source: str) -> np.ndarray:
    """Model inputs ``[n, C, H, W]`` float32: each image through the worker's preprocessing."""
    decode = worker_decoder(image)
    rows = []
    for index, data in enumerate(images):
        try:
            rows.append(decode(data))
        except Exception as exc:  # the handler's RequestError kinds, each with its reason
            raise ConfigError(f"eval_data {source}: image {index} cannot be read as the worker "
                              f"reads it: {exc}") from exc
    return np.stack(rows).astype(np.float32)


def encode_png(rows: np.ndarray, image: dict[str, Any]) -> list[bytes]:
    """Preprocessed rows ``[n, C, H, W]`` back to the 8-bit PNG images they came from
    (normalisation ``(pixels * scale - mean) / std`` inverted, rounded, clipped to 0..255)."""
    from PIL import Image

    mean = np.asarray(image.get("mean", [0.0]), np.float64).reshape(-1, 1, 1)
    std = np.asarray(image.get("std", [1.0]), np.float64).reshape(-1, 1, 1)
    scale = float(image.get("scale", 1 / 255))
    encoded = []
    for row in np.asarray(rows, dtype=np.float64):
        if row.ndim != 3 or row.shape[0] not in (1, 3):
            raise ConfigError(f"an image model's rows are [channels, height, width] with 1 or 3 "
                              f"channels; got {list(row.shape)}")
        pixels = np.clip(np.rint((row * std + mean) / scale), 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded
