"""Compile a model for serving: one named backend, or ``auto`` / a comma list measured and chosen
(``select.py``), for the largest batch a worker can receive and with the threads a worker runs."""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from servegate.artifacts import CompiledArtifact
from servegate.compilers import get_compiler
from servegate.compilers.cache import CompileCache
from servegate.compilers.select import (
    Candidate,
    artifact_bytes,
    check_owned_shapes,
    choose_routes,
    evaluate,
    load_predictor,
    parse_compiler_option,
)
from servegate.compilers.shapes import timing_batch_sizes
from servegate.config import DEFAULT_MAX_ARTIFACTS, BatchingConfig, RequestLimits
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
                  max_batch: int | None = None,
                  max_artifacts: int = DEFAULT_MAX_ARTIFACTS) -> tuple[CompiledArtifact, list[Candidate]]:
    """One backend, or ``auto`` / a comma list: measured here, the fastest that passes parity.
    With a ``cache``, every compile runs inside ``cache.activate()`` (Inductor/Triton caches and
    TensorRT's timing cache there). ``max_batch``: the largest batch the artifact takes (default
    ``artifact_max_batch``; the builder passes the one it records). ``max_artifacts``: ``auto``
    may keep up to that many, each owning the shapes it serves best (``Candidate.owns``); the
    artifact returned is then the primary one (``choose_routes``)."""
    with cache.activate() if cache is not None else nullcontext():
        return _compile_model(model, compiler, workdir, batching,
                              max_batch or artifact_max_batch(model, batching, limits),
                              max_artifacts)


def _compile_model(model: TorchModel, compiler: str, workdir: Path, batching: BatchingConfig,
                   max_batch: int, max_artifacts: int) -> tuple[CompiledArtifact, list[Candidate]]:
    import torch

    names = parse_compiler_option(compiler)
    if names is None:
        return get_compiler(compiler).compile(model, workdir, max_batch=max_batch), []
    threads = worker_threads(batching.max_workers)  # as each worker runs
    sizes = timing_batch_sizes(batching.batch_size, max_batch, cuda=torch.cuda.is_available())
    candidates = evaluate(model, names, workdir, max_batch=max_batch, threads=threads,
                          batch_sizes=sizes)
    artifact_sizes = {c.backend: artifact_bytes(c.artifact) for c in candidates if c.usable}
    while True:  # a routed artifact failing parity at a shape it owns is rejected: route again
        routing = choose_routes(candidates, batching.batch_size, max_artifacts=max_artifacts,
                                sizes=artifact_sizes)
        routed = [c for c in candidates if c.owns]
        if all(check_owned_shapes(c, partial(load_predictor, c.artifact, threads), model)
               for c in routed):
            break
    best = next(c for c in candidates if c.backend == routing.members[0])
    assert best.artifact is not None
    return best.artifact, candidates
