"""TensorFlow compilers of the TF Serving target, registered by name as the torch ones are
(``compilers/__init__.py``):

* ``savedmodel``: the reference, the Keras forward pass exported as it is;
* ``xla``: the forward pass ``jit_compile``d inside the SavedModel (TF Serving needs
  ``--xla_cpu_compilation_enabled=true``, which a local server gets);
* ``tf-trt`` / ``tf-trt-fp16``: the exported SavedModel converted with TF-TRT, only where
  TensorFlow is built with TensorRT (pip wheels since 2.18 are not).

A compiler does not write the SavedModel itself: packaging owns that layout and hands it an
``Exporter``. ``auto`` (or a comma list) measures each candidate through ``select.measure``, the
prologue torch's candidates share: skipped with its reason where unavailable, parity against the
Keras reference, latency of the exported ``serving_default`` in process; ``select.choose`` keeps
the fastest that passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from servegate.compilers.base import CompilerBase
from servegate.compilers.select import Candidate, choose, measure
from servegate.compilers.shapes import Shape
from servegate.errors import ConfigError
from servegate.sources.keras_model import KerasModel


class Exporter(Protocol):
    """What packaging gives a TF compiler: the validated export, and the export loaded as served."""

    def export(self, base: Path, *, jit_compile: bool) -> Path:
        """Export, validate and place the SavedModel under ``base``; its version directory."""

    def predictor(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        """``serving_default`` of the SavedModel at ``path`` loaded in process: rows in, what
        ``KerasModel.served`` answers out."""


@dataclass(frozen=True)
class TFArtifact:
    """A compiled SavedModel: what the server loads (``path``) and the export it came from."""

    backend: str
    path: Path
    exported: Path
    compile_seconds: float
    device: str = "cpu"


class TFCompiler(Protocol):
    name: str
    device: str

    def unavailable_reason(self) -> str | None:
        """None if this backend can run here, else why not."""

    def compile(self, model: KerasModel, workdir: Path, exporter: Exporter) -> TFArtifact:
        """A SavedModel of ``model`` in ``workdir``; ``CompileError``/``PackagingError`` on failure."""


class SavedModelCompiler(CompilerBase):
    """``savedmodel``: the Keras forward pass exported as it is (the reference)."""

    name = "savedmodel"
    jit_compile = False

    def compile(self, model: KerasModel, workdir: Path, exporter: Exporter) -> TFArtifact:
        start = self._begin(workdir)
        path = exporter.export(workdir, jit_compile=self.jit_compile)
        return TFArtifact(self.name, path, path, time.perf_counter() - start, self.device)


class XlaCompiler(SavedModelCompiler):
    """``xla``: the forward pass compiled with XLA (``tf.function(jit_compile=True)``)."""

    name = "xla"
    jit_compile = True

    def unavailable_reason(self) -> str | None:
        from servegate.compilers.tf_xla import xla_unavailable_reason

        return xla_unavailable_reason()


class TfTrtCompiler(CompilerBase):
    """``tf-trt`` (FP32) / ``tf-trt-fp16``: the export converted by TF-TRT for an NVIDIA GPU."""

    device = "cuda"

    def __init__(self, precision: str = "FP32") -> None:
        self.precision = precision
        self.name = "tf-trt" if precision == "FP32" else f"tf-trt-{precision.lower()}"

    def unavailable_reason(self) -> str | None:
        from servegate.compilers.tf_trt import trt_unavailable_reason

        return trt_unavailable_reason()

    def compile(self, model: KerasModel, workdir: Path, exporter: Exporter) -> TFArtifact:
        from servegate.compilers.tf_trt import convert_trt

        start = self._begin(workdir)
        exported = exporter.export(workdir / "exported", jit_compile=False)
        converted = convert_trt(exported, workdir / "converted", precision=self.precision)  # type: ignore[arg-type]
        return TFArtifact(self.name, converted, exported, time.perf_counter() - start, self.device)


#: Every TF compiler by name; ``auto`` tries them all, in this order (the reference first).
_REGISTRY: dict[str, Callable[[], TFCompiler]] = {
    "savedmodel": SavedModelCompiler,
    "xla": XlaCompiler,
    "tf-trt": TfTrtCompiler,
    "tf-trt-fp16": lambda: TfTrtCompiler("FP16"),
}
#: Older names still accepted (``eager``: the model as it is).
TF_ALIASES = {"eager": "savedmodel"}


def tf_compiler_names() -> list[str]:
    return list(_REGISTRY)


def get_tf_compiler(name: str) -> TFCompiler:
    """The TF compiler called ``name`` (or an alias of one)."""
    factory = _REGISTRY.get(TF_ALIASES.get(name, name))
    if factory is None:
        raise ConfigError(f"compiler {name!r} does not apply to TensorFlow models; known: auto, "
                          f"{', '.join(_REGISTRY)}, or a comma list of them")
    return factory()


def parse_tf_compiler_option(option: str) -> list[str] | None:
    """``auto`` -> every TF compiler (``auto`` skips, with the reason, those this host cannot
    run); ``a,b`` -> those, measured and chosen among; one name -> None (no selection).
    ``ConfigError`` for a name that is not a TF compiler."""
    if option == "auto":
        return tf_compiler_names()
    names = [TF_ALIASES.get(n.strip(), n.strip()) for n in option.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"compiler {option!r} names no compiler")
    for name in names:
        get_tf_compiler(name)  # validates
    return names if len(names) > 1 else None


def evaluate(model: KerasModel, names: Sequence[str], workdir: Path, exporter: Exporter, *,
             batch_sizes: Sequence[int] = (1, 8), repeats: int = 50, budget_s: float = 1.0,
             refused: Mapping[str, str] | None = None,
             should_stop: Callable[[], bool] | None = None) -> list[Candidate]:
    """Compile each TF candidate, parity-check its export against the Keras model on held-out rows
    and time its ``serving_default`` in process at each batch size; nothing is chosen yet.
    ``refused`` names candidates the target's server cannot run, and why: skipped with that
    reason, like one this host cannot run."""
    rows = 64
    if model.eval_x is not None and len(model.eval_x):
        x = np.ascontiguousarray(model.eval_x[:rows], dtype=model.input_dtype)
        labels = model.eval_y[:rows] if model.eval_y is not None else None
    else:
        x, labels = model.example_batch(rows), None
    reference = (model.served(x),)
    shapes = [Shape(b) for b in sorted(set(batch_sizes))]
    results = []
    for name in names:
        compiler = get_tf_compiler(name)
        candidate = Candidate(compiler.name, device=compiler.device)
        results.append(candidate)

        def prepare(compiler: TFCompiler = compiler) -> tuple[TFArtifact, Any, float]:
            artifact = compiler.compile(model, workdir / compiler.name, exporter)
            return artifact, exporter.predictor(artifact.path), artifact.compile_seconds

        def unavailable(compiler: TFCompiler = compiler) -> str | None:
            return (refused or {}).get(compiler.name) or compiler.unavailable_reason()

        measure(candidate, unavailable, prepare, inputs=(x,), reference=reference,
                labels=labels, task=model.task,
                timing_inputs=lambda shape: (model.example_batch(shape.batch),), shapes=shapes,
                repeats=repeats, budget_s=budget_s, should_stop=should_stop or (lambda: False))
    return results


def compile_keras(model: KerasModel, option: str, workdir: Path, exporter: Exporter, *,
                  batch_size: int, auto_refused: Mapping[str, str] | None = None,
                  ) -> tuple[TFArtifact, list[Candidate]]:
    """One TF compiler, or ``auto`` / a comma list measured here (timed at batch 1 and
    ``batch_size``) and the fastest that passes parity kept (``CompileError`` if none does).
    ``auto`` skips the candidates of ``auto_refused`` (the server cannot run them) with their
    reason; a name asked for is compiled as asked."""
    names = parse_tf_compiler_option(option)
    if names is None:
        return get_tf_compiler(option.strip()).compile(model, workdir, exporter), []
    refused = auto_refused if option == "auto" else None
    candidates = evaluate(model, names, workdir, exporter, batch_sizes=(1, batch_size),
                          refused=refused)
    best = choose(candidates, batch_size)
    return best.artifact, candidates


__all__ = ["Exporter", "TFArtifact", "TFCompiler", "compile_keras", "evaluate", "get_tf_compiler",
           "parse_tf_compiler_option", "tf_compiler_names"]
