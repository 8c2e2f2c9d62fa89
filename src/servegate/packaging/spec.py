"""``servegate.json``: what an archive records for its handler (format, input, task, limits)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from servegate.artifacts import ModelFormat
from servegate.config import ImagePreprocessing, RequestLimits

SPEC_FILE = "servegate.json"
Task = Literal["classification", "regression", "tensor", "image-classification", "embedding",
               "text-classification"]

#: The handler module shipped for each task (in ``handlers/``).
TASK_HANDLERS: dict[str, str] = {
    "classification": "tensor_handler",
    "regression": "tensor_handler",
    "tensor": "tensor_handler",
    "image-classification": "image_classifier",
    "embedding": "text_handler",
    "text-classification": "text_handler",
}

class InputSpec(BaseModel):
    """One positional input of the model, per instance (``-1``: a dimension of any size)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "input"
    shape: list[int] = Field(description="one instance's shape, without the batch dimension")
    dtype: str = "float32"
    allow_non_finite: bool = False


class OutputSpec(BaseModel):
    """One output of the model, per instance (its name keys it in answers)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "output"
    shape: list[int] = Field(default_factory=list)


class TextSpec(BaseModel):
    """Tokenisation in the worker: the tokenizer file shipped in the archive and the limits."""

    model_config = ConfigDict(extra="forbid")

    tokenizer_file: str = "tokenizer.json"
    max_length: int = Field(default=128, ge=2,
                            description="truncation, in tokens ([CLS] and [SEP] included)")
    max_chars: int = Field(default=20_000, ge=1, description="a longer text is refused (413)")


class OwnedShape(BaseModel):
    """A measured shape an artifact of a routed archive owns: ``batch`` rows (of ``tokens``
    tokens, text models only)."""

    model_config = ConfigDict(extra="forbid")

    batch: int = Field(ge=1)
    tokens: int | None = Field(default=None, ge=1)


class RouteSpec(BaseModel):
    """One artifact of a routed archive: what its loader needs (as ``ArtifactSpec``'s fields of
    the same names) and the shapes it owns. The handler sends a chunk of ``rows`` x ``tokens`` to
    the owner of the smallest owned batch at or above ``rows`` (else the largest), crossed with
    the smallest token count at or above ``tokens`` (else the largest)."""

    model_config = ConfigDict(extra="forbid")

    compiler: str
    format: ModelFormat
    artifact: str
    model_class: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    compile_mode: str | None = None
    built_for: dict[str, Any] | None = None
    buckets: dict[str, list[int]] | None = None
    fallback_artifact: str | None = None
    owns: list[OwnedShape] = Field(min_length=1)


class ShippedCompileCache(BaseModel):
    """The build's compile caches of the archive's own compiles (Inductor's and Triton's, made
    by running its handler's load and warm-up at build), packed into one file of the archive:
    the worker unpacks it into the model directory's cache before it compiles."""

    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: What the members unpack to; the worker refuses a file that would unpack to more.
    unpacked_bytes: int = Field(ge=0)


class ArtifactSpec(BaseModel):
    """The contract between servegate's packaging and the handlers (read as plain JSON there)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 2
    task: Task
    format: ModelFormat
    artifact: str
    model_class: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputSpec] = Field(default_factory=list)
    outputs: list[OutputSpec] = Field(default_factory=list)
    #: The largest batch the artifact accepts; the handler splits larger batches (None: any).
    max_batch: int | None = None
    #: An image model's preprocessing (the run's own ``image`` setting, one class for both).
    image: ImagePreprocessing | None = None
    text: TextSpec | None = None
    labels_file: str | None = None
    top_k: int = 3
    outputs_are_probabilities: bool = False
    warmup_file: str | None = None
    limits: RequestLimits = Field(default_factory=RequestLimits)
    intra_op_threads: int | None = None
    compiler: str = "eager"
    #: Where and in what compute precision the handler runs the artifact (the loader casts a
    #: state_dict model and floating inputs to ``dtype``; exported/AOTI programs already are).
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    #: torch.compile mode of an ``inductor`` artifact: None, "reduce-overhead", "max-autotune".
    compile_mode: str | None = None
    #: What a CUDA artifact was compiled on: device_name, capability, cuda, torch.
    built_for: dict[str, Any] | None = None
    #: Fixed shapes the worker pads to: {"batch": [...], "tokens": [...]} (CUDA graphs, TensorRT).
    buckets: dict[str, list[int]] | None = None
    #: An ExportedProgram beside a CUDA AOTI package, recompiled on a GPU of another capability.
    fallback_artifact: str | None = None
    #: Routing by shape (``compilers/routing.py``): every artifact of the archive and the shapes
    #: it owns, the first being the one the fields above describe. Empty: one artifact serves all.
    routes: list[RouteSpec] = Field(default_factory=list)
    #: The build's compile caches for a worker that compiles (None: it compiles cold).
    compile_cache: ShippedCompileCache | None = None

    @model_validator(mode="after")
    def _routes_cover_every_shape(self) -> ArtifactSpec:
        """Routes: the first is the archive's own artifact; artifact files differ; one device;
        the owned shapes form a full grid (every batch with every token count), each owned once."""
        if not self.routes:
            return self
        first = self.routes[0]
        if (first.artifact, first.format) != (self.artifact, self.format):
            raise ValueError(f"routes[0] must be the archive's artifact {self.artifact!r}, "
                             f"got {first.artifact!r}")
        files = [r.artifact for r in self.routes]
        if len(set(files)) != len(files):
            raise ValueError(f"routed artifacts share a file name: {files}")
        if {r.device for r in self.routes} != {self.device}:
            raise ValueError("routed artifacts must all run on the archive's device")
        owned = [(s.batch, s.tokens) for r in self.routes for s in r.owns]
        grid = {(b, t) for b in {b for b, _ in owned} for t in {t for _, t in owned}}
        if len(set(owned)) != len(owned) or set(owned) != grid:
            raise ValueError(f"routed shapes must cover every batch x tokens once, got {owned}")
        return self
