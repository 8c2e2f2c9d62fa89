"""Model source -> compiled artifact -> .mar (used by the CLI and the pipeline)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from servegate.compilers import CompiledArtifact, get_compiler
from servegate.compilers.select import Candidate, choose, evaluate, parse_compiler_option
from servegate.config import BatchingConfig, RequestLimits
from servegate.packaging.mar import build_mar, contents_for
from servegate.sources import TorchModel, load_torch_model


def worker_threads(workers: int = 1) -> int:
    """Threads each of ``workers`` workers runs with (``sg_loaders``: one core left to the
    frontend, the rest shared; at least 1)."""
    return max(1, ((os.cpu_count() or 1) - 1) // max(1, workers))


def artifact_max_batch(model: TorchModel, batching: BatchingConfig,
                       limits: RequestLimits | None = None) -> int:
    """The largest batch a worker can receive: ``batch_size`` requests of at most
    ``max_instances`` rows each (or the model's own bound, e.g. a fixed-batch ExportedProgram).
    Artifacts are compiled for it, and the handler splits anything larger."""
    worker_max = batching.batch_size * (limits or RequestLimits()).max_instances
    return min(worker_max, model.max_batch) if model.max_batch else worker_max


def compile_model(model: TorchModel, compiler: str, workdir: Path, batching: BatchingConfig,
                  limits: RequestLimits | None = None) -> tuple[CompiledArtifact, list[Candidate]]:
    """One backend, or ``auto`` / a comma list: measured here, the fastest that passes parity."""
    max_batch = artifact_max_batch(model, batching, limits)
    names = parse_compiler_option(compiler)
    if names is None:
        return get_compiler(compiler).compile(model, workdir, max_batch=max_batch), []
    threads = worker_threads(batching.max_workers)  # as each worker runs
    candidates = evaluate(model, names, workdir, max_batch=max_batch, threads=threads,
                          batch_sizes=sorted({1, batching.batch_size}))
    best = choose(candidates, batching.batch_size)
    assert best.artifact is not None
    return best.artifact, candidates


def package_model(model: TorchModel, *, name: str, version: str, compiler: str,
                  batching: BatchingConfig, output_dir: Path,
                  limits: RequestLimits | None = None) -> Path:
    """Compile ``model`` and build its archive into ``output_dir``."""
    from servegate.naming import validate_name, validate_version

    validate_name(name)
    validate_version(version)
    with tempfile.TemporaryDirectory(prefix="servegate-compile-") as tmp:
        artifact, _ = compile_model(model, compiler, Path(tmp), batching, limits)
        contents = contents_for(model, artifact, name=name, version=version, batching=batching,
                                limits=limits, max_batch=artifact_max_batch(model, batching, limits))
        return build_mar(contents, output_dir)


def package_torch_model(uri: str, *, name: str, version: str, compiler: str,
                        batching: BatchingConfig, output_dir: Path) -> Path:
    from servegate.naming import validate_name, validate_version

    validate_name(name)  # before the model is loaded or trained
    validate_version(version)
    return package_model(load_torch_model(uri), name=name, version=version, compiler=compiler,
                         batching=batching, output_dir=output_dir)
