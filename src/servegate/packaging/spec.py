"""``servegate.json``: what an archive records for its handler (format, input, task, limits)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from servegate.config import RequestLimits

SPEC_FILE = "servegate.json"
ModelFormat = Literal[
    "state_dict", "exported_program", "aoti", "inductor", "torchscript", "onnx", "torch_tensorrt"
]
Task = Literal["classification", "regression", "tensor", "tensor-classification",
               "image-classification", "embedding", "text-classification"]

#: The handler module shipped for each task (in ``handlers/``).
TASK_HANDLERS: dict[str, str] = {
    "classification": "tensor_handler",
    "regression": "tensor_handler",
    "tensor": "tensor_handler",
    "tensor-classification": "tensor_handler",
    "image-classification": "image_classifier",
    "embedding": "text_handler",
    "text-classification": "text_handler",
}

#: Tasks whose requests carry text (tokenised in the worker; ``ArtifactSpec.text`` is set).
TEXT_TASKS = ("embedding", "text-classification")


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(description="one instance's shape, without the batch dimension")
    dtype: str = "float32"
    allow_non_finite: bool = False


class TensorInputSpec(InputSpec):
    """One of the model's positional inputs (schema 2)."""

    name: str


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int] | None = None


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: tuple[int, int] = (224, 224)
    mode: Literal["L", "RGB"] = "RGB"
    scale: float = 1 / 255
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])


class TextSpec(BaseModel):
    """Tokenisation in the worker: the tokenizer file shipped in the archive and the limits."""

    model_config = ConfigDict(extra="forbid")

    tokenizer_file: str = "tokenizer.json"
    max_length: int = Field(default=128, ge=2,
                            description="truncation, in tokens ([CLS] and [SEP] included)")
    max_chars: int = Field(default=20_000, ge=1, description="a longer text is refused (413)")


class ArtifactSpec(BaseModel):
    """The contract between servegate's packaging and the handlers (read as plain JSON there)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    task: Task
    format: ModelFormat
    artifact: str
    model_class: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    input: InputSpec | None = None
    inputs: list[TensorInputSpec] | None = None
    outputs: list[OutputSpec] | None = None
    max_batch: int | None = None
    image: ImageSpec | None = None
    text: TextSpec | None = None
    labels_file: str | None = None
    top_k: int = 3
    outputs_are_probabilities: bool = False
    warmup_file: str | None = None
    limits: RequestLimits = Field(default_factory=RequestLimits)
    intra_op_threads: int | None = None
    compiler: str = "eager"
