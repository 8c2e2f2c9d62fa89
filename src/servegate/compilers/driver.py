"""Compile a model for serving: one named backend, or ``auto`` / a comma list measured and chosen
(``select.py``), for the largest batch a worker can receive and with the threads a worker runs."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from servegate.artifacts import CompiledArtifact
from servegate.compilers import get_compiler
from servegate.compilers.cache import CompileCache
from servegate.compilers.select import Candidate, choose, evaluate, parse_compiler_option
from servegate.compilers.shapes import timing_batch_sizes
from servegate.config import BatchingConfig, RequestLimits
from servegate.sources.base import TorchModel


def worker_threads(workers: int = 1) -> int:
    """Threads each of ``workers`` workers runs with (``sg_loaders.intra_op_threads``: one core
    left to the frontend, the rest shared; at least 1)."""
    return max(1, ((os.cpu_count() or 1) - 1) // max(1, workers))


def artifact_max_batch(model: TorchModel, batching: BatchingConfig,
                       limits: RequestLimits | None = None) -> int:
    """The largest batch a worker can receive: ``batch_size`` requests of at most
    ``max_instances`` rows each (or the model's own bound, e.g. a fixed-batch ExportedProgram).
    Artifacts are compiled for it, and the handler splits anything larger."""
    worker_max = batching.batch_size * (limits or RequestLimits()).max_instances
    return min(worker_max, model.max_batch) if model.max_batch else worker_max


def compile_model(model: TorchModel, compiler: str, workdir: Path, batching: BatchingConfig,
                  limits: RequestLimits | None = None, cache: CompileCache | None = None,
                  max_batch: int | None = None) -> tuple[CompiledArtifact, list[Candidate]]:
    """One backend, or ``auto`` / a comma list: measured here, the fastest that passes parity.
    With a ``cache``, every compile runs inside ``cache.activate()`` (Inductor/Triton caches and
    TensorRT's timing cache there). ``max_batch``: the largest batch the artifact takes (default
    ``artifact_max_batch``; the builder passes the one it records)."""
    with cache.activate() if cache is not None else nullcontext():
        return _compile_model(model, compiler, workdir, batching,
                              max_batch or artifact_max_batch(model, batching, limits))


def _compile_model(model: TorchModel, compiler: str, workdir: Path, batching: BatchingConfig,
                   max_batch: int) -> tuple[CompiledArtifact, list[Candidate]]:
    import torch

    names = parse_compiler_option(compiler)
    if names is None:
        return get_compiler(compiler).compile(model, workdir, max_batch=max_batch), []
    threads = worker_threads(batching.max_workers)  # as each worker runs
    sizes = timing_batch_sizes(batching.batch_size, max_batch, cuda=torch.cuda.is_available())
    candidates = evaluate(model, names, workdir, max_batch=max_batch, threads=threads,
                          batch_sizes=sizes)
    best = choose(candidates, batching.batch_size)
    assert best.artifact is not None
    return best.artifact, candidates
