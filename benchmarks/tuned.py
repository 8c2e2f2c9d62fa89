"""The bench's tuned rows (issue 22): ``servegate tune``'s search run on a served default archive
(the pipeline's batching: batch 8, its delay, one worker), its winner packaged as another archive
of the same artifact, and both loaded side by side (saturated, and at a fixed share of batch 1's
peak) so the table shows what tuning bought at equal or better p95."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from servegate.config import BatchingConfig, SLOs

#: family -> (the default archive's model name, the tuned one's)
TUNED_MODELS = {"digits": ("digits_b8_auto", "digits_tuned"),
                "MiniLM": ("minilm_b8_auto", "minilm_tuned")}


@dataclass(frozen=True)
class Tuning:
    """One family's search: the winner's batching (None: no point met the SLO, or the default
    was kept: ``kept_default``, its best lost to it when confirmed) and its cost."""

    family: str
    batching: BatchingConfig | None
    label: str
    measurements: int
    grid_measurements: int
    seconds: float
    kept_default: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "label": self.label, "measurements": self.measurements,
                "grid_measurements": self.grid_measurements, "seconds": round(self.seconds, 1),
                "batching": self.batching.model_dump() if self.batching else None,
                "kept_default": self.kept_default}


def tuning_of(family: str, result: Any, seconds: float) -> Tuning:
    """``Tuning`` from tune's ``TuneResult``: the winner's batching, or why there is none."""
    if result.winner is None:  # none met the SLO, or none beat the default when confirmed
        kept = result.confirmation is not None and not result.confirmation.kept
        return Tuning(family, None, "; ".join(result.notes) or "no point met the SLO",
                      result.measurements, result.grid_measurements, seconds, kept_default=kept)
    point = result.winner.point
    batching = BatchingConfig(batch_size=point.batch_size,
                              max_batch_delay_ms=point.max_batch_delay_ms,
                              min_workers=point.workers, max_workers=point.workers,
                              threads_per_worker=point.threads)
    label = (f"batch {point.batch_size}/{point.max_batch_delay_ms}ms, {point.workers} "
             f"worker{'s' if point.workers > 1 else ''}"
             + (f", {point.threads} threads" if point.threads else ""))
    return Tuning(family, batching, label, result.measurements, result.grid_measurements, seconds)


def tune_served(backend: Any, family: str, archive: Any, *, max_points: int, seconds: float,
                p95_ms: float | None, say: Callable[[str], None]) -> Tuning:
    """Search the default archive of ``family`` (served as version 1) for the configuration with
    the highest throughput within the pipeline's SLOs (``p95_ms`` overrides its p95)."""
    import time

    from servegate.tuning.measure import tune_archive
    from servegate.tuning.search import SLO, Space

    name = TUNED_MODELS[family][0]
    slos = SLOs()
    cores = os.cpu_count() or 1
    space = Space(workers=tuple(range(1, min(cores, 4) + 1)), users=(4, 8, 16, 32))
    started = time.monotonic()
    result = tune_archive(backend, name, archive, "1", space=space,
                          slo=SLO(p95_ms or slos.p95_ms, slos.p99_ms, slos.max_error_rate),
                          max_points=max_points, seconds=seconds, cores=cores,
                          say=lambda line: say(f"tuning {family}: {line}"[:150]))
    return tuning_of(family, result, time.monotonic() - started)
