"""What every target's build reports of its compiling, whatever the framework: ``auto``'s
candidate table and, for an archive routed by shape, its routing table (printed and logged),
then ``compiler`` (as asked) and ``compiler.chosen`` with the target's own build params and
metrics, in the active MLflow run."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def report_compiled(console: Console, requested: str, chosen: str, candidates: list[Any],
                    params: dict[str, Any], metrics: dict[str, float]) -> None:
    """Print and log ``candidates`` (when ``auto`` or a comma list measured some), then log the
    compiler asked for, the one chosen, ``params`` and ``metrics``."""
    from servegate import tracking
    from servegate.compilers.select import candidates_table, routing_table

    if candidates:
        console.print(candidates_table(candidates))
        if (routed := routing_table(candidates)) is not None:
            console.print(routed)
        tracking.log_candidates(candidates)
    tracking.log_build({"compiler": requested, "compiler.chosen": chosen} | params, metrics)
