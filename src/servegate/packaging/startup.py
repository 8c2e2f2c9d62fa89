"""How long a TorchServe worker may take to start (``model-config.yaml``'s ``startupTimeout``):
the configured floor, or longer where the worker compiles. An Inductor artifact compiles each
shape it warms up (every bucket: batch x tokens), and a model's workers compile one at a time
under a shared lock (``sg_loaders.compile_lock``); an AOTI package with an ExportedProgram beside
it recompiles that on a GPU of another kind. A cold compile of 36-50 buckets took about as long as
TorchServe's default 120 s (issue 23): the worker was killed before it served."""

from __future__ import annotations

import math

from servegate.packaging.spec import ArtifactSpec

#: Formats whose artifact is compiled in the worker at warm-up.
COMPILED_IN_WORKER = ("inductor",)
#: Seconds one warmed shape's compile is assumed to take when none was measured at build.
ASSUMED_COMPILE_S_PER_SHAPE = 20.0
#: An AOTI package's fallback recompiled on another GPU (an encoder's whole graph).
ASSUMED_RECOMPILE_S = 180.0
#: The measured time is multiplied by this (another machine, a busy one) ...
MARGIN = 2.0
#: ... and this is added for everything else a worker does at start.
BASE_S = 60.0


def warmed_shapes(buckets: dict[str, list[int]] | None) -> int:
    """Shapes the worker compiles at warm-up: batch buckets x token buckets (1 without)."""
    if not buckets:
        return 1
    return max(1, len(buckets.get("batch") or [1])) * max(1, len(buckets.get("tokens") or [1]))


def worker_startup_timeout(spec: ArtifactSpec, floor_s: int,
                           compile_s_per_shape: float | None = None) -> int:
    """``startupTimeout`` for the archive of ``spec`` (every routed artifact counted):
    ``floor_s`` where the worker compiles nothing, else at least ``BASE_S`` plus ``MARGIN``
    times the compile (``compile_s_per_shape``, measured at build, else assumed) of every shape
    it warms up."""
    artifacts = [(spec.format, spec.buckets, spec.fallback_artifact)] if not spec.routes else [
        (r.format, r.buckets, r.fallback_artifact) for r in spec.routes]
    per_shape = compile_s_per_shape or ASSUMED_COMPILE_S_PER_SHAPE
    compile_s = sum(per_shape * warmed_shapes(buckets)
                    for fmt, buckets, _ in artifacts if fmt in COMPILED_IN_WORKER)
    compile_s += sum(ASSUMED_RECOMPILE_S for fmt, _, fallback in artifacts
                     if fmt == "aoti" and fallback)
    if not compile_s:
        return floor_s
    return max(floor_s, math.ceil(BASE_S + MARGIN * compile_s))
